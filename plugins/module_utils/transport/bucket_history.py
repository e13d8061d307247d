# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Continuous protection's Redis AOF and config versions in the bucket, under ``PREFIX/pitr/`` (the database's
history is pgBackRest's own repo2 beside it, under ``PREFIX/pgbackrest``).

The mirror is sent as the vaults' is: the data files first, the index files last, then what the host no longer keeps
deleted, so the bucket never indexes a piece whose file has not arrived; with the encryption key each file is
sealed first (the vaults' sealed copy, with its ``KEY_ID``). Only what changed since the last upload is sent. A
restore to a second from the bucket downloads the mirror into a scratch copy beside the backups (``.s3-history``),
opened with the key, and restores from that; this host's own history is never replaced."""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import time

from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.core.fsutil import (
    remove_quietly,
    sha256_file,
    write_json_atomic,
)
from ansible_collections.christmas.recovery.plugins.module_utils.core.locking import DirectoryLock
from ansible_collections.christmas.recovery.plugins.module_utils.objectstore.s3 import Upload
from ansible_collections.christmas.recovery.plugins.module_utils.sets import encryption
from ansible_collections.christmas.recovery.plugins.module_utils.sets.protection import CONFIG_DIR, REDIS_DIR
from ansible_collections.christmas.recovery.plugins.module_utils.transport.history import (
    INDEXES,
    KEY_ID,
    PITR,
    SEALED_COPY,
    files_of,
    open_tree,
    seal_tree,
)

HISTORY = PITR + "/"  # under the bucket's prefix
SENT = ".s3-history-sent.json"  # in the backup directory: {file: [size, mtime_ns]} of what the bucket holds
COPY = ".s3-history"  # in the backup directory: the bucket's history, downloaded for a restore


def _is_index(relative):
    return any(fnmatch.fnmatch(os.path.basename(relative), pattern) for pattern in INDEXES)


def send_history(backup_dir, pitr_dir, store, key=None, check_mode=False, progress=print):
    """Mirror ``pitr_dir`` (sealed with ``key`` when given) into the bucket's ``pitr/``; nothing to send (no
    history yet) is no error. Returns what was sent and deleted."""
    report = {"changed": False, "sent": 0, "deleted": 0, "bytes": 0, "sealed": key is not None,
              "history": store.url(HISTORY)}
    if not os.path.isdir(pitr_dir):
        return report
    begin = time.monotonic()
    with contextlib.ExitStack() as locks:  # a shipment in progress finishes first; the next waits for the copy
        for name in (REDIS_DIR, CONFIG_DIR):
            if os.path.isdir(os.path.join(pitr_dir, name)):
                locks.enter_context(DirectoryLock(os.path.join(pitr_dir, name), shared=True))
        source = pitr_dir
        if key is not None and not check_mode:
            source = os.path.join(backup_dir, SEALED_COPY, PITR)
            progress("sealed %d new or changed AOF and config file(s)" % seal_tree(pitr_dir, source, key))
        state_path = os.path.join(backup_dir, SENT)
        try:
            with open(state_path, encoding="utf-8") as handle:
                state = json.load(handle)
        except (OSError, ValueError):
            state = {}
        wanted = encryption.key_id(key) if key is not None else None
        if state.get("key_id") != wanted or "files" not in state:
            state = {"key_id": wanted, "files": {}}
        listing = {name[len(HISTORY):]: size for name, size in store.listing(HISTORY).items()}
        files = files_of(source)
        stamps = {relative: _stamp(os.path.join(source, relative)) for relative in files}
        changed = [relative for relative in files if relative not in listing or state["files"].get(relative) !=
                   stamps[relative]]
        gone = sorted(set(listing) - set(files))
        report.update(changed=bool(changed or gone), sent=len(changed), deleted=len(gone),
                      bytes=sum(stamps[relative][0] for relative in changed))
        if check_mode or not report["changed"]:
            return report
        progress("uploading %d AOF and config file(s) to %s" % (len(changed), store.url(HISTORY)))
        for batch in ([r for r in changed if not _is_index(r)], [r for r in changed if _is_index(r)]):
            store.upload([Upload(os.path.join(source, relative), HISTORY + relative,
                                 *sha256_file(os.path.join(source, relative))) for relative in batch])
            state["files"].update((relative, stamps[relative]) for relative in batch)
            write_json_atomic(state_path, state)
        store.delete(HISTORY + relative for relative in gone)
        state["files"] = {relative: stamp for relative, stamp in state["files"].items() if relative in stamps}
        write_json_atomic(state_path, state)
    report["seconds"] = round(time.monotonic() - begin, 3)
    return report


def _stamp(path):
    info = os.stat(path)
    return [info.st_size, info.st_mtime_ns]


def fetch_history(backup_dir, store, key=None, progress=print):
    """The bucket's ``pitr/`` as a plain tree in ``BACKUP_DIR/.s3-history`` (downloaded beside it, opened with
    ``key`` when sealed, then put in place); returns its path. The restore checks every piece against its own
    index before it uses one."""
    listing = {name[len(HISTORY):]: size for name, size in store.listing(HISTORY).items()}
    if not listing:
        raise RecoveryError("bucket %s holds no AOF or config history (backup.yml and archive.yml upload it with "
                            "continuous protection on)" % store.url(HISTORY))
    target = os.path.join(backup_dir, COPY)
    staging, opened = target + ".download", target + ".open"
    for path in (staging, opened):
        remove_quietly(path)
    begin = time.monotonic()
    try:
        progress("downloading %d AOF and config file(s) from %s" % (len(listing), store.url(HISTORY)))
        names = sorted(listing)
        store.download([HISTORY + name for name in names], [os.path.join(staging, name) for name in names],
                       sum(listing.values()))
        plain = staging
        if KEY_ID in listing:
            with open(os.path.join(staging, KEY_ID), encoding="ascii") as handle:
                key_id = handle.read().strip()
            open_tree(staging, opened, key, key_id, store.url(HISTORY))
            plain = opened
        remove_quietly(target)
        os.rename(plain, target)
    finally:
        remove_quietly(staging)
        remove_quietly(opened)
    return {"changed": True, "pitr_dir": target, "files": len(listing), "bytes": sum(listing.values()),
            "sealed": KEY_ID in listing, "history": store.url(HISTORY), "seconds": round(time.monotonic() - begin, 3)}

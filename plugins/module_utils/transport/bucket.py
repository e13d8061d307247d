# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Backup sets in an S3 bucket, laid out as in a backup directory under ``PREFIX/sets/``.

A set appears there only when complete: its files first, each checked after upload, its signed manifest last. A set
without its manifest is what a killed or failed upload left; the next upload replaces it. Bringing a set back trusts
nothing but the signed manifest: each object must match it, or it is refused by name."""

from __future__ import annotations

import os
import time

from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.core.fsutil import (
    make_private_dir,
    remove_quietly,
    write_bytes_atomic,
)
from ansible_collections.christmas.recovery.plugins.module_utils.core.locking import DirectoryLock
from ansible_collections.christmas.recovery.plugins.module_utils.objectstore.s3 import Upload
from ansible_collections.christmas.recovery.plugins.module_utils.sets import encryption
from ansible_collections.christmas.recovery.plugins.module_utils.sets.manifest import (
    MANIFEST_RE,
    MAX_MANIFEST_BYTES,
    SET_ID_RE,
    check_artifacts,
    complete_set_ids,
    manifest_name,
    parse,
    read_manifest_bytes,
    set_dir_name,
    set_id_time,
)
from ansible_collections.christmas.recovery.plugins.module_utils.sets.proof import newest_proven_set_id
from ansible_collections.christmas.recovery.plugins.module_utils.sets.retention import SET_DIR_RE
from ansible_collections.christmas.recovery.plugins.module_utils.sets.verify import verify_set
from ansible_collections.christmas.recovery.plugins.module_utils.transport.offsite import (
    INCOMING,
    clear_staging,
    leaving_copy,
    sets_to_send,
)

SETS = "sets/"
VERIFYING = ".s3-verify"
DAMAGED = ".damaged"  # in the backup directory: local copies a restore replaced with the bucket's


def bucket_sets(store):
    """{set id: {name under sets/: size}} of what the bucket holds, complete or not."""
    found = {}
    for name, size in store.listing(SETS).items():
        relative = name[len(SETS):]
        top, _slash, rest = relative.partition("/")
        match = MANIFEST_RE.match(relative) or (SET_DIR_RE.match(top) if rest else None)
        if match and set_id_time(match.group(1)) is not None:
            found.setdefault(match.group(1), {})[relative] = size
    return found


def complete_ids(sets):
    """The complete sets (their manifest is there), newest first."""
    return sorted((set_id for set_id, names in sets.items() if manifest_name(set_id) in names), reverse=True)


def expired_in_bucket(complete, retention_days, keep=(), now=None):
    """Complete sets of the bucket older than the limit by their ids, except the newest and ``keep``."""
    if retention_days < 0:
        raise RecoveryError("retention_days must be 0 or more, got %s" % retention_days)
    cutoff = (time.time() if now is None else now) - retention_days * 86400
    return [set_id for set_id in complete[1:] if set_id_time(set_id) < cutoff and set_id not in keep]


def _remove(store, set_id, names):
    """The manifest first, so that a half-deleted set never looks complete."""
    store.delete(SETS + name for name in sorted(names, key=lambda name: name != manifest_name(set_id)))


def _upload(store, source, set_id):
    path = os.path.join(source, manifest_name(set_id))
    raw = read_manifest_bytes(path)
    artifacts = parse(raw, path)["artifacts"]
    size = sum(a["size"] for a in artifacts)
    store.progress("uploading set %s (%d files, %d bytes) to %s" % (set_id, len(artifacts), size,
                                                                store.url(SETS + manifest_name(set_id))))
    store.upload([Upload(os.path.join(source, a["path"]), SETS + a["path"], a["size"], a["sha256"])
                  for a in artifacts])
    store.put(SETS + manifest_name(set_id), raw)  # last: the set is complete in the bucket from now on
    return size + len(raw)


def send_sets(backup_dir, store, retention_days, key=None, jobs=2, check_mode=False, signer=None, trust=None):
    """Upload every complete local set the bucket lacks (encrypted first with ``key``, the copy signed by
    ``signer``), after checking it against its manifest and signature (``trust``); then the bucket's retention."""
    sets = bucket_sets(store)
    complete = complete_ids(sets)
    todo = sets_to_send(backup_dir, retention_days, set(complete))
    keep = {newest_proven_set_id(backup_dir)}
    report = {"changed": bool(todo), "sent": todo, "encrypted": key is not None, "bytes": 0, "seconds": {},
              "bucket": store.url(SETS)}
    if key is not None:
        report["key_id"] = encryption.key_id(key)
    if check_mode:
        report["pruned"] = expired_in_bucket(complete, retention_days, keep) if retention_days is not None else []
        return dict(report, sets=complete)
    with DirectoryLock(backup_dir, shared=True):  # retention waits until every set has left
        clear_staging(backup_dir, todo)
        store.abort_uploads()
        for set_id in sorted(set(sets) - set(complete) - set(todo)):  # a killed upload's leftovers, no longer sent
            _remove(store, set_id, sets[set_id])
        for set_id in todo:
            begin = time.monotonic()
            with leaving_copy(backup_dir, set_id, key, jobs, signer, trust, store.progress) as source:
                report["bytes"] += _upload(store, source, set_id)
            report["seconds"][set_id] = round(time.monotonic() - begin, 3)
    complete = sorted(set(complete) | set(todo), reverse=True)
    report["pruned"] = []
    if retention_days is not None:
        for set_id in expired_in_bucket(complete, retention_days, keep):
            _remove(store, set_id, sets.get(set_id) or bucket_sets(store).get(set_id, {}))
            report["pruned"].append(set_id)
            report["changed"] = True
    report["sets"] = [set_id for set_id in complete if set_id not in report["pruned"]]
    report["newest_seconds"] = set_id_time(report["sets"][0]) if report["sets"] else None
    return report


def download_set(store, set_id, into_dir, trust):
    """Bring one complete set into ``into_dir`` (laid out as a backup directory): its manifest, checked against its
    signature, then every file, each checked against that manifest; the manifest is written last. Returns the
    manifest, the signature's verdict and the bytes."""
    name = manifest_name(set_id)
    raw = store.get(SETS + name, MAX_MANIFEST_BYTES)
    manifest = parse(raw, store.url(SETS + name))
    verdict = trust.check(manifest, store.url(SETS + name))
    artifacts = manifest["artifacts"]
    size = sum(a["size"] for a in artifacts)
    store.progress("downloading set %s (%d files, %d bytes) from %s" % (set_id, len(artifacts), size,
                                                                      store.url(SETS + name)))
    make_private_dir(into_dir)
    store.download([SETS + a["path"] for a in artifacts], [os.path.join(into_dir, a["path"]) for a in artifacts],
                   sum(a["size"] for a in artifacts))
    problems = check_artifacts(into_dir, manifest, store.jobs)
    if problems:
        raise RecoveryError("; ".join("object %s does not match the signed manifest of set %s: %s (changed in the "
                                      "bucket)" % (store.url(SETS + path), set_id, problem)
                                      for path, problem in sorted(problems.items())))
    write_bytes_atomic(os.path.join(into_dir, name), raw)  # last: a copy holding it is complete
    return manifest, verdict, size


def _chosen(store, set_id):
    """``latest`` is the bucket's newest complete set; an id must be complete there."""
    complete = complete_ids(bucket_sets(store))
    if set_id == "latest":
        if not complete:
            raise RecoveryError("bucket %s holds no complete set" % store.url(SETS))
        return complete[0]
    if not SET_ID_RE.match(set_id or ""):
        raise RecoveryError("set_id %r is not YYYYMMDD_HHMMSS or latest" % set_id)
    if set_id not in complete:
        raise RecoveryError("set %s is not complete in bucket %s (it holds %s)" % (
            set_id, store.url(SETS), ", ".join(complete) or "no complete set"))
    return set_id


def fetch_set(backup_dir, store, set_id, trust, check_mode=False, replace_damaged=False, jobs=2):
    """Bring one set (or ``latest``) from the bucket into this host's ``.incoming``, checked against its signed
    manifest; ``christmas_offsite_receive`` then decrypts, reads back and publishes it. A copy here already is left
    alone; with ``replace_damaged``, one that fails its checksums is set aside into ``.damaged/`` first (its
    manifest first, so it is no longer complete) and the bucket's copy takes its place."""
    set_id = _chosen(store, set_id)
    present = set_id in complete_set_ids(backup_dir)
    report = {"changed": not present, "set_id": set_id, "already_present": present}
    if present and replace_damaged:
        try:
            verify_set(manifest_name(set_id), backup_dir, deep=False, jobs=jobs, trust=trust)
        except RecoveryError as err:
            present = False
            report.update(changed=True, already_present=False, damaged=str(err))
            if not check_mode:
                report["set_aside"] = _set_aside(backup_dir, set_id)
    if check_mode or present:
        return report
    incoming = os.path.join(backup_dir, INCOMING, set_id)
    remove_quietly(incoming)  # what a killed fetch left
    begin = time.monotonic()
    try:
        _manifest, report["signature"], report["bytes"] = download_set(store, set_id, incoming, trust)
    except BaseException:
        remove_quietly(incoming)
        raise
    report["seconds"] = round(time.monotonic() - begin, 3)
    return report


def _set_aside(backup_dir, set_id):
    """The damaged local copy of ``set_id`` moved into ``.damaged/ID_STAMP/`` (kept to be looked at), its manifest
    first; returns where."""
    aside = os.path.join(backup_dir, DAMAGED, "%s_%d" % (set_id, time.time()))
    make_private_dir(os.path.dirname(aside))
    make_private_dir(aside)
    for name in (manifest_name(set_id), set_dir_name(set_id)):
        if os.path.lexists(os.path.join(backup_dir, name)):
            os.rename(os.path.join(backup_dir, name), os.path.join(aside, name))
    return aside


def verify_bucket_set(backup_dir, store, set_id, trust, deep=False, key=None, jobs=2, pg_target=None):
    """Check the bucket's copy of one set (or ``latest``): downloaded into a scratch directory beside the backups,
    every object against the signed manifest; with ``deep`` it is read back with its own tools (an encrypted copy
    only with its ``key``). The scratch copy goes either way."""
    set_id = _chosen(store, set_id)
    scratch = os.path.join(backup_dir, VERIFYING)
    remove_quietly(scratch)
    try:
        manifest, _verdict, size = download_set(store, set_id, scratch, trust)
        read_back = deep and (key is not None or not encryption.is_encrypted(manifest))
        report, _manifest = verify_set(manifest_name(set_id), scratch, deep=read_back, jobs=jobs,
                                       pg_target=pg_target, encryption_key=key, trust=trust)
    finally:
        remove_quietly(scratch)
    return dict(report, set_id=set_id, bucket=store.url(SETS), bytes=size, read_back=read_back)

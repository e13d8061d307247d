# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Continuous protection's history off the host, so that a replacement host restores to a second: the pgBackRest
repository and the Redis AOF and config versions, mirrored into the vault's ``history/`` with rsync over SSH.

Each mirror takes two passes: the data first, then the index files (pgBackRest's ``*.info``, our ``*.json``) with
what the host no longer keeps deleted, so the vault never lists a backup, an AOF piece or a config version whose
files have not arrived. The pgBackRest repository leaves as it is (with ``christmas_encryption`` it is encrypted by
pgBackRest itself, and its cipher pass lives beside it, never in it); the AOF and config versions leave as they are,
or sealed file by file with the encryption key (the key's id in ``KEY_ID``)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import time

from ansible_collections.christmas.recovery.plugins.module_utils.core.commands import find_program, run
from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.core.fsutil import (
    make_private_dir,
    remove_quietly,
    tree_bytes,
    write_bytes_atomic,
    write_json_atomic,
)
from ansible_collections.christmas.recovery.plugins.module_utils.core.locking import LOCK_NAME, DirectoryLock
from ansible_collections.christmas.recovery.plugins.module_utils.sets import encryption
from ansible_collections.christmas.recovery.plugins.module_utils.transport.offsite import (
    check_remote,
    remote_spec,
    rsync_argv,
    rsync_cause,
    ssh_command,
)
from ansible_collections.christmas.recovery.plugins.module_utils.wal.pg_server import os_user_entry

HISTORY = "history"
REPO, PITR = "pgbackrest", "pitr"
KEY_ID = "KEY_ID"  # in a sealed copy of the AOF and config versions: the id of the key that sealed it
SEALED_COPY = ".offsite-history"  # in the backup directory: the sealed copy, kept to reseal only what changed
FETCHED = ".history-fetched.json"  # in the backup directory: where this host's history came from
INDEXES = ("*.info", "*.info.copy", "*.json", KEY_ID)  # written after the files they list: the second pass
NEVER = (LOCK_NAME, ".*.tmp", "*.pgbackrest.tmp")  # locks and files still being written
NAME_RE = re.compile(r"^\S+\s+[\d,]+\s+\S+\s+\S+\s+(.+)$")  # a line of rsync --list-only


def _rsync(remote, options, source, destination, what):
    run(rsync_argv(remote, [source], destination, ["--exclude=%s" % pattern for pattern in NEVER] + list(options)),
        what, cause=rsync_cause)


def _mirror(remote, source, destination, what, options=()):
    """``source``'s tree as ``destination``: data first, the index files last, with what is gone deleted."""
    _rsync(remote, ["--exclude=%s" % pattern for pattern in INDEXES] + list(options), source, destination, what)
    _rsync(remote, ["--delete", "--delete-excluded"] + list(options), source, destination, what)


def files_of(root):
    """Relative paths of the regular files of ``root`` that a mirror carries."""
    found = []
    for base, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            if name != LOCK_NAME and not (name.startswith(".") and name.endswith(".tmp")):
                found.append(os.path.relpath(os.path.join(base, name), root))
    return found


def seal_tree(source, mirror, key):
    """``mirror`` holds every file of ``source`` sealed under its relative path, resealed when the file changed
    (size or mtime) since it was sealed, and nothing else; returns how many files were sealed this time."""
    make_private_dir(mirror)
    state_path = mirror + ".state.json"
    try:
        with open(state_path, encoding="utf-8") as handle:
            state = json.load(handle)
    except (OSError, ValueError):
        state = {}
    if state.get("key_id") != encryption.key_id(key):
        state = {"key_id": encryption.key_id(key), "files": {}}
    wanted, sealed = set(), 0
    for relative in files_of(source):
        wanted.add(relative)
        info = os.stat(os.path.join(source, relative))
        stamp = [info.st_size, info.st_mtime_ns]
        target = os.path.join(mirror, relative)
        if state["files"].get(relative) == stamp and os.path.isfile(target):
            continue
        make_private_dir(os.path.dirname(target))
        remove_quietly(os.path.join(os.path.dirname(target), ".%s.tmp" % os.path.basename(target)))
        encryption.seal_file(os.path.join(source, relative), target, key, "%s/%s" % (PITR, relative))
        state["files"][relative] = stamp
        sealed += 1
    for relative in set(files_of(mirror)) - wanted - {KEY_ID}:
        remove_quietly(os.path.join(mirror, relative))
    state["files"] = {name: stamp for name, stamp in state["files"].items() if name in wanted}
    write_bytes_atomic(os.path.join(mirror, KEY_ID), state["key_id"].encode("ascii"))
    write_json_atomic(state_path, state)
    return sealed


def send_history(protection, remote, key=None, check_mode=False, progress=print):
    """Mirror the pgBackRest repository and the AOF and config versions of ``protection`` into the vault's
    ``history/``, the latter sealed with ``key`` when given. Nothing to send (no repository yet) is no error."""
    check_remote(remote)
    present = [path for path in (protection.repo_path, protection.pitr_dir) if os.path.isdir(path)]
    report = {"changed": bool(present), "sent": [os.path.basename(path) for path in present],
              "sealed": key is not None, "bytes": 0}
    if key is not None:
        report["key_id"] = encryption.key_id(key)
    if check_mode or not present:
        return report
    begin = time.monotonic()
    vault_history = "%s/%s" % (remote.directory, HISTORY)
    if os.path.isdir(protection.repo_path):
        progress("sending the pgBackRest repository to %s" % remote.host)
        _mirror(remote, protection.repo_path + "/", remote_spec(remote, "%s/%s/" % (vault_history, REPO)),
                "rsync of the pgBackRest repository to %s" % remote.host, ["--chmod=D0700,F0600"])
        report["bytes"] += tree_bytes(protection.repo_path)
    if os.path.isdir(protection.pitr_dir):
        with contextlib.ExitStack() as locks:  # a shipment in progress finishes first; the next waits for the copy
            for path in (protection.redis_repo, protection.config_repo):
                if os.path.isdir(path):
                    locks.enter_context(DirectoryLock(path, shared=True))
            source = protection.pitr_dir
            if key is not None:
                source = os.path.join(protection.backup_dir, SEALED_COPY, PITR)
                progress("sealed %d new or changed AOF and config file(s)" % seal_tree(protection.pitr_dir, source,
                                                                                      key))
            progress("sending the AOF and config versions to %s" % remote.host)
            _mirror(remote, source + "/", remote_spec(remote, "%s/%s/" % (vault_history, PITR)),
                    "rsync of the AOF and config versions to %s" % remote.host)
            report["bytes"] += tree_bytes(source)
    report["seconds"] = round(time.monotonic() - begin, 3)
    return report


def _vault_history(remote):
    """The names in the vault's ``history/`` (rsync --list-only); a vault without one is refused by name."""
    argv = [find_program("rsync"), "--list-only", "--protect-args", "-e", ssh_command(remote), "--",
            remote_spec(remote, "%s/%s/" % (remote.directory, HISTORY))]
    try:
        listing = run(argv, "listing the history on %s" % remote.host, cause=rsync_cause)
    except RecoveryError as err:
        if "No such file" not in str(err):
            raise
        raise RecoveryError("vault %s holds no history of continuous protection in %s/%s (has the platform host "
                            "shipped any? offsite.yml sends it)" % (remote.host, remote.directory, HISTORY)) from None
    return {match.group(1) for match in map(NAME_RE.match, listing.splitlines()) if match}


def _refuse_existing(path, what):
    if os.path.lexists(path) and (not os.path.isdir(path) or os.listdir(path)):
        raise RecoveryError("%s %s exists on this host already: the vault's history would replace it (move it away "
                            "to fetch the vault's)" % (what, path))


def _give_tree(root, os_user):
    entry = os_user_entry(os_user)
    for base, dirs, files in os.walk(root):
        for name in [base] + [os.path.join(base, name) for name in dirs + files]:
            os.lchown(name, entry.pw_uid, entry.pw_gid)


def open_tree(sealed, opened, key, key_id, vault):
    """The plaintext of a sealed copy, each file opened under the name it was sealed with."""
    if key is None:
        raise RecoveryError("the AOF and config history on %s is encrypted (key %s): fetching it needs the "
                            "encryption key" % (vault, key_id))
    if encryption.key_id(key) != key_id:
        raise RecoveryError("encryption key %s does not match the AOF and config history on %s (encrypted with key "
                            "%s); nothing was kept" % (encryption.key_id(key), vault, key_id))
    make_private_dir(opened)
    for relative in files_of(sealed):
        if relative == KEY_ID:
            continue
        make_private_dir(os.path.dirname(os.path.join(opened, relative)))
        encryption.open_file(os.path.join(sealed, relative), os.path.join(opened, relative), key,
                             "%s/%s" % (PITR, relative))


def _staging(path):
    return os.path.join(os.path.dirname(path), ".%s.fetching" % os.path.basename(path))


def _remove_staging(protection):
    """The copies a fetch made beside the destinations (a killed fetch's, or this one's once done)."""
    for path in (protection.repo_path, protection.pitr_dir):
        remove_quietly(_staging(path))
        remove_quietly(_staging(path) + ".open")


def _undo_placing(protection, marker):
    """The copies a fetch put in place go again, and its pending marker last."""
    remove_quietly(protection.repo_path)
    remove_quietly(protection.pitr_dir)
    remove_quietly(marker + ".pending")


def _copy_history(protection, remote, key, with_pitr, progress):
    """The vault's history copied beside where it goes: the AOF and config versions first (opened when sealed, so a
    wrong key is found before the repository is copied), then the repository. Returns bytes and the sealing key id."""
    copied = {"bytes": 0}
    if with_pitr:
        progress("fetching the AOF and config versions from %s" % remote.host)
        staged = _staging(protection.pitr_dir)
        _rsync(remote, [], remote_spec(remote, "%s/%s/%s/" % (remote.directory, HISTORY, PITR)), staged + "/",
               "rsync of the AOF and config versions from %s" % remote.host)
        copied["bytes"] += tree_bytes(staged)
        if os.path.isfile(os.path.join(staged, KEY_ID)):
            with open(os.path.join(staged, KEY_ID), encoding="ascii") as handle:
                copied["key_id"] = handle.read().strip()
            progress("decrypting the AOF and config versions")
            open_tree(staged, staged + ".open", key, copied["key_id"], remote.host)
            remove_quietly(staged)
            os.rename(staged + ".open", staged)
    progress("fetching the pgBackRest repository from %s" % remote.host)
    _rsync(remote, [], remote_spec(remote, "%s/%s/%s/" % (remote.directory, HISTORY, REPO)),
           _staging(protection.repo_path) + "/", "rsync of the pgBackRest repository from %s" % remote.host)
    _give_tree(_staging(protection.repo_path), protection.os_user)
    copied["bytes"] += tree_bytes(_staging(protection.repo_path))
    return copied


def _place(protection, remote, marker, with_pitr):
    """The fetched copies in place and the repository read with pgBackRest (its config file written for this host);
    when that fails, the copies go again, so a rerun starts clean. Returns the repository's backups and what was
    opened to the OS user."""
    write_json_atomic(marker + ".pending", {"vault": remote.host})
    try:
        if with_pitr:
            os.rename(_staging(protection.pitr_dir), protection.pitr_dir)  # an empty directory is replaced
        os.rename(_staging(protection.repo_path), protection.repo_path)
        opened = protection.open_backup_dir_to_os_user()
        repository = protection.repository()
        repository.prepare()
        backups = repository.info()["backups"]
        if not backups:
            raise RecoveryError("the pgBackRest repository fetched from %s holds no backup of stanza %s" % (
                remote.host, protection.stanza))
    except BaseException:
        _undo_placing(protection, marker)
        raise
    return backups, opened


def fetch_history(protection, remote, key=None, check_mode=False, progress=print):
    """Bring the vault's history into this host's (empty) pgBackRest repository and AOF and config directory, for
    a restore to a second on a replacement host: copied beside them, opened with ``key`` when sealed, then put in
    place, the repository's config file written and the repository read with pgBackRest. Once fetched, a second run
    changes nothing; a repository of this host's own is never replaced."""
    check_remote(remote)
    marker = os.path.join(protection.backup_dir, FETCHED)
    if os.path.isfile(marker):
        with open(marker, encoding="utf-8") as handle:
            return {"changed": False, "already_fetched": json.load(handle)}
    if os.path.isfile(marker + ".pending"):  # a fetch killed while putting its copies in place: they go again
        _undo_placing(protection, marker)
    _refuse_existing(protection.repo_path, "pgBackRest repository")
    _refuse_existing(protection.pitr_dir, "AOF and config history")
    names = _vault_history(remote)
    if REPO not in names:
        raise RecoveryError("vault %s holds no pgBackRest repository in %s/%s" % (remote.host, remote.directory,
                                                                                  HISTORY))
    report = {"changed": True, "fetched": sorted(names & {REPO, PITR}), "vault": remote.host}
    if check_mode:
        return report
    begin = time.monotonic()
    make_private_dir(protection.backup_dir)
    _remove_staging(protection)
    try:
        report.update(_copy_history(protection, remote, key, PITR in names, progress))
        backups, opened = _place(protection, remote, marker, PITR in names)
    finally:  # what a failure leaves of the copies (after success, nothing)
        _remove_staging(protection)
    if opened:
        progress(opened)
    write_json_atomic(marker, {"vault": remote.host, "directory": remote.directory, "key_id": report.get("key_id"),
                               "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                               "newest_backup": backups[-1]["label"]})
    remove_quietly(marker + ".pending")
    report.update(seconds=round(time.monotonic() - begin, 3), newest_backup=backups[-1]["label"])
    return report

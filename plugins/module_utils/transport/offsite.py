# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Backup sets between hosts: rsync over SSH into the receiver's ``.incoming``, where a set is checked against its
own manifest before it is published (set directory first, manifest last), so no set is ever seen complete early."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import time
from collections import namedtuple

from ansible_collections.christmas.recovery.plugins.module_utils.core.commands import cause_line, find_program, run
from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.core.fsutil import (
    fsync_dir,
    make_private_dir,
    remove_quietly,
    tree_bytes,
)
from ansible_collections.christmas.recovery.plugins.module_utils.core.locking import DirectoryLock
from ansible_collections.christmas.recovery.plugins.module_utils.sets import encryption, signing
from ansible_collections.christmas.recovery.plugins.module_utils.sets.manifest import (
    SET_ID_RE,
    complete_set_ids,
    load,
    manifest_name,
    set_dir_name,
)
from ansible_collections.christmas.recovery.plugins.module_utils.sets.retention import (
    expired_set_ids,
    prune_expired_sets,
)
from ansible_collections.christmas.recovery.plugins.module_utils.sets.verify import verify_set

INCOMING = ".incoming"
STAGING = ".offsite"
# rsync splits its -e command on spaces and quotes: a path holding a quote could not be passed safely.
UNQUOTABLE_RE = re.compile(r"['\"\\\s]")
NAME_RE = re.compile(r"^[A-Za-z0-9_.:%][A-Za-z0-9_.:%-]*$")

# What ssh or the far side said, rather than rsync's own summary ("unexplained error (code 255)"); ssh's own verdict
# first, as its host key warning runs over many lines.
RSYNC_CAUSES = (re.compile(r"Host key verification failed|Permission denied"),
                re.compile(r"failed|refused|unreachable|timed out|No such|not known|Could not", re.IGNORECASE))

Remote = namedtuple("Remote", "host port user directory key_file known_hosts connect_timeout")


def list_sets(backup_dir):
    """The complete sets of ``backup_dir``, newest first, each with what its manifest says (or why it cannot)."""
    sets = []
    for set_id in complete_set_ids(backup_dir):
        path = os.path.join(backup_dir, manifest_name(set_id))
        entry = {"set_id": set_id, "manifest": path}
        try:
            manifest = load(path)
        except RecoveryError as err:
            entry["problem"] = str(err)
        else:
            entry.update(components=manifest["components"], started_at=manifest["started_at"],
                         host=manifest["host"], total_bytes=sum(a["size"] for a in manifest["artifacts"]),
                         encrypted=encryption.is_encrypted(manifest),
                         key_id=manifest.get("encryption", {}).get("key_id"))
        sets.append(entry)
    return sets


def check_remote(remote):
    """What goes into rsync's ssh command line: a host or user that ssh could read as an option is refused."""
    for field, option in (("host", "vault_host"), ("user", "vault_user")):
        if not NAME_RE.match(getattr(remote, field)):
            raise RecoveryError("%s %r is not a host or user name" % (option, getattr(remote, field)))
    for field, option in (("key_file", "ssh_key_file"), ("known_hosts", "known_hosts_file")):
        value = getattr(remote, field)
        if UNQUOTABLE_RE.search(value):
            raise RecoveryError("%s %r must not contain quotes, backslashes or spaces" % (option, value))
        if not os.path.isfile(value):
            raise RecoveryError("%s %s does not exist" % (option, value))
    if not os.path.isabs(remote.directory):
        raise RecoveryError("vault_dir %s must be an absolute path" % remote.directory)


def ssh_command(remote):
    """The ssh rsync runs: only the given key, only the given known hosts, never a prompt."""
    return " ".join(shlex.quote(part) for part in (
        "ssh", "-p", str(remote.port), "-i", remote.key_file, "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile=%s" % remote.known_hosts,
        "-o", "ConnectTimeout=%d" % remote.connect_timeout))


def rsync_cause(stderr):
    lines = [line.strip() for line in stderr.splitlines()
             if line.strip() and not line.startswith(("rsync error:", "@"))]
    found = (line for pattern in RSYNC_CAUSES for line in lines if pattern.search(line))
    return next(found, None) or cause_line(stderr)


def remote_spec(remote, path):
    host = "[%s]" % remote.host if ":" in remote.host else remote.host
    return "%s@%s:%s" % (remote.user, host, path)


def rsync_argv(remote, sources, destination, options=("--relative",)):
    """Archive mode keeps the 0600/0700 modes; --partial lets an interrupted copy resume on the next run.
    ``options`` come before the names (a set's copy keeps its relative names)."""
    return [find_program("rsync"), "--archive", *options, "--partial", "--mkpath", "--protect-args",
            "-e", ssh_command(remote), "--", *sources, destination]


def _set_sources(directory, set_id):
    # "/./" marks where rsync --relative starts the names it creates on the receiving side.
    return ["%s/./%s" % (directory, manifest_name(set_id)), "%s/./%s" % (directory, set_dir_name(set_id))]


def sets_to_send(backup_dir, retention_days, present):
    """Local complete sets the vault lacks, oldest first, leaving out those its retention would delete at once (none
    without ``retention_days``)."""
    expired = set(expired_set_ids(backup_dir, retention_days)) if retention_days is not None else set()
    return [set_id for set_id in reversed(complete_set_ids(backup_dir))
            if set_id not in present and set_id not in expired]


def clear_staging(backup_dir, todo):
    """A killed run's encrypted copy is reused if its set is still to send, else removed."""
    staging = os.path.join(backup_dir, STAGING)
    if os.path.isdir(staging):
        for name in os.listdir(staging):
            if not any(set_id in name for set_id in todo):
                remove_quietly(os.path.join(staging, name))


@contextlib.contextmanager
def leaving_copy(backup_dir, set_id, key, jobs, signer, trust, progress):
    """The directory a set leaves from, checked against its manifest and signature (``trust``) first: the backup
    directory itself, or with ``key`` an encrypted copy in the staging directory (its manifest signed by
    ``signer``), removed once it has left."""
    if key is None:
        progress("checking set %s before it leaves" % set_id)
        verify_set(manifest_name(set_id), backup_dir, jobs=jobs, trust=trust)
        yield backup_dir
        return
    staging = os.path.join(backup_dir, STAGING)
    try:
        progress("encrypting set %s" % set_id)
        encryption.encrypt_set(backup_dir, set_id, staging, key, jobs, signer=signer, trust=trust)
        yield staging
    finally:  # the encrypted copy served its purpose; the vault keeps it
        remove_quietly(os.path.join(staging, manifest_name(set_id)))
        remove_quietly(os.path.join(staging, set_dir_name(set_id)))


def send_sets(backup_dir, remote, retention_days, present=(), key=None, jobs=2, check_mode=False, progress=print,
              signer=None, trust=None):
    """Copy every complete local set the vault lacks into the vault's ``.incoming``, encrypted first with ``key``
    (the encrypted copy's manifest signed by ``signer``).

    Each set is checked against its manifest and signature (``trust``) before it leaves; the vault checks it again
    when it arrives."""
    check_remote(remote)
    todo = sets_to_send(backup_dir, retention_days, set(present))
    report = {"changed": bool(todo), "sent": todo, "encrypted": key is not None, "bytes": 0, "seconds": {}}
    if key is not None:
        report["key_id"] = encryption.key_id(key)
    public = trust.public_key() if trust is not None and not trust.allow_unsigned else None
    if public is not None:  # what the vault checks the arrivals with: the key this host checked them with
        report["signing_public_key"] = signing.public_key_pem(public)
    if check_mode:
        return report
    with DirectoryLock(backup_dir, shared=True):  # retention waits until every set has left
        clear_staging(backup_dir, todo)
        for set_id in todo:
            begin = time.monotonic()
            with leaving_copy(backup_dir, set_id, key, jobs, signer, trust, progress) as source:
                progress("sending set %s to %s" % (set_id, remote.host))
                report["bytes"] += tree_bytes(os.path.join(source, set_dir_name(set_id)))
                run(rsync_argv(remote, _set_sources(source, set_id),
                               remote_spec(remote, "%s/%s/%s/" % (remote.directory, INCOMING, set_id))),
                    "rsync of set %s to %s" % (set_id, remote.host), cause=rsync_cause)
            report["seconds"][set_id] = round(time.monotonic() - begin, 3)
    return report


def fetch_set(backup_dir, remote, set_id, check_mode=False, progress=print):
    """Copy one set from a vault into this host's ``.incoming``; ``receive_sets`` then checks and publishes it."""
    check_remote(remote)
    if not SET_ID_RE.match(set_id or ""):
        raise RecoveryError("set_id %r is not YYYYMMDD_HHMMSS" % set_id)
    present = set_id in complete_set_ids(backup_dir)
    report = {"changed": not present, "set_id": set_id, "already_present": present}
    if check_mode or present:
        return report
    incoming = os.path.join(backup_dir, INCOMING, set_id)
    make_private_dir(incoming)
    progress("fetching set %s from %s" % (set_id, remote.host))
    begin = time.monotonic()
    sources = [remote_spec(remote, path) for path in _set_sources(remote.directory, set_id)]
    run(rsync_argv(remote, sources, incoming + "/"), "rsync of set %s from %s" % (set_id, remote.host),
        cause=rsync_cause)
    report.update(bytes=tree_bytes(incoming), seconds=round(time.monotonic() - begin, 3))
    return report


def _publish(source, backup_dir, set_id):
    """The set directory first, the manifest last: the manifest's arrival is what makes the set complete."""
    final = os.path.join(backup_dir, set_dir_name(set_id))
    remove_quietly(final)  # a set directory without its manifest: what a killed publish leaves
    os.rename(os.path.join(source, set_dir_name(set_id)), final)
    fsync_dir(backup_dir)
    os.rename(os.path.join(source, manifest_name(set_id)), os.path.join(backup_dir, manifest_name(set_id)))
    fsync_dir(backup_dir)


def _receive_one(backup_dir, set_id, decrypt, key, deep, jobs, pg_target, progress, trust):
    """Check one arrived set and its signature, decrypt it if asked, read it back if asked, publish it; the arrival
    goes either way."""
    incoming = os.path.join(backup_dir, INCOMING, set_id)
    trust = trust or signing.Trust()
    try:
        progress("checking set %s against its manifest and signature" % set_id)
        try:
            report, manifest = verify_set(manifest_name(set_id), incoming, jobs=jobs, trust=trust)
        except RecoveryError as err:
            raise RecoveryError("set %s arrived damaged or unsigned and was discarded: %s" % (set_id, err)) from None
        unsigned = report["signature"]["unsigned_allowed"]
        if unsigned:
            progress(report["signature"]["warning"])
        encrypted = encryption.is_encrypted(manifest)
        source, decrypted = incoming, decrypt and encrypted
        if decrypted:
            if key is None:
                raise RecoveryError("set %s is encrypted (key %s): bringing it back needs the encryption key" % (
                    set_id, manifest["encryption"]["key_id"]))
            progress("decrypting set %s" % set_id)
            source = os.path.join(incoming, "decrypted")
            encryption.decrypt_set(incoming, set_id, source, key, jobs)
            inner_path = os.path.join(source, manifest_name(set_id))
            inner = trust.check(load(inner_path), inner_path)  # the set as its backup signed it
            unsigned = unsigned or inner["unsigned_allowed"]
        if deep and (decrypted or not encrypted):  # a set kept encrypted (a vault) is read back only with its key
            progress("reading set %s back" % set_id)
            verify_set(manifest_name(set_id), source, deep=True, jobs=jobs, pg_target=pg_target, trust=trust)
        _publish(source, backup_dir, set_id)
    finally:
        remove_quietly(incoming)
    return {"set_id": set_id, "decrypted": decrypted, "unsigned_allowed": unsigned}


def receive_sets(backup_dir, retention_days=None, decrypt=False, key=None, deep=False, jobs=2, pg_target=None,
                 check_mode=False, progress=print, trust=None):
    """Publish every set waiting in ``.incoming`` once it matches its manifest, then apply retention.

    A vault keeps sets as they came; a host that restores (``decrypt``) gets encrypted ones decrypted with ``key``.
    ``deep`` reads each plaintext set back with its own tools before it is published."""
    incoming_root = os.path.join(backup_dir, INCOMING)
    waiting = sorted(name for name in os.listdir(incoming_root) if SET_ID_RE.match(name)) \
        if os.path.isdir(incoming_root) else []
    if check_mode:
        expired = expired_set_ids(backup_dir, retention_days) \
            if retention_days is not None and os.path.isdir(backup_dir) else []
        return {"changed": bool(waiting or expired), "received": waiting, "pruned": expired}
    make_private_dir(backup_dir)
    received, pruned = [], []
    with DirectoryLock(backup_dir):
        for set_id in waiting:
            if set_id in complete_set_ids(backup_dir):  # published by an earlier run that died before cleaning up
                remove_quietly(os.path.join(incoming_root, set_id))
                continue
            received.append(_receive_one(backup_dir, set_id, decrypt, key, deep, jobs, pg_target, progress, trust))
        if retention_days is not None:
            pruned = prune_expired_sets(backup_dir, retention_days)
        if waiting and not os.listdir(incoming_root):
            os.rmdir(incoming_root)  # made by rsync --mkpath with the umask's mode; nothing waits any more
    return {"changed": bool(received or pruned), "received": [r["set_id"] for r in received],
            "decrypted": [r["set_id"] for r in received if r["decrypted"]], "pruned": pruned,
            "unsigned_allowed": [r["set_id"] for r in received if r["unsigned_allowed"]],
            "sets": list_sets(backup_dir)}

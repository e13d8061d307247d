# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Versions of the config tree between backup sets: a new version whenever the tree changed, for a restore to a time.

The repository holds each file's content once, by its SHA-256 (``objects/ab/abcd...``), and one JSON record per
version (``versions/ID.json``, written last); ``last_checked.json`` records the newest run, which found the tree as
the newest version has it. A version becomes the archive and manifest section ``config_restore.restore_tree`` takes
(``materialize``), so a restore to a time is today's restore of a set."""

from __future__ import annotations

import json
import os
import re
import stat
import tarfile
import time

from ansible_collections.christmas.recovery.plugins.module_utils.config.config_tree import (
    ARCHIVE_FILE,
    HARDLINKS_STORED_AS,
    HashingReader,
    TreeDigest,
    plan_archive,
    special_kind,
    walk_tree,
)
from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.core.fsutil import (
    CHUNK,
    FILE_MODE,
    HashingWriter,
    fsync_dir,
    make_private_dir,
    name_file,
    read_blocks,
    remove_quietly,
    sha256_file,
    write_json_atomic,
)
from ansible_collections.christmas.recovery.plugins.module_utils.core.locking import DirectoryLock
from ansible_collections.christmas.recovery.plugins.module_utils.core.safe_paths import link_stays_inside

FORMAT = 1
OBJECTS, VERSIONS, LAST_CHECKED = "objects", "versions", "last_checked.json"
ATTEMPTS = 3  # walks of a tree that changes under us before the run gives up
VERSION_ID = re.compile(r"^[0-9]{8}T[0-9]{6}\.[0-9]{6}Z$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
TAR_TYPES = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "link": tarfile.SYMTYPE}


class _TreeChanged(Exception):
    """An entry changed, appeared or vanished while it was read: the walk starts again."""


def _utc(when):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


def _version_id(micros):
    seconds, fraction = divmod(micros, 10**6)
    return "%s.%06dZ" % (time.strftime("%Y%m%dT%H%M%S", time.gmtime(seconds)), fraction)


def _object_path(repo_dir, sha):
    return os.path.join(repo_dir, OBJECTS, sha[:2], sha)


def _identity(info):
    """What changes when a file is replaced, written, truncated or chmod'ed."""
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns


def _open_still(path, info):
    """Open a file of the walk without following links; it must still be the file the walk saw."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    handle = os.fdopen(fd, "rb", buffering=0)
    if _identity(os.fstat(fd)) != _identity(info):
        handle.close()
        raise _TreeChanged(path)
    return handle


def _hash_still(path, info):
    with _open_still(path, info) as handle:
        reader = HashingReader(handle)
        for _block in read_blocks(reader):
            pass
        if _identity(os.fstat(handle.fileno())) != _identity(info):
            raise _TreeChanged(path)
    return reader.digest.hexdigest()


def _snapshot(root):
    """Walk the tree as the archive does (special files skipped, each name of a hardlinked file on its own) and hash
    every file; returns the record's tree fields and the lstat of each file, for the copy that may follow."""
    try:
        root_info = os.lstat(root)
        entries, skipped, hardlinked, seen = [], [], [], {}
        for name, info in walk_tree(root):
            path = os.path.join(root, name)
            kind = special_kind(info.st_mode)
            if kind:
                skipped.append({"path": name, "type": kind})
                continue
            entry = {"path": name, "mode": "%o" % stat.S_IMODE(info.st_mode), "uid": info.st_uid,
                     "gid": info.st_gid, "mtime": info.st_mtime}
            if stat.S_ISREG(info.st_mode):
                entry.update(type="file", size=info.st_size, sha256=_hash_still(path, info))
                seen[name] = info
                if info.st_nlink > 1:
                    hardlinked.append(name)
            elif stat.S_ISDIR(info.st_mode):
                entry["type"] = "dir"
            else:
                entry.update(type="link", target=os.readlink(path))
                if not link_stays_inside(name, entry["target"]):
                    raise _TreeChanged(path)  # made to escape after the plan: the next plan refuses it
            entries.append(entry)
    except OSError as err:
        raise _TreeChanged("%s: %s" % (err.filename or root, err.strerror)) from None
    tree = {"source_dir": os.path.abspath(root), "root_mode": "%o" % stat.S_IMODE(root_info.st_mode),
            "root_owner": [root_info.st_uid, root_info.st_gid], "entries": entries,
            "skipped": sorted(skipped, key=lambda item: item["path"]),
            "hardlinks": {"stored_as": HARDLINKS_STORED_AS, "paths": sorted(hardlinked)}}
    tree["tree_sha256"] = _tree_digest(tree)
    return tree, seen


def _tree_digest(tree):
    """The digest ``archive_tree`` records for the same tree (and ``check_members`` finds in the archive)."""
    digest = TreeDigest()
    digest.add("root", ".", int(tree["root_mode"], 8))
    for entry in tree["entries"]:
        detail = {"file": entry.get("sha256"), "link": entry.get("target")}.get(entry["type"], "")
        digest.add(entry["type"], entry["path"], 0 if entry["type"] == "link" else int(entry["mode"], 8), detail)
    return digest.hexdigest()


def _store_object(repo_dir, source, info, sha):
    """Copy a file into the repository under its SHA-256, re-hashed while copied: the object always matches its
    name, and a file that changed since the walk starts the walk again. Returns the bytes stored."""
    final = _object_path(repo_dir, sha)
    make_private_dir(os.path.dirname(final))
    tmp = os.path.join(os.path.dirname(final), ".%s.tmp" % sha)
    try:
        handle = _open_still(source, info)
    except OSError as err:
        raise _TreeChanged("%s: %s" % (source, err.strerror)) from None
    try:
        with handle, open(tmp, "wb", buffering=CHUNK, opener=_private_opener) as out:
            os.fchmod(out.fileno(), FILE_MODE)  # a leftover of a stopped run may have another mode
            reader = HashingReader(handle)
            while True:
                try:
                    block = reader.read(CHUNK)
                except OSError as err:
                    raise _TreeChanged("%s: %s" % (source, err.strerror)) from None
                if not block:
                    break
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
            if reader.digest.hexdigest() != sha or _identity(os.fstat(handle.fileno())) != _identity(info):
                raise _TreeChanged(source)
        os.rename(tmp, final)
        fsync_dir(os.path.dirname(final))
    except OSError as err:
        remove_quietly(tmp)
        raise RecoveryError("storing config file %s in %s failed: %s: %s" % (
            source, repo_dir, name_file(err, tmp).filename, err.strerror)) from None
    except BaseException:
        remove_quietly(tmp)
        raise
    return info.st_size


def _private_opener(path, flags):
    return os.open(path, flags | os.O_NOFOLLOW, FILE_MODE)


def _check(condition, what):
    if not condition:
        raise ValueError(what)


def _check_entry(entry):
    _check(isinstance(entry, dict) and entry.get("type") in TAR_TYPES, "an entry of unknown type")
    _check(isinstance(entry.get("path"), str) and isinstance(entry.get("mode"), str), "an entry without path or mode")
    int(entry["mode"], 8)
    for field in ("uid", "gid"):
        _check(type(entry.get(field)) is int, "entry %r without %s" % (entry["path"][:200], field))
    _check(type(entry.get("mtime")) in (int, float), "entry %r without mtime" % entry["path"][:200])
    if entry["type"] == "file":
        _check(type(entry.get("size")) is int and entry["size"] >= 0, "file %r without size" % entry["path"][:200])
        _check(isinstance(entry.get("sha256"), str) and SHA256.match(entry["sha256"]),
               "file %r without a SHA-256" % entry["path"][:200])
    elif entry["type"] == "link":
        _check(isinstance(entry.get("target"), str), "link %r without target" % entry["path"][:200])


def _load_record(repo_dir, version_id):
    """A version record, checked: its fields, and its entries against its tree digest."""
    if not isinstance(version_id, str) or not VERSION_ID.match(version_id):
        raise RecoveryError("config version %r is not a version id (like 20261101T120000.000000Z)" % (version_id,))
    path = os.path.join(repo_dir, VERSIONS, version_id + ".json")
    try:
        with open(path, encoding="utf-8") as handle:
            record = json.load(handle)
        _check(isinstance(record, dict) and record.get("format") == FORMAT, "not a version record of format 1")
        _check(record.get("id") == version_id, "it names another version, %r" % (record.get("id"),))
        _check(type(record.get("time")) in (int, float), "no time")
        owner = record.get("root_owner")
        _check(isinstance(owner, list) and len(owner) == 2 and all(type(part) is int for part in owner),
               "no root owner")
        _check(isinstance(record.get("skipped"), list) and isinstance(record.get("hardlinks"), dict),
               "no skipped entries or hardlinks")
        _check(isinstance(record.get("entries"), list), "no entries")
        for entry in record["entries"]:
            _check_entry(entry)
        _check(_tree_digest(record) == record.get("tree_sha256"), "its entries do not match its tree digest")
    except FileNotFoundError:
        raise RecoveryError("config version %s does not exist in %s" % (version_id, repo_dir)) from None
    except OSError as err:
        raise RecoveryError("config version record %s cannot be read: %s" % (path, err.strerror)) from None
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise RecoveryError("config version record %s is unreadable: %s" % (path, err)) from None
    return record


def _require_repository(repo_dir):
    if not os.path.isdir(os.path.join(repo_dir, VERSIONS)):
        raise RecoveryError("%s is not a config version repository (no %s/ in it)" % (repo_dir, VERSIONS))


def _version_ids(repo_dir):
    try:
        names = os.listdir(os.path.join(repo_dir, VERSIONS))
    except FileNotFoundError:
        return []
    return sorted(name[:-5] for name in names if name.endswith(".json") and VERSION_ID.match(name[:-5]))


def _newest_record(repo_dir):
    for version_id in reversed(_version_ids(repo_dir)):
        try:
            return _load_record(repo_dir, version_id)
        except RecoveryError:
            continue
    return None


def _last_checked(repo_dir):
    try:
        with open(os.path.join(repo_dir, LAST_CHECKED), encoding="utf-8") as handle:
            checked = json.load(handle)
        return checked if type(checked.get("time")) in (int, float) else None
    except (OSError, ValueError, AttributeError):
        return None


def store_version(config_dir, repo_dir, now=None, wait_seconds=0):
    """Store a new version of the tree when it differs from the newest one; record the run either way.

    Returns ``changed``, ``version`` (the new id, or None), ``stored_bytes`` and ``new_objects`` (content not yet in the
    repository), ``tree_sha256``, ``entries`` and ``skipped`` (special files left out, as the archive leaves them)."""
    now = time.time() if now is None else now
    for directory in (repo_dir, os.path.join(repo_dir, OBJECTS), os.path.join(repo_dir, VERSIONS)):
        make_private_dir(directory)
    with DirectoryLock(repo_dir, wait_seconds):
        newest = _newest_record(repo_dir)
        checked = _last_checked(repo_dir)
        latest = max((record["time"] for record in (newest, checked) if record), default=0)
        if now < latest:
            raise RecoveryError("config versions in %s go up to %s, after the clock's %s: nothing stored (is the clock "
                                "right?)" % (repo_dir, _utc(latest), _utc(now)))
        problem = None
        for _attempt in range(ATTEMPTS):
            plan_archive(config_dir)  # refuses, in one line, what the archive refuses (unreadable, escaping links)
            try:
                return _store_once(config_dir, repo_dir, now, newest)
            except _TreeChanged as err:
                problem = err
            except OSError as err:  # the tree's errors are _TreeChanged: this one is the repository's
                raise RecoveryError("storing a config version in %s failed: %s: %s" % (
                    repo_dir, err.filename or repo_dir, err.strerror)) from None
        raise RecoveryError("config tree %s kept changing while a version was taken (%d walks, last at %s): no "
                            "version stored" % (config_dir, ATTEMPTS, problem))


def _store_once(config_dir, repo_dir, now, newest):
    tree, seen = _snapshot(config_dir)
    counts = {kind: sum(entry["type"] == kind for entry in tree["entries"]) for kind in TAR_TYPES}
    result = {"time": now, "tree_sha256": tree["tree_sha256"], "entries": counts, "skipped": tree["skipped"]}
    if newest and newest["tree_sha256"] == tree["tree_sha256"]:
        write_json_atomic(os.path.join(repo_dir, LAST_CHECKED), {"time": now, "version": newest["id"]})
        result.update(changed=False, version=None, stored_bytes=0, new_objects=0)
        return result
    micros = round(now * 10**6)
    if newest and micros <= round(newest["time"] * 10**6):
        raise RecoveryError("config version %s in %s is not older than the clock's %s: nothing stored" % (
            newest["id"], repo_dir, _utc(now)))
    stored = new_objects = 0
    for entry in tree["entries"]:
        if entry["type"] != "file":
            continue
        try:
            present = os.lstat(_object_path(repo_dir, entry["sha256"])).st_size == entry["size"]
        except FileNotFoundError:
            present = False
        if not present:  # missing, or cut short by a damaged disk: stored again
            stored += _store_object(repo_dir, os.path.join(config_dir, entry["path"]), seen[entry["path"]],
                                    entry["sha256"])
            new_objects += 1
    version_id = _version_id(micros)
    record = dict(tree, format=FORMAT, id=version_id, time=micros / 10**6)
    write_json_atomic(os.path.join(repo_dir, VERSIONS, version_id + ".json"), record)
    write_json_atomic(os.path.join(repo_dir, LAST_CHECKED), {"time": now, "version": version_id})
    result.update(changed=True, version=version_id, stored_bytes=stored, new_objects=new_objects)
    return result


def versions(repo_dir):
    """[(version id, unix time)] oldest first; records that cannot be read are left out (``verify_version`` names
    what is wrong with one)."""
    listed = []
    for version_id in _version_ids(repo_dir):
        try:
            listed.append((version_id, _load_record(repo_dir, version_id)["time"]))
        except RecoveryError:
            continue
    return sorted(listed, key=lambda item: item[1])


def version_at(repo_dir, target_time):
    """(version id, unix time) of the newest version at or before ``target_time`` (unix seconds)."""
    listed = versions(repo_dir)
    if not listed:
        raise RecoveryError("no config version in %s: none has been stored yet" % repo_dir)
    before = [item for item in listed if item[1] <= target_time]
    if not before:
        raise RecoveryError("no config version at or before %s in %s: the oldest is from %s (%s)" % (
            _utc(target_time), repo_dir, _utc(listed[0][1]), listed[0][0]))
    return before[-1]


def window(repo_dir):
    """``{"start": oldest version's time, "end": newest run's time}``: a restore can reach any time in between; None
    without a version."""
    listed = versions(repo_dir)
    if not listed:
        return None
    newest_id, end = listed[-1]
    checked = _last_checked(repo_dir)
    if checked and checked.get("version") == newest_id:  # that run found the tree as the newest version has it
        end = max(end, checked["time"])
    return {"start": listed[0][1], "end": end}


def verify_version(repo_dir, version_id):
    """Check the record and that every object it needs exists with its SHA-256; returns the version, its time, and
    the count and bytes of its objects."""
    record = _load_record(repo_dir, version_id)
    files = {entry["sha256"]: entry for entry in record["entries"] if entry["type"] == "file"}
    for sha, entry in sorted(files.items()):
        path = _object_path(repo_dir, sha)
        try:
            size, actual = sha256_file(path)
        except FileNotFoundError:
            raise RecoveryError("config version %s: object %s (%s) is missing" % (
                version_id, path, entry["path"])) from None
        except OSError as err:
            raise RecoveryError("config version %s: object %s (%s) cannot be read: %s" % (
                version_id, path, entry["path"], err.strerror)) from None
        if actual != sha or size != entry["size"]:
            raise RecoveryError("config version %s: object %s (%s) is damaged: its content does not match its "
                                "SHA-256" % (version_id, path, entry["path"]))
    return {"version": version_id, "time": record["time"], "objects": len(files),
            "bytes": sum(entry["size"] for entry in files.values())}


def materialize(repo_dir, version_id, out_dir):
    """Write the version as ``archive_tree`` writes a set's config: ``OUT_DIR/config.tar`` and the manifest's
    "config" section, for ``config_restore.restore_tree``; objects are checked as they are written. Returns
    (archive path, metadata)."""
    _require_repository(repo_dir)
    make_private_dir(out_dir)
    archive_path = os.path.join(out_dir, ARCHIVE_FILE)
    with DirectoryLock(repo_dir, shared=True):
        record = _load_record(repo_dir, version_id)
        writer = HashingWriter(archive_path)
        try:
            with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT, encoding="utf-8",
                              errors="surrogateescape", bufsize=CHUNK) as archive:
                for entry in record["entries"]:
                    _add_entry(archive, repo_dir, version_id, entry)
            writer.commit()
        except OSError as err:
            writer.abort()
            raise RecoveryError("writing config version %s to %s failed: %s: %s" % (
                version_id, archive_path, err.filename or archive_path, err.strerror)) from None
        except BaseException:
            writer.abort()
            raise
    counts = {kind: sum(entry["type"] == kind for entry in record["entries"]) for kind in TAR_TYPES}
    metadata = {field: record[field] for field in ("source_dir", "root_mode", "root_owner", "tree_sha256",
                                                   "skipped", "hardlinks")}
    metadata["entries"] = counts
    return archive_path, metadata


def _add_entry(archive, repo_dir, version_id, entry):
    member = tarfile.TarInfo(entry["path"])
    member.type, member.mode = TAR_TYPES[entry["type"]], int(entry["mode"], 8)
    member.uid, member.gid, member.mtime = entry["uid"], entry["gid"], entry["mtime"]
    if entry["type"] == "link":
        member.linkname = entry["target"]
    if entry["type"] != "file":
        archive.addfile(member)
        return
    member.size = entry["size"]
    path = _object_path(repo_dir, entry["sha256"])
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size != entry["size"]:
                raise RecoveryError("config version %s: object %s (%s) is damaged: %d bytes, not %d" % (
                    version_id, path, entry["path"], size, entry["size"]))
            reader = HashingReader(handle)
            archive.addfile(member, reader)
    except FileNotFoundError:
        raise RecoveryError("config version %s: object %s (%s) is missing" % (
            version_id, path, entry["path"])) from None
    if reader.digest.hexdigest() != entry["sha256"]:
        raise RecoveryError("config version %s: object %s (%s) is damaged: its content does not match its SHA-256" % (
            version_id, path, entry["path"]))


def prune(repo_dir, keep_from):
    """Remove the versions no time at or after ``keep_from`` needs (the newest at or before it stays: no hole), then
    the objects no remaining version uses. Returns what was removed and kept."""
    _require_repository(repo_dir)
    with DirectoryLock(repo_dir):
        records, unreadable = [], []
        for version_id in _version_ids(repo_dir):
            try:
                records.append(_load_record(repo_dir, version_id))
            except RecoveryError:
                unreadable.append(version_id)
        records.sort(key=lambda record: record["time"])
        covering = [index for index, record in enumerate(records) if record["time"] <= keep_from]
        first_kept = covering[-1] if covering else 0
        removed, kept = records[:first_kept], records[first_kept:]
        used = {entry["sha256"] for record in kept for entry in record["entries"] if entry["type"] == "file"}
        try:
            for record in removed:
                os.unlink(os.path.join(repo_dir, VERSIONS, record["id"] + ".json"))
            if removed:
                fsync_dir(os.path.join(repo_dir, VERSIONS))
            objects, freed = _remove_unused_objects(repo_dir, used)  # after the records: never a record without them
        except OSError as err:
            raise RecoveryError("pruning config versions in %s failed: %s: %s" % (
                repo_dir, err.filename or repo_dir, err.strerror)) from None
    return {"changed": bool(removed or objects), "removed_versions": [record["id"] for record in removed],
            "kept_versions": [record["id"] for record in kept], "removed_objects": objects, "freed_bytes": freed,
            "unreadable_versions": unreadable}


def _remove_unused_objects(repo_dir, used):
    """Objects (and temporary files a stopped run left) that no kept version names; returns their count and bytes."""
    count = freed = 0
    objects_dir = os.path.join(repo_dir, OBJECTS)
    for prefix in sorted(os.listdir(objects_dir)) if os.path.isdir(objects_dir) else []:
        directory = os.path.join(objects_dir, prefix)
        unused = [name for name in sorted(os.listdir(directory)) if name not in used]
        for name in unused:
            path = os.path.join(directory, name)
            freed += os.lstat(path).st_size
            os.unlink(path)
        count += len(unused)
        if not os.listdir(directory):
            os.rmdir(directory)
            fsync_dir(objects_dir)
        elif unused:
            fsync_dir(directory)
    return count, freed

# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One backup set: components dumped into a partial directory, hashed, renamed, then the manifest written last."""

from __future__ import annotations

import os
import platform
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from ansible_collections.christmas.recovery.plugins.module_utils.config import config_tree
from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.core.fsutil import (
    fsync_dir,
    make_private_dir,
    make_tree_private,
    remove_quietly,
    sha256_file,
    tighten_private_dir,
    write_json_atomic,
)
from ansible_collections.christmas.recovery.plugins.module_utils.core.locking import DirectoryLock
from ansible_collections.christmas.recovery.plugins.module_utils.db import connection, db_globals, postgres
from ansible_collections.christmas.recovery.plugins.module_utils.redis import redis_keys
from ansible_collections.christmas.recovery.plugins.module_utils.sets import signing
from ansible_collections.christmas.recovery.plugins.module_utils.sets.manifest import (
    CLOCK_SKEW_SECONDS,
    FORMAT,
    FORMAT_VERSION,
    check_physical,
    ignored_manifests,
    manifest_name,
    partial_dir_name,
    seal,
    set_dir_name,
)
from ansible_collections.christmas.recovery.plugins.module_utils.sets.retention import (
    expired_set_ids,
    prune_expired_sets,
    remove_incomplete_leftovers,
)
from ansible_collections.christmas.recovery.plugins.module_utils.sets.verify import verify_set

COLLECTION_VERSION = "0.1.0"
KINDS = {postgres.DUMP_DIR: "pg_dump_directory", db_globals.GLOBALS_FILE: "pg_globals",
         redis_keys.DUMP_FILE: "redis_rdb", config_tree.ARCHIVE_FILE: "config_tar"}
COMPONENT_OF = {postgres.DUMP_DIR: "db", db_globals.GLOBALS_FILE: "db", redis_keys.DUMP_FILE: "redis",
                config_tree.ARCHIVE_FILE: "config"}


def utc_stamp(fmt="%Y-%m-%dT%H:%M:%SZ", when=None):
    return time.strftime(fmt, time.gmtime(when))


def _new_set_id(backup_dir):
    while True:
        set_id = utc_stamp("%Y%m%d_%H%M%S")
        taken = [manifest_name(set_id), set_dir_name(set_id), partial_dir_name(set_id)]
        if not any(os.path.lexists(os.path.join(backup_dir, name)) for name in taken):
            return set_id
        time.sleep(0.2)


def _artifact_list(set_root, set_id, hashed, jobs):
    """Every file of the set with size and SHA-256; files not hashed while written are hashed now, in parallel."""
    paths = []
    for base, _dirs, files in os.walk(set_root):
        paths.extend(os.path.join(base, name) for name in files)
    todo = [p for p in paths if os.path.relpath(p, set_root) not in hashed]
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        hashed.update(zip((os.path.relpath(p, set_root) for p in todo), pool.map(sha256_file, todo), strict=True))
    artifacts = []
    for relative in sorted(hashed):
        top = relative.split("/")[0]
        size, digest = hashed[relative]
        artifacts.append({"path": "%s/%s" % (set_dir_name(set_id), relative), "size": size, "sha256": digest,
                          "component": COMPONENT_OF[top], "kind": KINDS[top]})
    return artifacts


def _preflight(db, redis_target, config_dir):
    """Reach every source before anything is written; returns what was found."""
    found = {}
    if db:
        with connection.session(db) as conn:
            found["db"] = postgres.server_facts(conn)
    if redis_target:
        found["redis"] = redis_keys.server_info(redis_target)
    if config_dir is not None:  # walked first: what cannot be archived is refused before any dump
        skipped, hardlinked = config_tree.plan_archive(config_dir)
        found["config"] = {"skipped": skipped, "hardlinks": {"stored_as": config_tree.HARDLINKS_STORED_AS,
                                                              "paths": hardlinked}}
    return found


def _private_backup_dir(backup_dir, progress):
    """The backup directory, created 0700, or an existing one that others could enter tightened (said)."""
    tightened = None if make_private_dir(backup_dir) else tighten_private_dir(backup_dir)
    if tightened:
        progress(tightened)
    return tightened


def _check_arguments(anything, backup_dir, jobs, retention_days, db_lock_timeout):
    if not anything:
        raise RecoveryError("nothing to back up: every component is skipped")
    if not os.path.isabs(backup_dir):
        raise RecoveryError("backup_dir %s must be an absolute path" % backup_dir)
    if jobs < 1:
        raise RecoveryError("jobs must be at least 1, got %s" % jobs)
    if retention_days < 0:  # refused now, not by retention after the set is written
        raise RecoveryError("retention_days must be 0 or more, got %s" % retention_days)
    if db_lock_timeout < 1:
        raise RecoveryError("db_lock_timeout must be at least 1 second, got %s" % db_lock_timeout)


def make_backup_set(backup_dir, db=None, redis_target=None, config_dir=None, jobs=2,
                    compress_level=postgres.DEFAULT_COMPRESS_LEVEL,
                    retention_days=30, lock_wait=0, verify=True, check_mode=False, progress=print,
                    db_lock_timeout=postgres.DEFAULT_LOCK_TIMEOUT, clock_skew_seconds=CLOCK_SKEW_SECONDS,
                    signing_key_file=None, physical=None):
    """Back up the enabled components as one set signed with the key of ``signing_key_file`` (made by the first
    backup), read it back deeply (``verify``), and only then prune expired sets; returns a report. A set that fails
    its read-back is removed like any failed backup. ``physical`` is the physical backup continuous protection took
    just before, recorded as the manifest's ``db.physical``."""
    _check_arguments(db or redis_target or config_dir, backup_dir, jobs, retention_days, db_lock_timeout)
    if physical:  # refused before any dump, as the finished manifest's check would refuse it
        check_physical(physical, "physical_backup")
    signer = _signer(signing_key_file, check_mode)
    sources = _preflight(db, redis_target, config_dir)
    components = [name for name, on in (("db", db), ("redis", redis_target), ("config", config_dir)) if on]
    if check_mode:
        expired = expired_set_ids(backup_dir, retention_days, skew=clock_skew_seconds) \
            if os.path.isdir(backup_dir) else []
        return {"changed": True, "components": components, "would_prune": expired, "sources": _public(sources),
                "warnings": config_tree.skipped_warnings(sources.get("config"))}
    tightened = _private_backup_dir(backup_dir, progress)
    timings = {}
    with DirectoryLock(backup_dir, lock_wait) as lock:
        cleaned = remove_incomplete_leftovers(backup_dir)
        set_id = _new_set_id(backup_dir)
        started = time.time()
        partial = os.path.join(backup_dir, partial_dir_name(set_id))
        final = os.path.join(backup_dir, set_dir_name(set_id))
        os.mkdir(partial, 0o700)
        manifest_path = os.path.join(backup_dir, manifest_name(set_id))
        verification = None
        try:
            sections, hashed = _dump_components(partial, db, redis_target, config_dir, jobs, compress_level, timings,
                                                progress, db_lock_timeout)
            progress("checksumming set %s" % set_id)
            begin = time.monotonic()
            make_tree_private(partial)
            artifacts = _artifact_list(partial, set_id, hashed, jobs)
            timings["checksums"] = round(time.monotonic() - begin, 3)
            os.rename(partial, final)
            fsync_dir(backup_dir)
            manifest = {
                "format": FORMAT, "format_version": FORMAT_VERSION, "set_id": set_id,
                "started_at": utc_stamp(when=started), "finished_at": utc_stamp(), "host": socket.getfqdn(),
                "components": components, "artifacts": artifacts,
                "tools": {"christmas.recovery": COLLECTION_VERSION, "python": sys.version.split()[0],
                          "platform": platform.platform()},
            }
            manifest.update(sections)
            if physical and "db" in manifest:
                manifest["db"]["physical"] = physical
            write_json_atomic(manifest_path, seal(signer.sign(manifest)))
            if verify:
                progress("reading set %s back" % set_id)
                begin = time.monotonic()
                verification = _read_back(manifest_path, jobs, db, signing.Trust(signer.path))
                timings["verify"] = round(time.monotonic() - begin, 3)
        except OSError as err:
            _discard(manifest_path, partial, final)
            raise RecoveryError("backup into %s failed, nothing kept: %s%s" % (
                backup_dir, err.strerror, " (%s)" % err.filename if err.filename else "")) from None
        except BaseException:
            _discard(manifest_path, partial, final)
            raise
        pruned = prune_expired_sets(backup_dir, retention_days, keep=set_id, skew=clock_skew_seconds)
    return {
        "changed": True, "set_id": set_id, "manifest": os.path.join(backup_dir, manifest_name(set_id)),
        "set_dir": final, "components": components, "artifact_count": len(artifacts),
        "total_bytes": sum(a["size"] for a in artifacts), "timings": timings, "pruned": pruned,
        "cleaned_incomplete": cleaned, "stale_lock_taken_over": lock.stale_holder, "tightened": tightened,
        "ignored_manifests": ignored_manifests(backup_dir, skew=clock_skew_seconds),
        "verification": verification, "signing": signer.report(),
        "row_counts": sections.get("db", {}).get("row_counts"),
        "redis_keys": sections.get("redis", {}).get("keys_per_db_at_start"),
        "config": {key: sections["config"][key] for key in ("skipped", "hardlinks")} if "config" in sections else None,
        "warnings": config_tree.skipped_warnings(sections.get("config")),
    }


def _signer(signing_key_file, check_mode):
    """The signing key, loaded or made before anything is written; the dry run only checks an existing one."""
    signer = signing.Signer(signing_key_file)
    if check_mode:
        signing.load_private_key(signer.path)
    else:
        signer.key()
    return signer


def _dump_components(set_dir, db, redis_target, config_dir, jobs, compress_level, timings, progress, lock_timeout):
    """Each enabled component into ``set_dir``; returns (manifest sections, {file: (size, sha256)} hashed so far)."""
    sections, hashed = {}, {}
    for name, run in (  # the config first: cheap, and a tree that cannot be archived wastes no dump
        ("config", config_dir and (lambda: config_tree.archive_tree(config_dir, set_dir, progress))),
        ("db", db and (lambda: postgres.dump_database(db, set_dir, jobs, compress_level, progress,
                                                              lock_timeout))),
        ("redis", redis_target and (lambda: redis_keys.dump_redis(redis_target, set_dir, progress))),
    ):
        if run:
            begin = time.monotonic()
            sections[name], files = run()
            hashed.update(files)
            timings[name] = round(time.monotonic() - begin, 3)
    return sections, hashed


def _read_back(manifest_path, jobs, db, trust):
    """Deep verification of the set just written, as ``manifest_verify`` does it."""
    try:
        report, _manifest = verify_set(manifest_path, deep=True, jobs=jobs, pg_target=db, trust=trust)
    except RecoveryError as err:
        raise RecoveryError("the new set failed its read-back and was removed: %s" % err) from None
    return {key: report[key] for key in ("ok", "deep", "artifact_count", "total_bytes")}


def _discard(manifest_path, partial, final):
    """The manifest goes first, so the set is never visible as complete without its files."""
    remove_quietly(manifest_path)
    remove_quietly(partial)
    remove_quietly(final)


def _public(sources):
    return {name: {k: v for k, v in facts.items() if k != "keys_per_db"} for name, facts in sources.items()}

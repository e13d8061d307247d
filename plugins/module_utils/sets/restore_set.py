# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Restore any subset of a backup set: deep verification, then every component's preflight, then the changes."""

from __future__ import annotations

import contextlib
import os
import time

from ansible_collections.christmas.recovery.plugins.module_utils.config import config_restore
from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.core.locking import DirectoryLock
from ansible_collections.christmas.recovery.plugins.module_utils.db import restore
from ansible_collections.christmas.recovery.plugins.module_utils.redis import redis_restore
from ansible_collections.christmas.recovery.plugins.module_utils.sets.encryption import is_encrypted
from ansible_collections.christmas.recovery.plugins.module_utils.sets.manifest import (
    CLOCK_SKEW_SECONDS,
    artifact_path,
    artifacts_of,
    load,
    resolve_manifest_path,
)
from ansible_collections.christmas.recovery.plugins.module_utils.sets.restore_journal import RestoreJournal
from ansible_collections.christmas.recovery.plugins.module_utils.sets.verify import verify_set

ORDER = ("db", "redis", "config")


def _runner(component, manifest, set_root, db, redis_target, config_dir, jobs, force, progress, config_options):
    if component == "db":
        dump_dir = os.path.dirname(artifact_path(set_root, artifacts_of(manifest, "db", "pg_dump_directory")[0]))
        globals_path = artifact_path(set_root, artifacts_of(manifest, "db", "pg_globals")[0])
        return lambda check: restore.restore_database(db, manifest, set_root, dump_dir, globals_path, jobs, force,
                                                       check, progress)
    if component == "redis":
        path = artifact_path(set_root, artifacts_of(manifest, "redis")[0])
        memo = {}  # the plan's scan and comparison serve the restore
        return lambda check: redis_restore.restore_redis(redis_target, manifest, path, force, check, progress, memo)
    path = artifact_path(set_root, artifacts_of(manifest, "config")[0])
    # The directory the operator configured, never the one the manifest names: a manifest chooses no target.
    return lambda check: config_restore.restore_tree(path, manifest["config"], config_dir, manifest["set_id"], check,
                                                     force, progress, **config_options)


def _refuse_encrypted(manifest):
    """Restores read plaintext sets only: fetching a set back decrypts it, so the restore itself needs no key."""
    if is_encrypted(manifest):
        raise RecoveryError("set %s is encrypted: bring it back with fetch_backup.yml and its key, which decrypts it"
                            % manifest["set_id"])


def verify_for_restore(manifest_ref, backup_dir=None, jobs=2, pg_target=None, trust=None, progress=print):
    """The deep verification every restore starts with; returns (report, manifest) as ``verify_set`` does. An
    unsigned set accepted by ``trust`` is said loudly in ``progress`` and in the report's ``signature``."""
    path = resolve_manifest_path(manifest_ref, backup_dir)
    _refuse_encrypted(load(path))
    report, manifest = verify_set(path, deep=True, jobs=jobs, pg_target=pg_target, trust=trust)
    if report["signature"].get("warning"):
        progress(report["signature"]["warning"])
    return report, manifest


def reading_sets(manifest_ref, backup_dir=None, lock_wait=0):
    """The shared lock on the directory of the set ``manifest_ref`` names, held while it is read: retention and
    backups (exclusive) wait for it, other readers do not."""
    path = resolve_manifest_path(manifest_ref, backup_dir)
    directory = backup_dir if manifest_ref in (None, "", "latest") else os.path.dirname(path)
    if not os.path.isdir(directory):
        return contextlib.nullcontext()  # verification names what is missing
    return DirectoryLock(directory, lock_wait, shared=True)


def restore_set(manifest_ref, backup_dir=None, components=ORDER, db=None, redis_target=None, config_dir=None,
                jobs=2, force=False, check_mode=False, progress=print, verified=None, keep_journal=True,
                config_keep_special_modes=False, config_keep_owners=False, lock_wait=0,
                clock_skew_seconds=CLOCK_SKEW_SECONDS, trust=None):
    """Nothing changes unless the whole set verifies and every chosen component passes its preflight.

    The config tree's set-ID, sticky and world-write bits are removed and its owners become the destination's unless
    ``config_keep_special_modes`` and ``config_keep_owners`` (config_restore.restore_tree).
    ``verified`` is the (report, manifest) of a ``verify_for_restore`` the caller has just run; ``keep_journal=False``
    leaves no restore journal beside the set (a restore into scratch servers is no restore of the platform).
    The set's directory is locked shared from before ``latest`` is resolved until the restore ends.
    """
    if not components:
        raise RecoveryError("nothing to restore: every component is skipped")
    with reading_sets(manifest_ref, backup_dir, lock_wait):
        if manifest_ref in (None, "", "latest"):  # the newest set by its recorded time, none from the future
            manifest_ref = resolve_manifest_path(manifest_ref, backup_dir, clock_skew_seconds)
        return _restore_set(manifest_ref, backup_dir, components, db, redis_target, config_dir, jobs, force,
                            check_mode, progress, verified, keep_journal,
                            {"keep_special_modes": config_keep_special_modes, "keep_owners": config_keep_owners}, trust)


def _restore_set(manifest_ref, backup_dir, components, db, redis_target, config_dir, jobs, force, check_mode,
                 progress, verified, keep_journal, config_options, trust):
    started = time.monotonic()
    if verified is None:
        progress("verifying backup set")
        verified = verify_for_restore(manifest_ref, backup_dir, jobs, db, trust, progress)
    report, manifest = verified
    missing = [c for c in components if c not in manifest["components"]]
    if missing:
        raise RecoveryError("backup set %s has no %s component (it holds %s)" % (
            manifest["set_id"], ", ".join(missing), ", ".join(manifest["components"])))
    if "config" in components and not config_dir:
        raise RecoveryError("restoring config needs config_dir, the directory to replace (the set's own source_dir "
                            "is never used as a target)")
    chosen = [c for c in ORDER if c in components]
    journal = None if check_mode else RestoreJournal(report["backup_dir"], manifest["set_id"], on_disk=keep_journal)

    def progress_of(component):
        def record(message):
            if journal:
                journal.record(component, message)
            progress(message)
        return record

    runners = {c: _runner(c, manifest, report["backup_dir"], db, redis_target, config_dir, jobs, force,
                          progress_of(c), config_options) for c in chosen}
    plan = {c: runners[c](True) for c in chosen}
    result = {"manifest": report["manifest"], "set_id": manifest["set_id"], "verification": report,
              "unsigned_allowed": report["signature"]["unsigned_allowed"],
              "components": {}, "changed": any(p["changed"] for p in plan.values())}
    if check_mode:
        result["components"] = plan
        return result
    result["journal"] = journal.path
    if journal.interrupted:
        result["previous_attempt"] = journal.previous["components"]
        progress("an earlier restore of set %s stopped unfinished (%s); restoring again" % (
            manifest["set_id"], journal.previous_states()))
    for component in chosen:
        if not plan[component]["changed"]:
            result["components"][component] = plan[component]
            journal.record(component, plan[component]["state"])
            continue
        begin = time.monotonic()
        try:
            outcome = runners[component](False)
        except RecoveryError as err:
            journal.record(component, "failed: %s" % err)
            states = ["%s: %s" % (c, result["components"][c]["state"]) for c in result["components"]]
            states += ["%s: not started" % c for c in chosen[chosen.index(component) + 1:]]
            message = "restore of %s failed: %s%s" % (component, err, (" | " + "; ".join(states)) if states else "")
            journal.finish(message)
            raise RecoveryError(message, report=result) from None
        outcome["seconds"] = round(time.monotonic() - begin, 3)
        result["components"][component] = outcome
        journal.record(component, outcome["state"])
    journal.finish("restored")
    result["seconds"] = round(time.monotonic() - started, 3)
    return result

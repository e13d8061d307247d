# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A restore of the platform to one second: the target checked against every chosen component's window and every
file it needs verified before anything changes; then the database (pgBackRest, promoted at the target), Redis (its
AOF cut at the target, loaded into a scratch server, the target replaced from it online) and the config tree (the
newest version at or before the target), in the runbook's order."""

from __future__ import annotations

import datetime
import os
import shutil
import tempfile
import time

from ansible_collections.christmas.recovery.plugins.module_utils.config import config_restore, config_versions
from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.db.db_globals import (
    MARKER_QUERY,
    MARKER_SETTING,
    marker_value,
)
from ansible_collections.christmas.recovery.plugins.module_utils.redis import (
    redis_aof_index,
    redis_aof_restore,
    redis_restore,
)
from ansible_collections.christmas.recovery.plugins.module_utils.sets.manifest import PITR_PREFIX
from ansible_collections.christmas.recovery.plugins.module_utils.sets.protection import _stamp, component_windows
from ansible_collections.christmas.recovery.plugins.module_utils.wal import pitr
from ansible_collections.christmas.recovery.plugins.module_utils.wal.archiving import sql_literal

ORDER = ("db", "redis", "config")
FUTURE_SLACK = 1  # seconds: a target of "now" typed by an operator is not refused as future


def parse_target_time(text, default_offset, now=None):
    """(Unix seconds, note) of ``text``: ISO 8601 with an offset, one without read at ``default_offset`` (the
    control node's, "+0900"), or ``latest`` (None). Unparsable text is refused in one line."""
    text = (text or "").strip()
    if text == "latest":
        return None, "the newest archived point"
    try:
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise RecoveryError("target_time %r is not an ISO 8601 time such as 2026-12-06T16:00:05+09:00, nor latest"
                            % text) from None
    note = ""
    if when.tzinfo is None:
        try:
            zone = datetime.datetime.strptime(default_offset or "+0000", "%z").tzinfo
        except ValueError:
            raise RecoveryError("the control node's UTC offset %r is malformed" % default_offset) from None
        when = when.replace(tzinfo=zone)
        note = "target_time %s has no offset: read in the control node's zone (UTC%s)" % (text, default_offset)
    return when.timestamp(), note


def check_target(target, found, components, now, problems=None):
    """The one second every chosen component restores, or a one-line refusal naming the recoverable window."""
    missing = [name for name in components if name not in found]
    if missing:
        raise RecoveryError("no recovery window for %s" % "; ".join("%s (%s)" % (
            name, (problems or {}).get(name) or "nothing archived yet: run backup.yml, then archive.yml")
            for name in missing))
    start = max(found[name]["start"] for name in components)
    end = min(found[name]["end"] for name in components)
    window = "the recoverable window is %s to %s" % (_stamp(start), _stamp(end)) if start <= end else \
        "the components' windows do not overlap (%s)" % "; ".join(
            "%s %s to %s" % (name, _stamp(found[name]["start"]), _stamp(found[name]["end"])) for name in components)
    if start > end:
        raise RecoveryError("cannot restore to one point: %s" % window)
    if target is None:
        return end
    if target > now + FUTURE_SLACK:
        raise RecoveryError("target_time %s is in the future (now %s); %s" % (_stamp(target), _stamp(now), window))
    if target < start:
        raise RecoveryError("target_time %s is before the oldest recoverable point; %s" % (_stamp(target), window))
    if target > end:
        raise RecoveryError("target_time %s is past the newest archived point; %s (archive.yml ships now)"
                            % (_stamp(target), window))
    return target


def verify_plan(protection, components, target):
    """Every file the restore to ``target`` needs, checked before anything changes; returns what each will use."""
    plan = {}
    if "db" in components:
        repository = protection.repository()
        repository.verify()
        backup = _backup_for(repository, target)
        plan["db"] = {"backup": backup["label"], "wal_from": backup["archive_start"], "stanza": repository.stanza,
                      "repo": repository.path,
                      "uses": "backup %s and the WAL from %s on" % (backup["label"], backup["archive_start"])}
    if "redis" in components:
        redis_aof_index.verify_repository(protection.redis_repo, start=int(target), end=int(target))
        index = redis_aof_index.load_index(protection.redis_repo)
        generation = redis_aof_index.generation_for(index, int(target), protection.redis_repo)
        files = list(redis_aof_index.generation_files(generation))
        plan["redis"] = {"generation": generation["id"], "files": files,
                         "uses": "AOF generation %s (%d files)" % (generation["id"], len(files))}
    if "config" in components:
        version_id, taken = config_versions.version_at(protection.config_repo, target)
        config_versions.verify_version(protection.config_repo, version_id)
        plan["config"] = {"version": version_id, "taken_at": _stamp(taken),
                          "uses": "config version %s of %s" % (version_id, _stamp(taken))}
    return plan


def _backup_for(repository, target):
    """The newest physical backup that ended at or before ``target``: the one pgBackRest restores from."""
    usable = [b for b in repository.info()["backups"] if not b["error"] and b["stop_epoch"] <= target]
    if not usable:
        raise RecoveryError("no physical backup of stanza %s ended at or before %s" % (repository.stanza,
                                                                                       _stamp(target)))
    return usable[-1]


def restore_to(protection, target_text, default_offset, components, db=None, redis_target=None, config_dir=None,
               check_mode=False, progress=print, config_options=None, scratch_dir=None, now=None):
    """Restore ``components`` to the second ``target_text`` names; check mode says which physical backup, WAL
    range, AOF files and config version it would use and changes nothing."""
    started = time.monotonic()
    chosen = [name for name in ORDER if name in components]
    if not chosen:
        raise RecoveryError("nothing to restore: every component is skipped")
    if "config" in chosen and not config_dir:
        raise RecoveryError("restoring config needs config_dir, the directory to replace")
    now = time.time() if now is None else now
    target, note = parse_target_time(target_text, default_offset, now)
    if note:
        progress(note)
    # A database restored to this very second before is there already, though its new timeline (which the window
    # follows) may hold no commit after that second yet: it is not checked against the window again.
    asked = target
    reached = _db_reached(protection, db, chosen, asked) if asked is not None else None
    checked = [name for name in chosen if not (name == "db" and reached is not None)]
    problems = {}
    found = component_windows(protection, checked, problems) if checked else {}
    target = check_target(target, found, checked, now, problems) if checked else target
    if asked is None:  # latest: the second is known only now
        reached = _db_reached(protection, db, chosen, target)
    progress("restoring %s to %s" % (", ".join(chosen), _stamp(target)))
    plan = verify_plan(protection, checked, target)
    if "db" not in checked and "db" in chosen:
        plan["db"] = {"uses": "the database restored to this second before"}
    label = _label(target)
    result = {"set_id": label, "manifest": "", "target_time": _stamp(target), "target_epoch": target,
              "plan": plan, "changed": True, "components": {}, "window": {
                  name: {"start": _stamp(w["start"]), "end": _stamp(w["end"])} for name, w in found.items()}}
    scratch = tempfile.mkdtemp(prefix="christmas-pitr-", dir=scratch_dir)
    try:
        for name in chosen:
            begin = time.monotonic()
            try:
                outcome = _restore_component(name, protection, target, db, redis_target, config_dir, scratch, label,
                                             progress, config_options or {}, check_mode, reached)
            except RecoveryError as err:
                if check_mode:
                    raise
                states = ["%s: %s" % (c, result["components"][c]["state"]) for c in result["components"]]
                states += ["%s: not started" % c for c in chosen[chosen.index(name) + 1:]]
                raise RecoveryError("restore of %s to %s failed: %s%s" % (
                    name, _stamp(target), err, (" | " + "; ".join(states)) if states else ""), report=result) from None
            if check_mode and outcome["changed"]:
                outcome["state"] = "would restore to %s from %s" % (_stamp(target), plan[name]["uses"])
            outcome.update(plan[name], seconds=round(time.monotonic() - begin, 3))
            result["components"][name] = outcome
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result["changed"] = any(outcome["changed"] for outcome in result["components"].values())
    result["seconds"] = round(time.monotonic() - started, 3)
    return result


def _restore_component(name, protection, target, db, redis_target, config_dir, scratch, label, progress, options,
                       check_mode, reached):
    """One component restored to ``target`` (check mode: whether it would change). A component already there is
    left alone: the database restored to this second whose timeline is still the one that restore began (``reached``,
    that timeline, from _db_reached), Redis holding exactly the keyspace of that second, the config tree identical to
    that version."""
    if name == "db":
        server = protection.server
        if reached is not None:
            return {"changed": False, "state": "already restored to %s (timeline %d)" % (_stamp(target), reached)}
        if check_mode:
            return {"changed": True}
        done = pitr.restore(protection.repository(), server, _utc(target), timeout=server.timeout,
                            window=protection.db_window())
        server.query("ALTER DATABASE %s SET %s TO '%s@%d'" % (_identifier(db.dbname), MARKER_SETTING, label,
                                                              done["timeline"]))
        return dict(done, changed=True, state="restored to %s (timeline %s)" % (_stamp(target), done["timeline"]))
    if name == "redis":
        facts = redis_aof_restore.rdb_at(protection.redis_repo, int(target), scratch, progress)
        done = redis_restore.restore_redis(redis_target, {"set_id": label, "redis": facts["redis"]}, facts["path"],
                                           check_mode=check_mode, progress=progress)
        if done["changed"]:
            done["state"] = "restored to %s" % _stamp(target)
        return done
    version_id, _taken = config_versions.version_at(protection.config_repo, target)
    archive, metadata = config_versions.materialize(protection.config_repo, version_id,
                                                    os.path.join(scratch, "config"))
    done = config_restore.restore_tree(archive, metadata, config_dir, label, check_mode, False, progress, **options)
    if done["changed"]:
        done["state"] = "restored to %s (version %s)" % (_stamp(target), version_id)
    return done


def _label(target):
    return PITR_PREFIX + time.strftime("%Y%m%d_%H%M%S", time.gmtime(target))


def _identifier(name):
    return '"%s"' % name.replace('"', '""')


def _db_reached(protection, db, chosen, target):
    """restored_timeline of the database for the second ``target``, when the database is to be restored."""
    if "db" not in chosen or protection.server is None or db is None:
        return None
    return restored_timeline(protection.server, db.dbname, _label(target))


def restored_timeline(server, dbname, label):
    """The timeline a restore to the second ``label`` names began, when database ``dbname`` still carries that
    restore's marker (``label@TIMELINE``) and the server is still on that timeline; None otherwise (also when the
    server cannot be asked: then it must be restored)."""
    try:
        if not server.is_running():
            return None
        marked = marker_value(server.query(MARKER_QUERY % (sql_literal(dbname), sql_literal(MARKER_SETTING + "=%"))))
        timeline = int(server.query("SELECT pg_walfile_name(pg_current_wal_lsn())")[0][0][:8], 16)
    except (RecoveryError, ValueError, IndexError):
        return None
    return timeline if marked == "%s@%d" % (label, timeline) else None


def _utc(epoch):
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC)

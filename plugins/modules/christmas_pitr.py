#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: christmas_pitr
short_description: Continuous protection of the Christmas platform, restorable to any second of its window
description:
  - I(action=backup) (what M(christmas.recovery.christmas_backup) is preceded by in backup.yml) sets WAL archiving
    up with ALTER SYSTEM (C(wal_level), C(archive_mode), C(archive_command) into pgBackRest, C(archive_timeout)),
    restarting the database server once when C(archive_mode) or C(wal_level) change; refuses an C(archive_command)
    of another tool unless I(take_over); creates the pgBackRest stanza, runs C(pgbackrest check) and takes a
    physical backup (full when the newest full one is I(full_days) old, else I(between)), returned as C(physical)
    for the set's manifest. It turns Redis's AOF with timestamps on (C(CONFIG SET), persisted with C(CONFIG
    REWRITE)) and ships it, and stores a version of the config tree. A database server the collection cannot stop
    and start is no failure; C(off_reason) says why its continuous protection is off.
  - I(action=ship) (archive.yml) makes everything so far restorable; a commit of its own (C(pg_logical_emit_message),
    no table touched, so an idle database too has a commit after every second), a WAL switch and the wait until that
    segment is archived; Redis's new AOF in whole commands; a new version of the config tree when it changed.
  - I(action=info) reports the recovery window of each component, and verifies the repositories with I(verify)
    (pgBackRest's C(verify) report is read, since it exits 0 on corrupt files).
  - I(action=rehearse) (rehearse.yml) rehearses a restore to a random second of the window (or I(target_time)) in
    I(scratch_dir) on this host, never touching the platform's servers; the database restored by pgBackRest into
    a scratch data directory (tablespaces mapped into it), started on I(scratch_db_port) with only a unix socket in
    the scratch directory, its own C(pg_hba.conf) and no archiving (it never writes into the repository), promoted
    at the target, checked to have stopped there, and every table of I(db_name) read through; Redis's AOF cut at
    the target and loaded into a scratch C(redis-server); the config version of the target restored into a scratch
    directory. Everything it needs is verified first. The result goes to C(PITR_DIR/rehearsals.json) (the last 20);
    a failed rehearsal is recorded, then fails with C(rehearsal of a restore to T failed; REASON). The scratch
    directory (owned by I(pg_os_user), locked while in use, also left by a killed run) is removed at the end.
    With continuous protection off it says why and does nothing.
  - Expired AOF files and config versions are pruned after I(retention_days), never leaving a hole; pgBackRest
    expires its backups and WAL by the same number of days. While the newest proven set (its last rehearsal
    passed) is older, the history is kept back to it.
version_added: 0.2.0
author: Christmas platform operations
extends_documentation_fragment:
  - christmas.recovery.connection
  - christmas.recovery.pitr
  - christmas.recovery.s3.optional
  - christmas.recovery.vault.encryption
options:
  action:
    description: What to do; see the description.
    type: str
    choices: [backup, ship, info, rehearse]
    required: true
  backup_dir:
    description: The backup directory; it is made traversable (mode 0710) for I(pg_os_user)'s group.
    type: path
    required: true
  full_days:
    description: A full physical backup when the newest full one is this many days old (or there is none).
    type: int
    default: 7
  between:
    description: The physical backup taken otherwise.
    type: str
    choices: [diff, incr]
    default: diff
  archive_timeout:
    description: The server's C(archive_timeout) (seconds); also how long I(action=ship) waits for its segment.
    type: int
    default: 60
  take_over:
    description: Replace an C(archive_command) that archives elsewhere (that tool then no longer gets the WAL).
    type: bool
    default: false
  retention_days:
    description: Days of history kept (more while the newest proven set is older).
    type: int
    default: 30
  verify:
    description: With I(action=info), verify every repository (pgBackRest's files, the AOF files, the config objects).
    type: bool
    default: false
  scratch_dir:
    description: With I(action=rehearse), the rehearsal's own directory, made for the run and removed after it.
    type: path
    default: /var/tmp/christmas-rehearsal
  scratch_db_port:
    description: With I(action=rehearse), the scratch database's port (its unix socket only); 0 takes a free one.
    type: int
    default: 0
  production_ports:
    description: With I(action=rehearse), ports a free scratch port is never one of.
    type: list
    elements: int
    default: []
  target_time:
    description: With I(action=rehearse), the second (Unix time) to rehearse instead of a random one.
    type: int
attributes:
  check_mode:
    support: full
    details: Says what archiving would change, and what a rehearsal would restore; writes, restarts and ships nothing.
  diff_mode:
    support: none
"""

EXAMPLES = r"""
- name: Archive now
  christmas.recovery.christmas_pitr:
    action: ship
    backup_dir: /var/backups/christmas
    pitr_repo: /var/backups/christmas/pgbackrest
    pitr_dir: /var/backups/christmas/pitr
    pg_data_dir: /var/lib/postgresql/15/main
    config_dir: /srv/christmas/config
    db_admin_user: postgres
    db_admin_password: "{{ christmas_db_admin_password }}"
"""

RETURN = r"""
physical:
  description: The physical backup I(action=backup) took (pgBackRest label, type, WAL range, times, repository).
  returned: action=backup with the database protected
  type: dict
off_reason:
  description: Why continuous protection of the database is off here (empty when it is on).
  returned: action=backup
  type: str
window:
  description:
    - The recovery window; C(enabled), C(reason), C(components) (C(start) and C(end) in Unix seconds per component),
      C(start) and C(end) (the span every component covers) and C(text).
  returned: always, but with action=rehearse only when continuous protection is off
  type: dict
rehearsal:
  description:
    - What I(action=rehearse) did; C(target_time), C(components), C(plan) (what each component used), C(checks)
      (C(name), C(ok), C(detail)), C(timings) (seconds per phase), C(passed), C(record) (the file it went to).
  returned: action=rehearse with continuous protection on
  type: dict
summary:
  description: One line for the output.
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.christmas.recovery.plugins.module_utils.core.module_runner import run
from ansible_collections.christmas.recovery.plugins.module_utils.platform.arguments import (
    ENCRYPTION_EXCLUSIVE,
    PITR_REQUIRED_BY,
    PITR_REQUIRED_IF,
    connection_argument_spec,
    enabled_components,
    pg_target,
    pitr_argument_spec,
    protection,
    redis_target,
    require_libraries,
)
from ansible_collections.christmas.recovery.plugins.module_utils.platform.protection_rehearsal import rehearse_to
from ansible_collections.christmas.recovery.plugins.module_utils.platform.rehearsal import (
    DEFAULT_SCRATCH_DIR,
    check_ports,
)
from ansible_collections.christmas.recovery.plugins.module_utils.platform.scratch import ScratchDir, check_reachable
from ansible_collections.christmas.recovery.plugins.module_utils.sets import protection as continuous
from ansible_collections.christmas.recovery.plugins.module_utils.wal.pg_server import os_user_entry


def _work(params, check_mode, progress):
    components = enabled_components(params)
    guard = protection(params)
    db = pg_target(params) if "db" in components else None
    redis = redis_target(params) if "redis" in components else None
    config = params["config_dir"] if "config" in components else None
    if params["action"] == "backup":
        result = continuous.protect(guard, db, redis, config, params["full_days"], params["between"],
                                    params["archive_timeout"], params["take_over"], check_mode, progress)
        result["summary"] = "continuous protection: %s" % result["window"]["text"]
    elif params["action"] == "ship":
        if check_mode:
            return {"changed": True, "window": continuous.windows(guard, db, redis, config),
                    "summary": "would ship %s" % ", ".join(components)}
        result = continuous.ship(guard, db, redis, config, params["archive_timeout"], progress)
        result["summary"] = "shipped %s; window: %s" % (", ".join(sorted(result["components"])),
                                                        result["window"]["text"])
    elif params["action"] == "rehearse":
        result = _rehearse(params, guard, components, check_mode, progress)
    else:
        result = {"changed": False, "window": continuous.windows(guard, db, redis, config)}
        if params["verify"]:
            result["verified"] = continuous.verify(guard, db, redis, config)
        result["summary"] = "recovery window: %s" % result["window"]["text"]
    return result


def _rehearse(params, guard, components, check_mode, progress):
    reason = guard.db_off_reason()
    if reason:
        return {"changed": False, "off_reason": reason, "window": continuous.windows(guard, off_reason=reason),
                "summary": "continuous protection is off (%s): no restore to a second to rehearse" % reason}
    entry = os_user_entry(params["pg_os_user"])
    check_ports({"database": params["scratch_db_port"]}, set(params["production_ports"]))
    scratch = ScratchDir(params["scratch_dir"], entry.pw_uid, entry.pw_gid)
    check_reachable(scratch.path, entry.pw_uid, {entry.pw_gid})
    done = rehearse_to(guard, scratch, components, target=params["target_time"], db_name=params["db_name"],
                       db_port=params["scratch_db_port"], avoid=params["production_ports"],
                       timeout=params["service_timeout"], check_mode=check_mode, progress=progress)
    summary = ("would rehearse a restore of %s to %s" % (", ".join(done["components"]), done["target_time"])
               if check_mode else "restore of %s to %s rehearsed in %s s: %s" % (
                   ", ".join(done["components"]), done["target_time"], done["duration_seconds"],
                   ", ".join(check["name"] for check in done["checks"])))
    return {"changed": done["changed"], "rehearsal": done, "summary": summary}


def main():
    argument_spec = dict(connection_argument_spec(), **pitr_argument_spec())
    argument_spec.update(
        action={"type": "str", "choices": ["backup", "ship", "info", "rehearse"], "required": True},
        scratch_dir={"type": "path", "default": DEFAULT_SCRATCH_DIR},
        scratch_db_port={"type": "int", "default": 0},
        production_ports={"type": "list", "elements": "int", "default": []},
        target_time={"type": "int"},
        backup_dir={"type": "path", "required": True},
        full_days={"type": "int", "default": 7},
        between={"type": "str", "choices": ["diff", "incr"], "default": "diff"},
        archive_timeout={"type": "int", "default": 60},
        take_over={"type": "bool", "default": False},
        retention_days={"type": "int", "default": 30},
        verify={"type": "bool", "default": False},
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True,
                           required_if=[("skip_config", False, ("config_dir",))] + PITR_REQUIRED_IF,
                           required_by=PITR_REQUIRED_BY,
                           mutually_exclusive=ENCRYPTION_EXCLUSIVE)
    components = enabled_components(module.params)
    require_libraries(module, "db" in components, "redis" in components)
    run(module, lambda progress: _work(module.params, module.check_mode, progress))


if __name__ == "__main__":
    main()

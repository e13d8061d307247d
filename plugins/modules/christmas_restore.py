#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: christmas_restore
short_description: Restore the Christmas platform, wholly or in part, from a verified backup set
description:
  - Deep-verifies the whole set first, then runs every chosen component's preflight (target reachable, versions
    compatible, TimescaleDB preloaded at the set's version, rights, enough disk); only then changes anything.
  - Database; missing roles are created (with their password hashes when the backup has them), the dump is loaded with
    C(pg_restore --jobs --exit-on-error) into a scratch database (bracketed by C(timescaledb_pre_restore()) and
    C(timescaledb_post_restore()) when the backup has TimescaleDB, whose catalog is then loaded first by one job),
    its row counts (and TimescaleDB's hypertables, chunks, aggregates and jobs) are compared with the manifest,
    and only then is it swapped in for the existing database, which is dropped. TimescaleDB's background workers are
    stopped in the scratch database and started in the restored one.
  - Redis; the running server's keyspace is replaced over the network (FLUSHALL, RESTORE with TTLs) and made durable
    (the AOF rewritten; otherwise C(SAVE)). Its preflight, in check mode too, refuses before any change when the
    server cannot read the set's RDB format, when I(redis_user) may not run a command the restore sends or touch one
    of the set's keys (ACL), when C(maxmemory) or, for a server on this host, the disk of its C(dir) cannot hold the
    set, and, with I(redis_writers=refuse), while other clients are connected.
  - Config; the tree is extracted beside the destination, the current tree is moved aside to a safety copy
    C(CONFIG_DIR.pre-restore-YYYYMMDD_HHMMSS-SETID) (C(-2), C(-3)... when that name is taken, so an older copy is never
    replaced), and the new tree takes its place. A destination that is a mount point or on another file system than
    its parent is restored in place (its entries replaced inside it; the safety copy is then a copy); one that is not
    writable is refused in the preflight. Only files, directories and symlinks inside the tree are created.
  - Config modes; set-user-ID, set-group-ID, sticky and world-write bits are removed unless
    I(config_keep_special_modes=true); as root, every entry is owned by the destination directory's owner (its
    parent's when it does not exist yet) unless I(config_keep_owners=true). Check mode lists each mode it would
    change in C(components.config.changes_modes).
  - A component already identical to the set is left alone (C(changed=false)) unless I(force=true). For the
    database "identical" means it was restored from this set and its row counts still match.
  - Check mode is the runbook's dry run; verification and preflight, nothing changed.
  - With I(target_time), the platform is restored to that second from continuous protection's repositories instead
    of a set (see M(christmas.recovery.christmas_pitr)); the target is checked against every chosen component's
    window, and every file the restore needs (pgBackRest's backup and WAL, the AOF files, the config version) is
    verified first. The database is stopped, restored with C(pgbackrest restore --type=time --delta
    --target-action=promote), started and waited for until it has left recovery, and checked to have stopped at the
    target; Redis's AOF is cut at the target (C(redis-check-aof --truncate-to-timestamp); Redis counts whole
    seconds), loaded into a scratch C(redis-server), and the target's keyspace replaced from it as from a set; the
    config tree becomes the newest version at or before the target. Check mode names the physical backup, the AOF
    generation and the config version it would use.
version_added: 0.1.0
author: Christmas platform operations
extends_documentation_fragment:
  - christmas.recovery.pitr
  - christmas.recovery.s3.optional
  - christmas.recovery.vault.encryption
  - christmas.recovery.signing
  - christmas.recovery.signing.trust
  - christmas.recovery.connection
options:
  manifest:
    description:
      - Path of a C(manifest_YYYYMMDD_HHMMSS.json), or C(latest) for the newest complete set in I(backup_dir).
    type: str
    default: latest
  target_time:
    description:
      - Restore to this second instead of a set; ISO 8601 (C(2026-12-06T16:00:05+09:00)), or C(latest) for the
        newest archived point. A time without an offset is read at I(target_offset).
    type: str
  target_offset:
    description: The UTC offset (C(+0900)) of a I(target_time) given without one; the role passes the control node's.
    type: str
    default: "+0000"
  pitr_repo:
    description: The pgBackRest repository of continuous protection; required with I(target_time).
    type: path
  pitr_dir:
    description: Where Redis's AOF files and the config versions of continuous protection are; required with
      I(target_time).
    type: path
  backup_dir:
    description: Directory holding the backup sets; needed for C(latest).
    type: path
  force:
    description: Restore components even when they already match the set.
    type: bool
    default: false
  redis_writers:
    description:
      - What a Redis restore does about other clients connected to the server (the application's writers).
      - C(pause); the flush and every key's RESTORE run as one transaction (MULTI/EXEC) the server runs at once;
        other clients' commands wait while it runs and land after it, so no write mixes into the set's keyspace
        (writes made before it are replaced, as by any restore). The server holds the queued load in memory until
        it runs, which the C(maxmemory) check counts. A failure leaves nothing waiting and no transaction open.
      - C(refuse); the preflight refuses, naming the clients (address and name), while any other client is
        connected; the load is then streamed in pipelines.
    type: str
    choices: [pause, refuse]
    default: pause
  config_keep_special_modes:
    description:
      - Restore the config tree's set-user-ID, set-group-ID, sticky and world-write bits as recorded. By default they
        are removed from every restored file and directory.
    type: bool
    default: false
  config_keep_owners:
    description:
      - Restore the config tree's owners as recorded (as root). By default every entry is owned by the owner of the
        destination directory, or of its parent when it does not exist yet.
    type: bool
    default: false
  clock_skew_seconds:
    description:
      - With I(manifest=latest), the newest set by the start time its manifest records; a set dated more than this
        many seconds ahead of this host's clock is ignored (clock skew, or a planted file).
    type: int
    default: 300
  lock_wait:
    description:
      - Seconds to wait for a backup or prune running in the set's directory before failing. The restore holds the
        directory's lock shared (other restores, rehearsals and offsite copies go on) from before C(latest) is
        resolved until it ends, so retention never deletes the set it reads.
    type: int
    default: 0
attributes:
  check_mode:
    support: full
    details: Verification and preflight only; reports per component whether it would change.
  diff_mode:
    support: none
"""

EXAMPLES = r"""
- name: Dry run of a full restore from the newest set
  christmas.recovery.christmas_restore:
    backup_dir: /var/backups/christmas
    db_admin_user: postgres
    db_admin_password: "{{ christmas_db_admin_password }}"
  check_mode: true

- name: Restore only the database, onto another server
  christmas.recovery.christmas_restore:
    manifest: /var/backups/christmas/manifest_20261126_030000.json
    skip_redis: true
    skip_config: true
    db_host: db2.example.internal
    db_admin_user: postgres
    db_admin_password: "{{ christmas_db_admin_password }}"
"""

RETURN = r"""
manifest:
  description: Manifest restored from.
  returned: success
  type: str
set_id:
  description: Id of the set restored from.
  returned: success
  type: str
verification:
  description: The verification report of the set (see M(christmas.recovery.manifest_verify)).
  returned: success
  type: dict
components:
  description:
    - Per component, what was found and done; C(state) says where it stands, C(changed) whether it changed.
      The database adds C(preflight), C(roles_created) and C(roles_need_password); config adds C(safety_copy),
      C(placement) (C(rename) or C(in place)), C(owner) and C(changes_modes), a list of
      C({path, recorded, restored}) for each mode restored otherwise than recorded.
  returned: success
  type: dict
seconds:
  description: Time taken by the restore.
  returned: success, not in check mode
  type: float
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
    signing_argument_spec,
)
from ansible_collections.christmas.recovery.plugins.module_utils.sets.protection_restore import restore_to
from ansible_collections.christmas.recovery.plugins.module_utils.sets.restore_set import restore_set
from ansible_collections.christmas.recovery.plugins.module_utils.sets.signing import trust_from_params


def _restore_set(params, components, check_mode, progress):
    return restore_set(
        params["manifest"], params["backup_dir"], components, db=pg_target(params),
        redis_target=redis_target(params), config_dir=params["config_dir"], jobs=params["jobs"],
        force=params["force"], check_mode=check_mode, progress=progress,
        config_keep_special_modes=params["config_keep_special_modes"], config_keep_owners=params["config_keep_owners"],
        lock_wait=params["lock_wait"], clock_skew_seconds=params["clock_skew_seconds"],
        trust=trust_from_params(params),
    )


def _restore_to_time(params, components, check_mode, progress):
    return restore_to(
        protection(params), params["target_time"], params["target_offset"], components, db=pg_target(params),
        redis_target=redis_target(params), config_dir=params["config_dir"], check_mode=check_mode,
        progress=progress, config_options={"keep_special_modes": params["config_keep_special_modes"],
                                           "keep_owners": params["config_keep_owners"]})


def main():
    argument_spec = dict(connection_argument_spec(), **signing_argument_spec())
    argument_spec.update(
        manifest={"type": "str", "default": "latest"},
        backup_dir={"type": "path"},
        force={"type": "bool", "default": False},
        redis_writers={"type": "str", "default": "pause", "choices": ["pause", "refuse"]},
        config_keep_special_modes={"type": "bool", "default": False},
        config_keep_owners={"type": "bool", "default": False},
        lock_wait={"type": "int", "default": 0},
        clock_skew_seconds={"type": "int", "default": 300},
    )
    argument_spec.update(pitr_argument_spec(required=False), target_time={"type": "str"},
                         target_offset={"type": "str", "default": "+0000"})
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True,
                           required_by=dict(PITR_REQUIRED_BY, target_time=("pitr_repo", "pitr_dir", "backup_dir")),
                           mutually_exclusive=ENCRYPTION_EXCLUSIVE, required_if=PITR_REQUIRED_IF)
    params = module.params
    components = enabled_components(params)
    require_libraries(module, "db" in components, "redis" in components)
    work = _restore_to_time if params["target_time"] else _restore_set
    run(module, lambda progress: work(params, components, module.check_mode, progress))


if __name__ == "__main__":
    main()

#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: christmas_backup
short_description: Make one complete, checksummed backup set of the Christmas platform
description:
  - Backs up the enabled components (PostgreSQL/TimescaleDB database, Redis, config tree) into one backup set under
    I(backup_dir), described by C(manifest_YYYYMMDD_HHMMSS.json) (UTC), then deletes complete sets older than
    I(retention_days).
  - The database is dumped with C(pg_dump --format=directory --jobs) at one exported snapshot; row counts per table,
    versions, extensions, the WAL LSN and the roles the database needs are recorded in that same snapshot.
  - Redis is read over the network only (every key of every logical database, with its TTL).
  - Artifacts are written to a partial directory, made 0600/0700, checksummed and renamed; the manifest is written last,
    atomically and fsynced. A killed backup never leaves a manifest; the next backup removes what it left.
  - A lock allows one backup or prune per directory at a time; a lock left by a dead process is taken over.
version_added: 0.1.0
author: Christmas platform operations
extends_documentation_fragment:
  - christmas.recovery.signing
  - christmas.recovery.connection
options:
  backup_dir:
    description: Directory holding the backup sets. Created 0700 when missing.
    type: path
    required: true
  retention_days:
    description:
      - Complete sets older than this many days are deleted after a successful backup. The newest complete set is
        always kept, and no file that is not part of a set is touched.
    type: int
    default: 30
  compress_level:
    description:
      - C(pg_dump --compress) level, 0 (none) to 9; -1 keeps pg_dump's own default (gzip level 6).
      - Level 1 dumps about four times faster than 6 for about 10% more bytes.
    type: int
    default: 1
  clock_skew_seconds:
    description:
      - A set dated more than this many seconds ahead of this host's clock (by its name or by the start time its
        manifest records) is reported in C(ignored_manifests) and ignored by retention, which orders sets by the
        time their manifests record; such a set never counts as the newest and is never deleted.
    type: int
    default: 300
  lock_wait:
    description:
      - Seconds to wait for another backup or prune in the same directory, or for the restores, rehearsals,
        verifications and offsite copies reading its sets, before failing; retention never deletes a set being read.
    type: int
    default: 0
  db_lock_timeout:
    description:
      - Seconds the dump waits for a table another session holds locked C(ACCESS EXCLUSIVE) (C(pg_dump
        --lock-wait-timeout) and C(lock_timeout) of the backup's own session). The backup then fails naming the
        table and the session holding it (pid, user, application, state, since when), keeps no set and releases
        the backup directory's lock.
    type: int
    default: 60
  verify:
    description:
      - Read the new set back deeply, as M(christmas.recovery.manifest_verify) does with C(deep=true), before expired
        sets are pruned. A set that fails is removed and the task fails.
    type: bool
    default: true
  physical_backup:
    description:
      - The physical backup continuous protection took just before (C(physical) of M(christmas.recovery.christmas_pitr)
        C(action=backup)); its pgBackRest label, type, WAL range and times are recorded in the manifest
        (C(db.physical)), so one manifest describes the whole set. Checked like the rest of the manifest.
    type: dict
  db_node:
    description:
      - Name of the database node backed up, e.g. the inventory name of the current primary (or standby) of an HA
        pair; recorded in the manifest (C(db.node)) with the server's address and system identifier.
    type: str
attributes:
  check_mode:
    support: full
    details: Connects to every source and reports what would be pruned; writes nothing.
  diff_mode:
    support: none
"""

EXAMPLES = r"""
- name: Nightly backup of database, Redis and config
  christmas.recovery.christmas_backup:
    backup_dir: /var/backups/christmas
    config_dir: /srv/christmas/config
    db_host: localhost
    db_password: "{{ christmas_db_password }}"
    redis_password: "{{ christmas_redis_password }}"
    retention_days: 30
    jobs: 4

- name: Database only, with role password hashes
  christmas.recovery.christmas_backup:
    backup_dir: /var/backups/christmas
    skip_redis: true
    skip_config: true
    db_admin_user: postgres
    db_admin_password: "{{ christmas_db_admin_password }}"
"""

RETURN = r"""
set_id:
  description: Id of the new set (UTC time stamp).
  returned: success, not in check mode
  type: str
  sample: "20261126_030000"
manifest:
  description: Path of the new set's manifest.
  returned: success, not in check mode
  type: str
set_dir:
  description: Directory holding the new set's artifacts.
  returned: success, not in check mode
  type: str
components:
  description: Components in the set.
  returned: always
  type: list
  elements: str
artifact_count:
  description: Number of files in the set.
  returned: success, not in check mode
  type: int
total_bytes:
  description: Size of the set.
  returned: success, not in check mode
  type: int
timings:
  description: Seconds spent per component, on checksums and on the read-back.
  returned: success, not in check mode
  type: dict
verification:
  description: The read-back of the new set (V(null) with O(verify=false)).
  returned: success, not in check mode
  type: dict
  sample: {"ok": true, "deep": true, "artifact_count": 7, "total_bytes": 104857600}
row_counts:
  description: Rows per table at the dump's snapshot.
  returned: success with the database
  type: dict
redis_keys:
  description: Keys per Redis database when the snapshot was requested (the snapshot itself is point-in-time).
  returned: success with Redis
  type: dict
config:
  description:
    - What the config archive left out or changed; C(skipped) lists each FIFO, socket or device (C(path), C(type)),
      which is also a warning; C(hardlinks) says how hardlinked files are stored (C(stored_as=copies), each name a
      regular file of its own) and lists their names.
  returned: success with the config tree, not in check mode
  type: dict
  sample: {"skipped": [{"path": "run/app.sock", "type": "socket"}], "hardlinks": {"stored_as": "copies",
           "paths": ["a.yml", "b.yml"]}}
pruned:
  description: Ids of the sets deleted by retention.
  returned: success, not in check mode
  type: list
  elements: str
would_prune:
  description: Ids of the sets retention would delete.
  returned: check mode
  type: list
  elements: str
cleaned_incomplete:
  description: Leftovers of killed backups that were removed.
  returned: success, not in check mode
  type: list
  elements: str
stale_lock_taken_over:
  description: Holder recorded in a lock file left by a dead process, when one was taken over.
  returned: success, not in check mode
  type: str
steps:
  description: Progress messages with their time offsets.
  returned: always
  type: list
  elements: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.christmas.recovery.plugins.module_utils.core.module_runner import run
from ansible_collections.christmas.recovery.plugins.module_utils.db.postgres import DEFAULT_COMPRESS_LEVEL
from ansible_collections.christmas.recovery.plugins.module_utils.platform.arguments import (
    connection_argument_spec,
    enabled_components,
    pg_target,
    redis_target,
    require_libraries,
    signing_argument_spec,
)
from ansible_collections.christmas.recovery.plugins.module_utils.sets.backup_set import make_backup_set


def main():
    argument_spec = dict(connection_argument_spec(), **signing_argument_spec(trust=False))
    argument_spec.update(
        backup_dir={"type": "path", "required": True},
        db_node={"type": "str"},
        physical_backup={"type": "dict"},
        retention_days={"type": "int", "default": 30},
        compress_level={"type": "int", "default": DEFAULT_COMPRESS_LEVEL, "choices": list(range(-1, 10))},
        lock_wait={"type": "int", "default": 0},
        clock_skew_seconds={"type": "int", "default": 300},
        db_lock_timeout={"type": "int", "default": 60},
        verify={"type": "bool", "default": True},
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True,
                           required_if=[("skip_config", False, ("config_dir",))])
    params = module.params
    components = enabled_components(params)
    require_libraries(module, "db" in components, "redis" in components)
    run(module, lambda progress: make_backup_set(
        params["backup_dir"],
        db=pg_target(params) if "db" in components else None,
        redis_target=redis_target(params) if "redis" in components else None,
        config_dir=params["config_dir"] if "config" in components else None,
        jobs=params["jobs"], compress_level=params["compress_level"], retention_days=params["retention_days"],
        lock_wait=params["lock_wait"], clock_skew_seconds=params["clock_skew_seconds"], verify=params["verify"],
        check_mode=module.check_mode, progress=progress,
        db_lock_timeout=params["db_lock_timeout"],
        signing_key_file=params["signing_key_file"], physical=params["physical_backup"],
    ))


if __name__ == "__main__":
    main()

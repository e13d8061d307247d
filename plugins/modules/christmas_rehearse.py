#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: christmas_rehearse
short_description: Rehearse the restore of a backup set on throwaway servers and record whether it is proven
description:
  - Deep-verifies the set first (as M(christmas.recovery.manifest_verify) with I(deep=true)); a set that does not
    verify fails here, before any scratch directory or server exists.
  - Then, in I(scratch_dir) (created 0700, owned by I(scratch_user), locked while in use), starts a throwaway
    PostgreSQL cluster (initdb with the host's binaries of the set's major version, or the newest installed) and a
    Redis server, both listening on 127.0.0.1 only, on free ports (or I(scratch_db_port), I(scratch_redis_port)),
    never on I(production_ports). Their superuser and C(requirepass) password is random, made in the module and
    given to the servers through an in-memory file and stdin; it is in no command line, environment, file or result.
  - Restores the set into them and into a scratch config directory with the restore's own code (preflight included,
    so a missing extension such as the set's TimescaleDB version fails here with its name), then runs the checks a
    restore's validation runs (M(christmas.recovery.christmas_validate)); row counts per table, C(market_data) rows
    and newest time, Redis keys per database, the config tree's checksum, and I(queries) as I(db_user).
  - Stops the servers and removes I(scratch_dir) at the end, also when anything failed. The servers die with the
    module; a directory a killed run left is removed by the next run, after any server still running in it. While a
    rehearsal runs, another one in the same I(scratch_dir) is refused (and records nothing).
  - Records the result in the set's side record C(manifest_ID.rehearsal.json) beside the manifest (the last 20
    rehearsals); a set whose last rehearsal passed is proven, and retention never prunes the newest proven set.
  - A failed rehearsal is recorded too, then fails with C(rehearsal of set ID failed; REASON), still returning the
    checks and timings.
  - Check mode resolves the set and checks the ports and I(scratch_dir), and reports what would run; nothing is
    verified, started or written.
version_added: 0.1.0
author: Christmas platform operations
extends_documentation_fragment:
  - christmas.recovery.signing
  - christmas.recovery.signing.trust
options:
  manifest:
    description:
      - Path of a C(manifest_YYYYMMDD_HHMMSS.json), or C(latest) for the newest complete set in I(backup_dir).
    type: str
    default: latest
  backup_dir:
    description: Directory holding the backup sets; needed for C(latest).
    type: path
  scratch_dir:
    description:
      - The rehearsal's own directory (cluster, Redis directory, config tree), made for the run and removed after
        it. Its parent must let I(scratch_user) through. An existing directory that no rehearsal made is refused.
    type: path
    default: /var/tmp/christmas-rehearsal
  scratch_user:
    description:
      - OS user the scratch servers run as and who owns I(scratch_dir) (initdb and postgres refuse root). Used when
        the module runs as root; otherwise the servers run as the module's own user.
    type: str
    default: postgres
  scratch_db_port:
    description: Port of the scratch PostgreSQL on 127.0.0.1; 0 takes a free one.
    type: int
    default: 0
  scratch_redis_port:
    description: Port of the scratch Redis on 127.0.0.1; 0 takes a free one.
    type: int
    default: 0
  production_ports:
    description:
      - Ports of the platform's own servers; a scratch port equal to one of them is refused, and a free port is never
        one of them.
    type: list
    elements: int
    default: []
  db_user:
    description: The platform's database role; I(queries) run as it, as after a restore.
    type: str
    default: christmas
  queries:
    description:
      - SQL probes run against the scratch database as in M(christmas.recovery.christmas_validate), each
        C({name, sql, expected}) or C({name, sql, min}).
    type: list
    elements: dict
    default: []
  pg_bin_dir:
    description:
      - Directory of initdb, postgres and pg_restore. By default the binaries of the set's major version under
        C(/usr/lib/postgresql/VERSION/bin), then the newest installed, then C(PATH).
    type: path
  redis_server:
    description: The redis-server program; by default from C(PATH).
    type: path
  jobs:
    description: Parallel jobs for pg_restore and checksums.
    type: int
    default: 2
  start_timeout:
    description: Seconds the scratch servers have to accept connections.
    type: int
    default: 60
attributes:
  check_mode:
    support: full
    details: Resolves the set, checks ports and the scratch directory; verifies, starts and records nothing.
  diff_mode:
    support: none
requirements:
  - psycopg2 (psycopg2-binary) and anycrc (or Debian's python3-crcmod) Python libraries on the managed node.
  - PostgreSQL server binaries (initdb, postgres, pg_restore) of the set's major version or newer, with every
    extension of the set, and redis-server not older than the set's Redis, on the managed node.
"""

EXAMPLES = r"""
- name: Rehearse the restore of the newest set
  christmas.recovery.christmas_rehearse:
    backup_dir: /var/backups/christmas
    production_ports: [5432, 6379]
    queries:
      - name: symbols traded
        sql: SELECT count(DISTINCT symbol) FROM market_data
        min: 10
  register: rehearsal

- name: Rehearse one set on fixed scratch ports
  christmas.recovery.christmas_rehearse:
    manifest: /var/backups/christmas/manifest_20261126_030000.json
    scratch_db_port: 55432
    scratch_redis_port: 56379
    production_ports: [5432, 6379]
"""

RETURN = r"""
set_id:
  description: Id of the set rehearsed.
  returned: when the manifest could be read
  type: str
manifest:
  description: The manifest rehearsed.
  returned: always
  type: str
passed:
  description: Whether the set verified, restored and passed every check (null in check mode).
  returned: always
  type: bool
started_at:
  description: When the rehearsal started (UTC, ISO 8601).
  returned: not in check mode
  type: str
duration_seconds:
  description: Time the whole rehearsal took, teardown included.
  returned: not in check mode
  type: float
timings:
  description:
    - Seconds per phase; C(verify), C(cleanup) (of a killed run's leftovers), C(start) (initdb and the servers),
      C(restore), C(validate), C(teardown). A phase not reached is missing.
  returned: always
  type: dict
  sample: {"verify": 1.2, "cleanup": 0.0, "start": 2.9, "restore": 4.1, "validate": 0.4, "teardown": 0.6}
components:
  description: Per component, the restore's C(state) and C(seconds) in the scratch copy.
  returned: when the restore finished
  type: dict
checks:
  description:
    - The validation's checks (C(name), C(ok), C(expected), C(actual), C(detail)), as
      M(christmas.recovery.christmas_validate) returns them.
  returned: always
  type: list
  elements: dict
failed_checks:
  description: Names of the checks that failed.
  returned: always
  type: list
  elements: str
error:
  description: The one-line reason a rehearsal failed, or null.
  returned: always
  type: str
proof:
  description: The set's side record C(manifest_ID.rehearsal.json) the result was added to.
  returned: when the manifest's name carries a set id
  type: str
scratch_dir:
  description: The scratch directory used (removed again).
  returned: always
  type: str
scratch_ports:
  description: The scratch servers' ports on 127.0.0.1, C(db) and C(redis).
  returned: when the servers were started
  type: dict
leftover_removed:
  description: Whether a killed run's scratch directory was found and removed first.
  returned: when the set verified
  type: bool
would_remove_leftover:
  description: In check mode, whether a killed run's scratch directory is there to be removed.
  returned: check mode
  type: bool
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.christmas.recovery.plugins.module_utils.core.module_runner import run
from ansible_collections.christmas.recovery.plugins.module_utils.platform.arguments import (
    require_libraries,
    signing_argument_spec,
)
from ansible_collections.christmas.recovery.plugins.module_utils.platform.rehearsal import DEFAULT_SCRATCH_DIR, rehearse
from ansible_collections.christmas.recovery.plugins.module_utils.sets.signing import trust_from_params


def main():
    module = AnsibleModule(argument_spec={
        "manifest": {"type": "str", "default": "latest"},
        "backup_dir": {"type": "path"},
        "scratch_dir": {"type": "path", "default": DEFAULT_SCRATCH_DIR},
        "scratch_user": {"type": "str", "default": "postgres"},
        "scratch_db_port": {"type": "int", "default": 0},
        "scratch_redis_port": {"type": "int", "default": 0},
        "production_ports": {"type": "list", "elements": "int", "default": []},
        "db_user": {"type": "str", "default": "christmas"},
        "queries": {"type": "list", "elements": "dict", "default": []},
        "pg_bin_dir": {"type": "path"},
        "redis_server": {"type": "path"},
        "jobs": {"type": "int", "default": 2},
        "start_timeout": {"type": "int", "default": 60},
        **signing_argument_spec(),
    }, supports_check_mode=True)
    params = module.params
    require_libraries(module, True, True)
    run(module, lambda progress: rehearse(
        params["manifest"], params["backup_dir"], scratch_dir=params["scratch_dir"],
        scratch_user=params["scratch_user"], scratch_db_port=params["scratch_db_port"],
        scratch_redis_port=params["scratch_redis_port"], production_ports=params["production_ports"],
        db_user=params["db_user"], queries=params["queries"], pg_bin_dir=params["pg_bin_dir"],
        redis_server=params["redis_server"], jobs=params["jobs"], start_timeout=params["start_timeout"],
        check_mode=module.check_mode, progress=progress,
        trust=trust_from_params(params),
    ))


if __name__ == "__main__":
    main()

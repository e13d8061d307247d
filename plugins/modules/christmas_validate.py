#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: christmas_validate
short_description: Check the restored platform against the backup set it was restored from
description:
  - "Compares the servers and the config tree with the backup set itself (not with a restore's report), one check
    per item, in this order: C(db: row counts) (the exact row count of every table against the manifest),
    C(db: market_data rows), C(db: newest market_data) (the newest time in C(market_data), in UTC),
    C(db: timescaledb objects) (hypertables, continuous aggregates and jobs against the manifest, for a set with
    TimescaleDB), C(db: timescaledb scheduler) (TimescaleDB's scheduler has a session in the database within 30 s,
    for a set with scheduled jobs), C(redis: keys per db) (each database's key count against the set's own
    C(redis.rdb); keys with a TTL may have expired since), C(config: checksums) (the tree's checksum against the
    manifest), C(services: up), one C(health: URL) per health URL, and one C(query: NAME) per query."
  - Only the components not skipped and present in the set are checked, and only what the manifest records (sets
    made before C(market_data) was recorded fall back to its row count, without the newest time).
  - "A server that cannot be reached is a failed check, not an error. When any check fails the task fails with
    C(validation failed: NAME: DETAIL; ...) and still returns C(checks) and C(failed_checks), so a C(rescue) can record
    them (as C(ansible_failed_result.checks))."
  - Read-only; C(changed) is always false and check mode runs the same checks.
version_added: 0.1.0
author: Christmas platform operations
extends_documentation_fragment:
  - christmas.recovery.connection
options:
  manifest:
    description:
      - Path of a C(manifest_YYYYMMDD_HHMMSS.json), or C(latest) for the newest complete set in I(backup_dir).
      - Empty after a restore to a point in time (which checked its components itself); then only the services,
        health URLs and queries are checked.
    type: str
    default: latest
  backup_dir:
    description: Directory holding the backup sets; needed for C(latest).
    type: path
  mode:
    description:
      - C(restored) expects the database exactly as in the set (after a restore).
      - "C(running) is for a database that went on working since the backup (after a restart that healed it): every
        table of the set must be there and readable (C(db: tables of the set)), and C(market_data) must not be behind
        the set (at least its rows, a newest time not older)."
    type: str
    choices: [restored, running]
    default: restored
  queries:
    description:
      - SQL probes, each C({name, sql, expected}) or C({name, sql, min}) (exactly one of I(expected) and I(min)).
      - Each runs as I(db_user) (never the admin) in the platform database, in a read-only transaction; the first
        column of the first row is compared; with I(expected) as text (C(str(value) == str(expected))), with
        I(min) as a number (C(value >= min)).
    type: list
    elements: dict
    default: []
  health_urls:
    description:
      - http:// or https:// URLs that must answer a GET with a 2xx status. Each is tried every second (5 seconds per
        try, no proxy) until it does or I(health_timeout) seconds have passed.
      - A C(user:password@) in a URL is sent as Basic authentication. URLs are shown without user, password and
        query string; those never appear in the result.
    type: list
    elements: str
    default: []
  health_timeout:
    description: Seconds to keep retrying a health URL that does not answer 2xx; 0 tries once.
    type: int
    default: 30
  services:
    description:
      - "The platform's service states as the caller found them, C({NAME: {running: BOOL, state: TEXT}}); every
        service must be running. Not given, there is no C(services: up) check."
    type: dict
attributes:
  check_mode:
    support: full
    details: Validation only reads, so check mode runs every check.
  diff_mode:
    support: none
"""

EXAMPLES = r"""
- name: Validate the platform against the set just restored
  christmas.recovery.christmas_validate:
    manifest: /var/backups/christmas/manifest_20261126_030000.json
    db_password: "{{ christmas_db_password }}"
    config_dir: /srv/christmas/config
    health_urls:
      - http://127.0.0.1:8080/health
    queries:
      - name: symbols traded
        sql: SELECT count(DISTINCT symbol) FROM market_data
        min: 10
      - name: schema version
        sql: SELECT max(version) FROM schema_migrations
        expected: 42

- name: Validate only the database of the newest set
  christmas.recovery.christmas_validate:
    backup_dir: /var/backups/christmas
    skip_redis: true
    skip_config: true
"""

RETURN = r"""
ok:
  description: Whether every check passed.
  returned: success
  type: bool
checks:
  description:
    - One entry per check, in order; C(name), C(ok), C(expected), C(actual) and a one-line C(detail).
  returned: always, when the input was valid
  type: list
  elements: dict
  sample: [{"name": "db: market_data rows", "ok": false, "expected": 5000, "actual": 4999,
            "detail": "public.market_data: 4999 rows, expected 5000"}]
failed_checks:
  description: Names of the checks that failed (C(failed) itself is Ansible's flag).
  returned: always, when the input was valid
  type: list
  elements: str
set_id:
  description: Id of the set validated against.
  returned: when the manifest could be read
  type: str
manifest:
  description: The manifest validated against.
  returned: when the manifest could be read
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.christmas.recovery.plugins.module_utils.core.module_runner import run
from ansible_collections.christmas.recovery.plugins.module_utils.platform.arguments import (
    connection_argument_spec,
    enabled_components,
    pg_target,
    redis_target,
    require_libraries,
)
from ansible_collections.christmas.recovery.plugins.module_utils.platform.validation import (
    redact_url,
    require_ok,
    validate,
)


def main():
    argument_spec = connection_argument_spec()
    argument_spec.update(
        manifest={"type": "str", "default": "latest"},
        backup_dir={"type": "path"},
        mode={"type": "str", "choices": ["restored", "running"], "default": "restored"},
        queries={"type": "list", "elements": "dict", "default": []},
        health_urls={"type": "list", "elements": "str", "default": []},
        health_timeout={"type": "int", "default": 30},
        services={"type": "dict"},
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    params = module.params
    health_urls = params["health_urls"]
    params["health_urls"] = [redact_url(url) for url in health_urls]  # the echoed arguments carry no credentials
    components = enabled_components(params)
    require_libraries(module, "db" in components or bool(params["queries"]), "redis" in components)
    run(module, lambda progress: require_ok(validate(
        params["manifest"] or None, params["backup_dir"], components, db=pg_target(params),
        redis_target=redis_target(params), config_dir=params["config_dir"], queries=params["queries"],
        health_urls=health_urls, health_timeout=params["health_timeout"], services=params["services"],
        mode=params["mode"], progress=progress,
    )))


if __name__ == "__main__":
    main()

#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: christmas_incident
short_description: Record a recovery in the incident database, with a Markdown report
description:
  - Inserts one recovery record (the runbook's recovery documentation; when and who, the failure, what was done, the
    result, the follow-up) into the incident database, a SQLite file or a PostgreSQL table, created when missing.
  - Writes the record as Markdown to C(incident_YYYYMMDD_HHMMSS_ID.md) (0600) in I(markdown_dir), following the
    runbook's template, with the verification checks as a table. The time in the name is the record's
    C(started_at), or C(finished_at) without it.
  - Every restore play calls it at its end, also when the restore failed (C(status=failed) with the C(error)).
  - Find past records with M(christmas.recovery.christmas_incident_info) or C(playbooks/incidents.yml).
  - Check mode validates and normalizes the record and returns it; nothing is written, nor is the database opened.
version_added: 0.1.0
author: Christmas platform operations
extends_documentation_fragment:
  - christmas.recovery.incident_store
options:
  markdown_dir:
    description:
      - Directory of the Markdown reports, created 0700 when missing. Defaults to the SQLite file's directory;
        required with I(backend=postgresql).
    type: path
  record:
    description:
      - The recovery record. Only C(procedure) and C(status) are required; an unknown key is an error naming it.
      - C(procedure) (str), for example C(db), C(redis), C(config), C(full), C(partial) or C(rehearsal).
      - C(status) (str, free text). The role writes C(recovered), C(healed_by_restart), C(failed), or
        C(planned) (check mode); for a rehearsal C(passed) or C(failed).
      - C(started_at), C(finished_at) (ISO 8601, stored in UTC; without an offset UTC is meant). C(finished_at)
        defaults to now.
      - C(duration_seconds) (number), by default C(finished_at - started_at) when C(started_at) is given.
      - C(operator), C(host), C(incident_type), C(incident_symptoms), C(incident_impact) (str).
      - C(backup_set) (set id), C(backup_manifest) (path), C(components) (list of str), C(commands) (list of str, the
        steps and commands run, in order).
      - C(verification) (list of dicts with C(name), C(ok) (required), C(expected), C(actual), C(detail)).
      - C(measurements) (dict of names to finite numbers), for example a drill's C(detection_seconds),
        C(rto_seconds), C(rpo_seconds) and their targets; shown as a table in the report.
      - C(error), C(remaining_problems), C(followup_prevention), C(followup_monitoring),
        C(followup_config_changes) (str).
      - Never pass secrets, the record is stored and rendered as given.
    type: dict
    required: true
attributes:
  check_mode:
    support: full
    details: Validates and normalizes the record; writes nothing. C(id) and C(markdown) are null.
  diff_mode:
    support: none
notes:
  - With I(backend=postgresql) it needs psycopg2 on the managed host.
  - SQLite waits up to 30 seconds for another writer, so several plays can record at once.
"""

EXAMPLES = r"""
- name: Record the database restore
  christmas.recovery.christmas_incident:
    record:
      procedure: db
      status: recovered
      started_at: "2026-11-26T03:00:00Z"
      operator: alice
      incident_type: database_corruption
      incident_symptoms: orders table returns I/O errors
      incident_impact: trading halted for 20 minutes
      backup_set: "20261126_020000"
      commands:
        - ansible-playbook playbooks/restore_db.yml -e manifest=latest
      verification:
        - {name: "db: row counts", ok: true, expected: 5717, actual: 5717}
      followup_monitoring: alert on checksum failures

- name: Record into PostgreSQL
  christmas.recovery.christmas_incident:
    backend: postgresql
    pg_host: ops-db.example.internal
    pg_dbname: operations
    pg_user: recovery
    pg_password: "{{ christmas_incident_pg_password }}"
    markdown_dir: /var/lib/christmas/incidents
    record:
      procedure: full
      status: failed
      error: "preflight: pg_restore 14 is older than the dump (15)"
"""

RETURN = r"""
id:
  description: Id of the new record; null in check mode.
  returned: always
  type: int
markdown:
  description: Path of the Markdown report; null in check mode.
  returned: always
  type: str
  sample: /var/lib/christmas/incident_20261126_030000_7.md
record:
  description:
    - The record as stored; every field present (null, an empty list or an empty dict when not given), times in UTC
      as C(YYYY-MM-DDTHH:MM:SSZ).
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.christmas.recovery.plugins.module_utils.core.module_runner import run
from ansible_collections.christmas.recovery.plugins.module_utils.platform.arguments import require_libraries
from ansible_collections.christmas.recovery.plugins.module_utils.platform.incidents import (
    plan_incident,
    record_incident,
    store_argument_spec,
    store_from_params,
)


def main():
    argument_spec = store_argument_spec()
    argument_spec.update(
        markdown_dir={"type": "path"},
        record={"type": "dict", "required": True},
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True,
                           required_if=[("backend", "postgresql", ["pg_dbname", "markdown_dir"])])
    params = module.params
    require_libraries(module, params["backend"] == "postgresql" and not module.check_mode, False)

    def work(_progress):
        store = store_from_params(params)
        if module.check_mode:
            return dict(plan_incident(store, params["record"], params["markdown_dir"]), changed=True)
        return dict(record_incident(store, params["record"], params["markdown_dir"]), changed=True)

    run(module, work)


if __name__ == "__main__":
    main()

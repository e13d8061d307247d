#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: christmas_incident_info
short_description: Search the incident database for past recoveries
description:
  - Lists the recovery records written by M(christmas.recovery.christmas_incident), newest first (by C(started_at),
    or C(finished_at) without it), so an operator sees how a similar failure was fixed.
  - Every filter given must match. Read-only; a SQLite file or PostgreSQL table that does not exist yet gives an
    empty list.
version_added: 0.1.0
author: Christmas platform operations
extends_documentation_fragment:
  - christmas.recovery.incident_store
options:
  incident_type:
    description: Only records of this C(incident_type) (case-insensitive, whole value).
    type: str
  text:
    description:
      - Only records containing this text, case-insensitive, in the symptoms, impact, error, remaining problems,
        follow-ups or commands.
    type: str
  since:
    description:
      - Only records from this day (C(YYYY-MM-DD), UTC) or moment (ISO 8601) on.
    type: str
  until:
    description:
      - Only records up to this day (C(YYYY-MM-DD), the whole day included, UTC) or moment (ISO 8601).
    type: str
  status:
    description:
      - Only records with this C(status) (C(recovered), C(healed_by_restart), C(failed), C(planned), or a drill's or
        rehearsal's C(passed) and C(failed)).
    type: str
  procedure:
    description:
      - Only records of these procedures (any of them; case-insensitive, whole value), where C(*) matches any run of
        characters; for example C([drill_*, rehearsal*]) for the history of drills and rehearsals.
    type: list
    elements: str
  limit:
    description: At most this many records, the newest.
    type: int
    default: 20
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
notes:
  - With I(backend=postgresql) it needs psycopg2 on the managed host.
"""

EXAMPLES = r"""
- name: How were database failures fixed before?
  christmas.recovery.christmas_incident_info:
    incident_type: database_corruption
    limit: 5
  register: past

- name: Every drill, newest first
  christmas.recovery.christmas_incident_info:
    procedure: ["drill_*"]
    limit: 100
  register: drills

- name: Failed recoveries in November mentioning pg_restore
  christmas.recovery.christmas_incident_info:
    status: failed
    text: pg_restore
    since: "2026-11-01"
    until: "2026-11-30"
"""

RETURN = r"""
incidents:
  description:
    - The matching records, newest first; each has the fields of the C(record) option of
      M(christmas.recovery.christmas_incident) plus C(id) and C(markdown) (path of its report).
  returned: always
  type: list
  elements: dict
count:
  description: Number of records returned.
  returned: always
  type: int
lines:
  description: One line per record for an operator with date, type, status, duration, symptoms, report path.
  returned: always
  type: list
  elements: str
  sample: ["2026-11-26 03:00:00Z  database_corruption  recovered  312.5s  orders table returns I/O errors
    /var/lib/christmas/incident_20261126_030000_7.md"]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.christmas.recovery.plugins.module_utils.core.module_runner import run
from ansible_collections.christmas.recovery.plugins.module_utils.platform.arguments import require_libraries
from ansible_collections.christmas.recovery.plugins.module_utils.platform.incidents import (
    find_incidents,
    store_argument_spec,
    store_from_params,
    summary_line,
)


def main():
    argument_spec = store_argument_spec()
    argument_spec.update(
        incident_type={"type": "str"},
        text={"type": "str"},
        since={"type": "str"},
        until={"type": "str"},
        status={"type": "str"},
        procedure={"type": "list", "elements": "str"},
        limit={"type": "int", "default": 20},
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True,
                           required_if=[("backend", "postgresql", ["pg_dbname"])])
    params = module.params
    require_libraries(module, params["backend"] == "postgresql", False)

    def work(_progress):
        incidents = find_incidents(store_from_params(params), incident_type=params["incident_type"],
                                   text=params["text"], since=params["since"], until=params["until"],
                                   status=params["status"], limit=params["limit"],
                                   procedure=params["procedure"])
        return {"incidents": incidents, "count": len(incidents), "lines": [summary_line(i) for i in incidents]}

    run(module, work)


if __name__ == "__main__":
    main()

#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: christmas_drill_report
short_description: Render the history of drills and restore rehearsals as Markdown, HTML and a chart
description:
  - Writes three files into I(dest) on the controller, each only when its content changes (atomically, 0600, the
    directory 0700). C(drills.md) and C(drills.html) hold a summary per scenario and, per scenario, one row per run,
    newest first, with its status, detection, RTO and RPO against their targets, C(pass), C(FAIL) or C(-) (did not
    apply) per checklist item, and the error. C(drills_rto_rpo.png) charts RTO and RPO over time, one line per
    scenario, failed runs marked.
  - A drill's scenario is its procedure without C(drill_); any other procedure (a rehearsal's) is a scenario of its
    own. Record text is escaped in both pages.
  - An action plugin; it runs on the controller, which needs matplotlib (C(requirements.txt)).
version_added: 0.1.0
author: Christmas platform operations
options:
  records:
    description:
      - The records, as RV(christmas.recovery.christmas_incident_info#module:incidents) returns them (any order).
    type: list
    elements: dict
    required: true
  dest:
    description: Directory of the report on the controller, created when missing.
    type: path
    required: true
attributes:
  check_mode:
    support: full
    details: Renders everything and reports which files would change; writes nothing.
  diff_mode:
    support: none
  action:
    support: full
  async:
    support: none
"""

EXAMPLES = r"""
# history: registered from christmas.recovery.christmas_incident_info with procedure: ["drill_*", "rehearsal*"]
- name: Render the report on the controller
  christmas.recovery.christmas_drill_report:
    records: "{{ history.incidents }}"
    dest: /srv/reports/drills
"""

RETURN = r"""
markdown:
  description: Path of the Markdown page.
  returned: always
  type: str
  sample: /srv/reports/drills/drills.md
html:
  description: Path of the HTML page (it shows the chart from the same directory).
  returned: always
  type: str
chart:
  description: Path of the PNG chart.
  returned: always
  type: str
dest:
  description: The report directory, absolute.
  returned: always
  type: str
written:
  description: The files that changed (or would change in check mode).
  returned: always
  type: list
  elements: str
  sample: [drills.md, drills.html, drills_rto_rpo.png]
scenarios:
  description: Per scenario, the number of runs, the newest run's status and time.
  returned: always
  type: dict
  sample: {"db_stop": {"runs": 3, "last_status": "passed", "last_run": "2026-11-26T10:00:00Z"}}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.christmas.recovery.plugins.module_utils.platform.drill_report import argument_spec


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    module.fail_json(msg="christmas_drill_report runs on the controller as an action plugin; it cannot run on a host")


if __name__ == "__main__":
    main()

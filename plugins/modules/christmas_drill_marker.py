#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: christmas_drill_marker
short_description: Write a drill's marker row into the platform database and look for earlier ones
description:
  - Writes I(marker) into the table C(christmas_drill_markers) of the platform database (created when missing), and
    reports which of I(expect) are there and how many rows C(market_data) holds. A drill writes a marker before its
    fault and, after the recovery, a second one expecting the first, which proves that the database takes writes
    again and kept what it held before the fault.
  - Connects with psycopg2 only; the password is in no command line, environment variable or file.
  - Only the I(db_*) connection options are used.
version_added: 0.1.0
author: Christmas platform operations
extends_documentation_fragment:
  - christmas.recovery.connection
options:
  marker:
    description: The marker to write (at most 200 characters). Writing one that is there already changes nothing.
    type: str
    required: true
  expect:
    description: Markers written earlier, to look for.
    type: list
    elements: str
    default: []
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
"""

EXAMPLES = r"""
- name: A marker before the fault
  christmas.recovery.christmas_drill_marker:
    db_host: 10.0.0.100
    db_password: "{{ christmas_db_password }}"
    marker: failover-20261126T100000Z

- name: After the recovery, a write and the first marker
  christmas.recovery.christmas_drill_marker:
    db_host: 10.0.0.100
    db_password: "{{ christmas_db_password }}"
    marker: failover-20261126T100000Z.after
    expect: [failover-20261126T100000Z]
  register: after
"""

RETURN = r"""
written:
  description: Whether I(marker) was written by this run.
  returned: always
  type: bool
present:
  description: For each of I(expect), whether it is in the table.
  returned: always
  type: dict
  sample: {"failover-20261126T100000Z": true}
market_data_rows:
  description: Rows of C(market_data) as the database answered.
  returned: always
  type: int
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.christmas.recovery.plugins.module_utils.core.module_runner import run
from ansible_collections.christmas.recovery.plugins.module_utils.platform.arguments import (
    connection_argument_spec,
    pg_target,
    require_libraries,
)
from ansible_collections.christmas.recovery.plugins.module_utils.platform.drill_marker import write_marker


def main():
    argument_spec = dict(connection_argument_spec(), marker={"type": "str", "required": True},
                         expect={"type": "list", "elements": "str", "default": []})
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    require_libraries(module, True, False)
    run(module, lambda _progress: write_marker(pg_target(dict(module.params, db_node=None)), module.params["marker"],
                                               module.params["expect"], module.check_mode))


if __name__ == "__main__":
    main()

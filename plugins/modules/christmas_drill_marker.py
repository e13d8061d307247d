#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: christmas_drill_marker
short_description: Write a drill's marker row or tracers into the platform and look for them after the recovery
description:
  - Writes I(marker) into the table C(christmas_drill_markers) of the platform database (created when missing), and
    reports which of I(expect) are there and how many rows C(market_data) holds. A drill writes a marker before its
    fault and, after the recovery, a second one expecting the first, which proves that the database takes writes
    again and kept what it held before the fault.
  - With I(action=trace), writes the tracer I(marker) into each component not skipped, just before a fault - a row
    of C(christmas_drill_markers) (its commit time), the Redis key C(christmas:drill:MARKER) in database 0 (the time as
    its value), the digest of I(config_dir) - and returns them as C(traced). With I(action=find), after the
    recovery, says for each traced component whether its tracer came back and the seconds of data it lost. None when
    the tracer came back, else from I(restored_at) (the point restored to) up to I(fault_at). C(rpo_seconds) is the
    largest; the Redis key is deleted.
  - Connects with psycopg2 and Redis's protocol only; the passwords are in no command line, environment variable or
    file.
version_added: 0.1.0
author: Christmas platform operations
extends_documentation_fragment:
  - christmas.recovery.connection
options:
  action:
    description: C(marker) writes I(marker) and looks for I(expect); C(trace) writes tracers; C(find) looks for them.
    type: str
    choices: [marker, trace, find]
    default: marker
  traced:
    description: With I(action=find), the C(traced) that I(action=trace) returned.
    type: dict
  fault_at:
    description: With I(action=find), when the fault was injected (Unix seconds).
    type: float
  restored_at:
    description: With I(action=find), the point the recovery restored to (Unix seconds), when it restored.
    type: float
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
  returned: action=marker
  type: bool
present:
  description: For each of I(expect), whether it is in the table.
  returned: action=marker
  type: dict
  sample: {"failover-20261126T100000Z": true}
market_data_rows:
  description: Rows of C(market_data) as the database answered.
  returned: action=marker
  type: int
traced:
  description: The tracers written, per component (C(db), C(redis), C(config)), each with C(at) (Unix seconds).
  returned: action=trace
  type: dict
components:
  description: Per traced component, C(came_back) and C(lost_seconds).
  returned: action=find
  type: dict
rpo_seconds:
  description: The data lost, the largest of the components' (null when one is unknown).
  returned: action=find
  type: float
rpo_source:
  description: How each component's loss was measured, in one line.
  returned: action=find
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.christmas.recovery.plugins.module_utils.core.module_runner import run
from ansible_collections.christmas.recovery.plugins.module_utils.platform.arguments import (
    connection_argument_spec,
    pg_target,
    redis_target,
    require_libraries,
)
from ansible_collections.christmas.recovery.plugins.module_utils.platform.drill_marker import (
    find_tracers,
    write_marker,
    write_tracers,
)


def _work(module):
    params = module.params
    db = pg_target(dict(params, db_node=None)) if not params["skip_db"] else None
    if params["action"] == "marker":
        return write_marker(db, params["marker"], params["expect"], module.check_mode)
    redis = redis_target(params) if not params["skip_redis"] else None
    config = params["config_dir"] if not params["skip_config"] else None
    if params["action"] == "trace":
        return write_tracers(db, redis, config, params["marker"], module.check_mode)
    return find_tracers(db, redis, config, params["marker"], params["traced"] or {}, params["fault_at"],
                        params["restored_at"], module.check_mode)


def main():
    argument_spec = dict(connection_argument_spec(), marker={"type": "str", "required": True},
                         expect={"type": "list", "elements": "str", "default": []},
                         action={"type": "str", "choices": ["marker", "trace", "find"], "default": "marker"},
                         traced={"type": "dict"}, fault_at={"type": "float"}, restored_at={"type": "float"})
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True,
                           required_if=[("action", "find", ("traced", "fault_at"))])
    require_libraries(module, True, False)
    run(module, lambda _progress: _work(module))


if __name__ == "__main__":
    main()

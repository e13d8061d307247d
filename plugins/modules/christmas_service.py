#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: christmas_service
short_description: Stop, start or restart the platform's services around a restore
description:
  - Controls the platform's services (C(timescaledb), C(redis), C(api)) as a compose project or as systemd units,
    and reports their state.
  - For compose, the state of each service is read from the container engine (C(docker), or C(podman) when the
    compose command is podman's) through the compose labels, so C(docker compose), C(docker-compose),
    C(podman-compose) and C(podman compose) all work. A service without a container is C(missing).
  - After every command the module waits, up to I(timeout) seconds, until each affected service really is running
    (or stopped), and fails naming the service, its state and the command otherwise. Exit codes alone are not
    trusted.
  - Check mode reports the commands that would run and runs none of them.
version_added: 0.1.0
author: Christmas platform operations
options:
  manager:
    description:
      - How the services are run; C(compose) (a compose project in I(compose_dir)), C(systemd) (units named in
        I(services)) or C(none) (nothing to control; every state is a no-op).
    type: str
    choices: [compose, systemd, none]
    default: none
  compose_dir:
    description:
      - Directory of the compose project, holding C(compose.yaml), C(compose.yml), C(docker-compose.yml) or
        C(docker-compose.yaml). Required when I(manager=compose).
    type: path
  compose_command:
    description:
      - The compose command, split like a shell would; for example C(docker compose), C(docker-compose),
        C(podman-compose) or C(podman compose).
    type: str
    default: docker compose
  services:
    description:
      - Compose services or systemd units to act on and report.
      - Required for I(state=started), I(state=stopped), I(state=restarted) and I(state=killed), and for every state
        but C(status) with systemd. For compose, empty means every service of the project for C(status), C(up) and
        C(down).
      - For compose, C(down) always takes down the whole project.
    type: list
    elements: str
    default: []
  state:
    description:
      - C(status) only reports.
      - C(started) starts the listed services that are not running (compose C(up -d SERVICES), which also recreates
        containers removed by C(down)).
      - C(stopped) stops the listed services that are running.
      - C(restarted) always restarts the listed services.
      - C(down) takes the compose project down (containers removed, volumes kept), or stops the listed units; it
        does nothing when nothing is there (compose) or running (systemd).
      - C(up) brings the project (or the listed services) up when any of them is not running.
      - C(killed) kills the listed services that are running with SIGKILL, as a crash would (compose, through the
        container engine, C(podman kill --signal KILL) or C(docker kill --signal KILL) of their containers; systemd,
        C(systemctl kill --signal=SIGKILL)). It does not wait, since a restart policy may bring them back at once.
        For drills.
    type: str
    choices: [status, started, stopped, restarted, down, up, killed]
    default: status
  logs_lines:
    description:
      - When above 0, the last that many log lines of each reported service are returned in RV(logs).
        0 returns no logs.
    type: int
    default: 0
  timeout:
    description: Seconds to wait, after a command, for every affected service to reach the wanted state.
    type: int
    default: 60
attributes:
  check_mode:
    support: full
    details: Reads the state and reports the commands that would run; runs none of them.
  diff_mode:
    support: none
"""

EXAMPLES = r"""
- name: Stop the API and Redis before a Redis restore
  christmas.recovery.christmas_service:
    manager: compose
    compose_dir: /srv/christmas
    services: [api, redis]
    state: stopped

- name: Bring the whole compose project back up
  christmas.recovery.christmas_service:
    manager: compose
    compose_dir: /srv/christmas
    compose_command: podman-compose
    state: up

- name: Restart the API unit and show its last log lines
  christmas.recovery.christmas_service:
    manager: systemd
    services: [christmas-api.service]
    state: restarted
    logs_lines: 20
"""

RETURN = r"""
manager:
  description: The service manager used.
  returned: always
  type: str
  sample: compose
before:
  description: State of each service before anything ran; C(running) and C(state) (compose C(running), C(exited),
    C(created), C(missing)...; systemd ActiveState C(active), C(inactive), C(failed)...).
  returned: always
  type: dict
  sample: {"api": {"running": true, "state": "running"}, "redis": {"running": false, "state": "exited"}}
services:
  description: State of each service afterwards, in the same form as RV(before); in check mode the same as RV(before).
  returned: always
  type: dict
commands:
  description: The commands that ran, or in check mode would run.
  returned: always
  type: list
  elements: str
  sample: ["podman-compose stop api redis"]
logs:
  description: The last I(logs_lines) log lines of each reported service.
  returned: when I(logs_lines) is above 0
  type: dict
  sample: {"api": "listening on :8080\n"}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.christmas.recovery.plugins.module_utils.core.module_runner import run
from ansible_collections.christmas.recovery.plugins.module_utils.platform.services import (
    MANAGERS,
    STATES,
    converge,
    service_manager,
)


def main():
    module = AnsibleModule(argument_spec={
        "manager": {"type": "str", "choices": list(MANAGERS), "default": "none"},
        "compose_dir": {"type": "path"},
        "compose_command": {"type": "str", "default": "docker compose"},
        "services": {"type": "list", "elements": "str", "default": []},
        "state": {"type": "str", "choices": list(STATES), "default": "status"},
        "logs_lines": {"type": "int", "default": 0},
        "timeout": {"type": "int", "default": 60},
    }, required_if=[("manager", "compose", ["compose_dir"])], supports_check_mode=True)
    params = module.params

    def work(progress):
        manager = service_manager(params["manager"], params["compose_dir"], params["compose_command"],
                                  params["timeout"])
        return converge(manager, params["state"], params["services"], params["logs_lines"], module.check_mode)

    run(module, work)


if __name__ == "__main__":
    main()

"""christmas_service through ansible-playbook, against a real two-service compose project run by podman-compose under
podman (checked with ``podman inspect``), and against a STAND-IN systemctl/journalctl that keeps unit states in a
file (there is no systemd here)."""

from __future__ import annotations

import json
import os
import secrets
import subprocess

import pytest
from conftest import ROOT, connection_vars, redis_state, run_module, seed_redis

from lab import assert_compose_started

CONTAINERS_CONF = os.path.join(ROOT, "lab", "containers.conf")
PODMAN_ENV = dict(os.environ, CONTAINERS_CONF=CONTAINERS_CONF)
STANDIN_BIN = os.path.join(ROOT, "tests", "fixtures", "systemctl_standin")
WORKING_DIR_LABEL = "com.docker.compose.project.working_dir"

COMPOSE_YAML = """\
services:
  db:
    image: {image}
    init: true
    command: ["sleep", "infinity"]
    volumes:
      - data:/data
  api:
    image: {image}
    init: true
    command: ["sh", "-c", "echo api ready; exec python3 -m http.server --bind 127.0.0.1 --directory /tmp 8080"]
volumes:
  data:
"""


def podman(*args, check=True):
    return subprocess.run(["podman", *args], capture_output=True, text=True, env=PODMAN_ENV, check=check)


def run_service(tmp_dir, args, check=False, env=None):
    """christmas_service in a one-task playbook under podman's settings; what it registered (also when it failed)."""
    return run_module(tmp_dir, "christmas_service", args, check, env=dict(PODMAN_ENV, **(env or {})))[0]


def containers(project_dir):
    """Per service, the real container as podman sees it: id, status, StartedAt."""
    ids = podman("ps", "-a", "-q", "--filter", "label=%s=%s" % (WORKING_DIR_LABEL, os.path.realpath(project_dir)))
    if not ids.stdout.split():
        return {}
    found = {}
    for doc in json.loads(podman("inspect", *ids.stdout.split()).stdout):
        found[doc["Config"]["Labels"]["com.docker.compose.service"]] = {
            "id": doc["Id"], "status": doc["State"]["Status"], "started_at": doc["State"]["StartedAt"]}
    return found


@pytest.fixture(scope="module")
def lab_image():
    built = subprocess.run(["bash", os.path.join(ROOT, "lab", "image.sh")], capture_output=True, text=True,
                           env=PODMAN_ENV, check=False)
    assert built.returncode == 0, built.stderr[-2000:]
    return built.stdout.split()[-1]


@pytest.fixture
def compose_project(tmp_dir, lab_image):
    """A running compose project (db with a named volume, api) in its own directory; everything it made is removed
    afterwards, whatever the test did to it."""
    name = "svc" + secrets.token_hex(4)
    path = os.path.join(tmp_dir, name)
    os.mkdir(path)
    with open(os.path.join(path, "compose.yaml"), "w", encoding="utf-8") as handle:
        handle.write(COMPOSE_YAML.format(image=lab_image))
    try:
        done = subprocess.run(["podman-compose", "up", "-d"], cwd=path, env=PODMAN_ENV, capture_output=True,
                              text=True, check=False)
        found = {svc: c["status"] for svc, c in containers(path).items()}
        assert_compose_started(done, {svc: found.get(svc, "missing") for svc in ("db", "api")})
        yield path
    finally:
        subprocess.run(["podman-compose", "down", "-v"], cwd=path, env=PODMAN_ENV, capture_output=True, check=False)
        left = podman("ps", "-a", "-q", "--filter", "label=%s=%s" % (WORKING_DIR_LABEL, os.path.realpath(path)),
                      check=False).stdout.split()
        if left:
            podman("rm", "-f", "-t", "0", *left, check=False)
        podman("volume", "rm", "-f", name + "_data", check=False)
        podman("network", "rm", "-f", name + "_default", check=False)


@pytest.mark.xdist_group("podman")
def test_compose_stop_start_restart_change_the_real_containers(compose_project, tmp_dir):
    base = {"manager": "compose", "compose_dir": compose_project, "compose_command": "podman-compose"}
    running = {"running": True, "state": "running"}

    status = run_service(tmp_dir, dict(base, logs_lines=5))
    assert (status["changed"], status["services"]) == (False, {"api": running, "db": running})
    assert "api ready" in status["logs"]["api"]

    dry = run_service(tmp_dir, dict(base, services=["api"], state="stopped"), check=True)
    assert (dry["changed"], dry["commands"]) == (True, ["podman-compose stop api"])
    assert containers(compose_project)["api"]["status"] == "running"

    stopped = run_service(tmp_dir, dict(base, services=["api", "db"], state="stopped", timeout=30))
    assert stopped["changed"] is True
    assert {svc: c["status"] for svc, c in containers(compose_project).items()} == {"api": "exited", "db": "exited"}
    assert run_service(tmp_dir, dict(base, services=["api", "db"], state="stopped"))["changed"] is False

    before = containers(compose_project)
    dry = run_service(tmp_dir, dict(base, services=["api"], state="started"), check=True)
    assert (dry["changed"], dry["commands"]) == (True, ["podman-compose up -d api"])
    assert containers(compose_project) == before

    started = run_service(tmp_dir, dict(base, services=["api"], state="started", timeout=30))
    assert started["changed"] is True
    after = containers(compose_project)
    assert (after["api"]["status"], after["db"]["status"]) == ("running", "exited")
    assert after["api"]["id"] == before["api"]["id"]  # the same container, started again
    assert run_service(tmp_dir, dict(base, services=["api"], state="started"))["changed"] is False

    restarted = run_service(tmp_dir, dict(base, services=["api"], state="restarted", timeout=30))
    assert (restarted["changed"], restarted["commands"]) == (True, ["podman-compose restart api"])
    again = containers(compose_project)["api"]
    assert again["status"] == "running"
    assert (again["id"], again["started_at"] != after["api"]["started_at"]) == (after["api"]["id"], True)

    unknown = run_service(tmp_dir, dict(base, services=["apii"], state="stopped"))
    assert unknown["failed"] is True
    assert unknown["msg"] == "unknown service apii: %s declares api, db" % os.path.join(compose_project,
                                                                                         "compose.yaml")
    assert containers(compose_project)["api"]["status"] == "running"


@pytest.mark.xdist_group("podman")
def test_compose_down_keeps_the_volume_and_up_brings_the_project_back(compose_project, tmp_dir):
    base = {"manager": "compose", "compose_dir": compose_project, "compose_command": "podman-compose", "timeout": 30}
    volume = os.path.basename(compose_project) + "_data"
    podman("exec", containers(compose_project)["db"]["id"], "sh", "-c", "echo kept > /data/marker")

    dry = run_service(tmp_dir, dict(base, state="down"), check=True)
    assert (dry["changed"], dry["commands"]) == (True, ["podman-compose down"])
    assert set(containers(compose_project)) == {"api", "db"}

    down = run_service(tmp_dir, dict(base, state="down"))
    assert down["changed"] is True
    assert containers(compose_project) == {}
    assert podman("volume", "exists", volume, check=False).returncode == 0
    assert run_service(tmp_dir, dict(base, state="down"))["changed"] is False

    started = run_service(tmp_dir, dict(base, services=["api"], state="started"))
    assert started["before"] == {"api": {"running": False, "state": "missing"}}
    assert {svc: c["status"] for svc, c in containers(compose_project).items()} == {"api": "running"}

    dry = run_service(tmp_dir, dict(base, state="up"), check=True)
    assert (dry["changed"], dry["commands"]) == (True, ["podman-compose up -d"])
    assert set(containers(compose_project)) == {"api"}

    up = run_service(tmp_dir, dict(base, state="up"))
    assert up["changed"] is True
    real = containers(compose_project)
    assert {svc: c["status"] for svc, c in real.items()} == {"api": "running", "db": "running"}
    assert podman("exec", real["db"]["id"], "cat", "/data/marker").stdout == "kept\n"
    assert run_service(tmp_dir, dict(base, state="up"))["changed"] is False


def test_bad_compose_settings_fail_with_one_line_naming_them(tmp_dir):
    missing = os.path.join(tmp_dir, "no-such-project")
    result = run_service(tmp_dir, {"manager": "compose", "compose_dir": missing, "state": "stopped",
                                   "services": ["api"]})
    assert result["msg"] == "compose_dir %s does not exist or is not a directory" % missing

    result = run_service(tmp_dir, {"manager": "compose", "compose_dir": tmp_dir})
    assert result["msg"] == ("compose_dir %s holds none of compose.yaml, compose.yml, docker-compose.yml, "
                             "docker-compose.yaml" % tmp_dir)

    result = run_service(tmp_dir, {"manager": "compose", "state": "up"})
    assert result["failed"] is True
    assert "compose_dir" in result["msg"]


def _units(state_file):
    with open(state_file, encoding="utf-8") as handle:
        return json.load(handle)


def test_systemd_units_through_a_standin_systemctl(tmp_dir):
    state_file = os.path.join(tmp_dir, "units.json")
    with open(state_file, "w", encoding="utf-8") as handle:
        json.dump({"calls": [], "units": {
            "christmas-api.service": {"state": "active", "log": []},
            "redis-server.service": {"state": "inactive", "log": []},
            "timescaledb.service": {"state": "inactive", "log": [], "stuck": True}}}, handle)
    env = {"PATH": STANDIN_BIN + os.pathsep + os.environ["PATH"], "SYSTEMCTL_STANDIN_STATE": state_file}
    base = {"manager": "systemd", "services": ["christmas-api.service", "redis-server.service"]}

    dry = run_service(tmp_dir, dict(base, state="stopped"), check=True, env=env)
    assert (dry["changed"], dry["commands"]) == (True, ["systemctl stop christmas-api.service"])
    assert _units(state_file)["units"]["christmas-api.service"]["state"] == "active"
    assert all(call[1] == "show" for call in _units(state_file)["calls"])

    stopped = run_service(tmp_dir, dict(base, state="stopped"), env=env)
    assert stopped["changed"] is True
    assert {name: unit["state"] for name, unit in _units(state_file)["units"].items()} == {
        "christmas-api.service": "inactive", "redis-server.service": "inactive", "timescaledb.service": "inactive"}
    assert run_service(tmp_dir, dict(base, state="stopped"), env=env)["changed"] is False

    started = run_service(tmp_dir, dict(base, state="started", logs_lines=1), env=env)
    assert started["commands"] == ["systemctl start christmas-api.service redis-server.service"]
    units = _units(state_file)["units"]
    assert units["christmas-api.service"]["state"] == units["redis-server.service"]["state"] == "active"
    assert started["logs"] == {"christmas-api.service": "Started christmas-api.service.\n",
                               "redis-server.service": "Started redis-server.service.\n"}

    stuck = run_service(tmp_dir, {"manager": "systemd", "services": ["timescaledb.service"], "state": "started",
                                  "timeout": 1}, env=env)
    assert stuck["msg"] == ("service timescaledb.service is activating, not running, 1 s after: "
                            "systemctl start timescaledb.service")


def test_redis_procedure_restarts_the_redis_unit_under_systemd(run_playbook, make_redis, tmp_dir):
    """The role's Redis procedure with the systemd manager: the real Redis is restored, the (stand-in) unit restarted,
    and the units' states are part of the validation."""
    server = make_redis()
    expected = seed_redis(server)
    state_file = os.path.join(tmp_dir, "units.json")
    with open(state_file, "w", encoding="utf-8") as handle:
        json.dump({"calls": [], "units": {name: {"state": "active", "log": []} for name in (
            "timescaledb.service", "redis-server.service", "christmas-api.service")}}, handle)
    env = {"PATH": STANDIN_BIN + os.pathsep + os.environ["PATH"], "SYSTEMCTL_STANDIN_STATE": state_file}
    host_vars = dict(connection_vars(redis_server=server, backup_dir=os.path.join(tmp_dir, "backups")),
                     christmas_service_manager="systemd", christmas_db_service="timescaledb.service",
                     christmas_redis_service="redis-server.service", christmas_app_services=["christmas-api.service"])
    run_playbook("backup", host_vars, {"skip_db": True, "skip_config": True}, env=env)
    server.client().flushall()

    run_playbook("restore_redis", host_vars, env=env)

    assert redis_state(server) == expected
    calls = _units(state_file)["calls"]
    assert ["journalctl", "-u", "redis-server.service", "-n", "30", "--no-pager"] in calls  # state and logs first
    assert [call for call in calls if call[0] == "systemctl" and call[1] != "show"] == [
        ["systemctl", "restart", "redis-server.service"]]

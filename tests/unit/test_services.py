"""Service control without running anything: command construction per compose flavour and for systemd, the engine
choice, state parsing from real ``inspect`` samples, and the wait that does not trust exit codes. Commands go to a
STAND-IN runner that plays the container engine, compose and systemctl from a table in memory."""

from __future__ import annotations

import json
import os
import pwd

import pytest

from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.platform import services
from ansible_collections.christmas.recovery.plugins.module_utils.platform.pg_service import ComposeServer
from ansible_collections.christmas.recovery.plugins.module_utils.platform.services import (
    Finished,
    converge,
    engine_for,
    parse_container,
    service_manager,
    service_state,
)

COMPOSE_YAML = "services:\n  timescaledb:\n    image: x\n  redis:\n    image: x\n  api:\n    image: x\n"

# Excerpts of real `inspect` output (only the fields we read, with their neighbours).
DOCKER_INSPECT = {
    "Id": "5d2c0b7e4a1f" + "0" * 52,
    "Name": "/christmas-api-1",
    "State": {"Status": "running", "Running": True, "Paused": False, "Restarting": False, "Pid": 4242,
              "StartedAt": "2026-11-26T03:00:01.123456789Z", "FinishedAt": "0001-01-01T00:00:00Z"},
    "Config": {"Labels": {"com.docker.compose.project": "christmas", "com.docker.compose.service": "api",
                          "com.docker.compose.project.working_dir": "/srv/christmas",
                          "com.docker.compose.container-number": "1", "com.docker.compose.oneoff": "False"}},
}
PODMAN_INSPECT = {
    "Id": "c32eb1c39b3a" + "1" * 52,
    "Name": "christmas_redis_1",
    "State": {"OciVersion": "1.0.2-dev", "Status": "exited", "Running": False, "Paused": False, "Pid": 0,
              "ExitCode": 137, "StartedAt": "2026-11-26T06:58:04.375647086Z"},
    "Config": {"Labels": {"com.docker.compose.project": "christmas", "com.docker.compose.service": "redis",
                          "com.docker.compose.project.working_dir": "/srv/christmas",
                          "io.podman.compose.project": "christmas"}},
}


class StandInRunner:
    """STAND-IN for SubprocessRunner: records every argv and plays the engine, compose and systemctl from memory.

    ``obey=False`` makes compose and systemctl exit 0 and change nothing, as podman-compose 1.0.3 does when podman
    fails; ``fail`` maps a verb to a failing Finished."""

    def __init__(self, project_dir="", engine="podman", compose=("podman-compose",), obey=True):
        self.project_dir, self.engine, self.compose, self.obey = project_dir, engine, list(compose), obey
        self.calls, self.containers, self.units, self.fail, self.clock = [], {}, {}, {}, 0

    def add(self, service, status="running", project_dir=None, oneoff=False):
        self.clock += 1
        container_id = "%012x" % (len(self.containers) + 1)
        labels = {services.SERVICE_LABEL: service, services.WORKING_DIR_LABEL: project_dir or self.project_dir}
        if oneoff:
            labels[services.ONEOFF_LABEL] = "True"
        self.containers[container_id] = {"Id": container_id, "Config": {"Labels": labels},
                                         "State": {"Status": status, "Running": status == "running",
                                                   "StartedAt": "t%d" % self.clock}}
        return container_id

    def of(self, service):
        return [doc for doc in self.containers.values()
                if doc["Config"]["Labels"][services.SERVICE_LABEL] == service]

    def run(self, argv, cwd=None, merge_output=False):
        self.calls.append(list(argv))
        verb = argv[len(self.compose)] if argv[:len(self.compose)] == self.compose else argv[1]
        if verb in self.fail:
            return self.fail[verb]
        if argv[:len(self.compose)] == self.compose:
            if self.obey:
                self._compose(verb, [arg for arg in argv[len(self.compose) + 1:] if not arg.startswith("-")])
            return Finished(0, "", "")
        if argv[0] == self.engine:
            return self._engine(argv[1], argv[2:])
        if argv[0] == "systemctl":
            return self._systemctl(verb, argv[2:])
        return Finished(0, "log of %s\n" % argv[2], "")  # journalctl

    def _engine(self, verb, args):
        if verb == "ps":
            wanted = args[-1].split("=", 2)[2]
            ids = [cid for cid, doc in self.containers.items()
                   if doc["Config"]["Labels"][services.WORKING_DIR_LABEL] == wanted]
            return Finished(0, "".join(cid + "\n" for cid in ids), "")
        if verb == "inspect":
            missing = [cid for cid in args if cid not in self.containers]
            if missing:
                return Finished(125, "[]", "Error: no such object: %r" % missing[0])
            return Finished(0, json.dumps([self.containers[cid] for cid in args]), "")
        if verb == "kill":
            for cid in args[2:]:  # after --signal KILL
                self.containers[cid]["State"].update(Status="exited", Running=False)
            return Finished(0, "".join(cid + "\n" for cid in args[2:]), "")
        return Finished(0, "%s line\n" % args[-1], "")  # logs

    def _compose(self, verb, names):
        names = names or ["api", "redis", "timescaledb"]  # what COMPOSE_YAML declares
        if verb == "down":
            self.containers.clear()
            return
        for name in names:
            if verb == "up" and not self.of(name):
                self.add(name)
            for doc in self.of(name):
                if verb == "stop":
                    doc["State"].update(Status="exited", Running=False)
                elif verb in ("up", "restart") and (verb == "restart" or not doc["State"]["Running"]):
                    self.clock += 1
                    doc["State"].update(Status="running", Running=True, StartedAt="t%d" % self.clock)

    def _systemctl(self, verb, args):
        if verb == "show":
            return Finished(0, self.units.get(args[-1], "inactive") + "\n", "")
        if self.obey:
            for unit in (arg for arg in args if not arg.startswith("-")):
                self.units[unit] = {"stop": "inactive", "kill": "failed"}.get(verb, "active")
        return Finished(0, "", "")

    def commands(self):
        """The calls that change something."""
        return [argv for argv in self.calls if argv[:len(self.compose)] == self.compose
                or argv[:2] in (["systemctl", "stop"], ["systemctl", "start"], ["systemctl", "restart"],
                                ["systemctl", "kill"], [self.engine, "kill"])]


@pytest.fixture
def project(tmp_dir):
    path = os.path.join(tmp_dir, "christmas")
    os.mkdir(path)
    with open(os.path.join(path, "compose.yaml"), "w", encoding="utf-8") as handle:
        handle.write(COMPOSE_YAML)
    return path


def _compose(project, command="podman-compose", obey=True, timeout=0):
    runner = StandInRunner(os.path.realpath(project), engine_for(command.split()), command.split(), obey)
    return service_manager("compose", project, command, timeout=timeout, runner=runner), runner


@pytest.mark.parametrize(("command", "engine"), [
    ("docker compose", "docker"), ("docker-compose", "docker"), ("podman-compose", "podman"),
    ("podman compose", "podman"), ("/usr/bin/podman-compose", "podman"), ("/usr/local/bin/docker-compose", "docker"),
])
def test_engine_is_podman_only_for_podman_compose_commands(command, engine):
    assert engine_for(command.split()) == engine


@pytest.mark.parametrize("command", ["docker compose", "docker-compose", "podman-compose", "podman compose",
                                     "docker compose --ansi never"])
def test_compose_commands_for_each_flavour(project, command):
    manager, _runner = _compose(project, command)
    prefix = command.split()
    assert manager.commands_for("stop", ["api", "redis"]) == [prefix + ["stop", "api", "redis"]]
    assert manager.commands_for("start", ["api"]) == [prefix + ["up", "-d", "api"]]
    assert manager.commands_for("restart", ["api"]) == [prefix + ["restart", "api"]]
    assert manager.commands_for("down", []) == [prefix + ["down"]]
    assert manager.commands_for("up", []) == [prefix + ["up", "-d"]]
    assert manager.commands_for("up", ["redis"]) == [prefix + ["up", "-d", "redis"]]


def test_compose_refuses_unknown_services_actions_and_missing_names(project):
    manager, _runner = _compose(project)
    with pytest.raises(RecoveryError, match=r"unknown service apii: .*compose.yaml declares api, redis, timescaledb"):
        manager.commands_for("stop", ["apii"])
    with pytest.raises(RecoveryError, match="name the services to restart"):
        manager.commands_for("restart", [])
    with pytest.raises(RecoveryError, match="unknown service action 'pause'"):
        manager.commands_for("pause", ["api"])
    with pytest.raises(RecoveryError, match="name the services to kill"):
        manager.commands_for("kill", [])


def test_systemd_commands():
    manager = service_manager("systemd", runner=StandInRunner())
    units = ["christmas-api.service", "redis-server.service"]
    assert manager.commands_for("stop", units) == [["systemctl", "stop", *units]]
    assert manager.commands_for("down", units) == [["systemctl", "stop", *units]]
    assert manager.commands_for("start", units) == [["systemctl", "start", *units]]
    assert manager.commands_for("up", units) == [["systemctl", "start", *units]]
    assert manager.commands_for("restart", units) == [["systemctl", "restart", *units]]
    with pytest.raises(RecoveryError, match="name the systemd units to up"):
        manager.commands_for("up", [])


def test_state_parsing_from_docker_and_podman_inspect_samples():
    assert parse_container(DOCKER_INSPECT) == {"service": "api", "id": DOCKER_INSPECT["Id"], "status": "running",
                                               "running": True, "started_at": "2026-11-26T03:00:01.123456789Z",
                                               "mounts": []}
    mounted = json.loads(json.dumps(DOCKER_INSPECT))
    mounted["Mounts"] = [{"Type": "volume", "Source": "/var/lib/docker/volumes/c_pgdata/_data",
                          "Destination": "/var/lib/postgresql/data"}, "not a mount"]
    assert parse_container(mounted)["mounts"] == [("/var/lib/docker/volumes/c_pgdata/_data",
                                                   "/var/lib/postgresql/data")]
    podman = parse_container(PODMAN_INSPECT)
    assert (podman["service"], podman["status"], podman["running"]) == ("redis", "exited", False)
    paused = json.loads(json.dumps(DOCKER_INSPECT))
    paused["State"].update(Status="paused", Paused=True)
    assert parse_container(paused)["running"] is False
    oneoff = json.loads(json.dumps(DOCKER_INSPECT))
    oneoff["Config"]["Labels"]["com.docker.compose.oneoff"] = "True"
    assert parse_container(oneoff) is None  # `compose run` containers are not the service
    assert parse_container({"Id": "x", "Config": {"Labels": None}, "State": {}}) is None


def test_a_compose_server_maps_host_paths_through_its_containers_mounts_and_names_what_is_missing(project, tmp_dir):
    manager, runner = _compose(project)
    volume, backups = os.path.join(tmp_dir, "volume"), os.path.join(tmp_dir, "backups")
    os.makedirs(os.path.join(volume, "pgdata"))
    os.mkdir(backups)
    user = pwd.getpwuid(os.stat(volume).st_uid).pw_name
    container = runner.add("timescaledb")
    runner.containers[container]["Mounts"] = [{"Source": volume, "Destination": "/var/lib/postgresql/data"},
                                              {"Source": backups, "Destination": backups}]
    server = ComposeServer(manager, "timescaledb", os.path.join(volume, "pgdata"), os_user=user)
    assert server.pg1_path == "/var/lib/postgresql/data/pgdata"
    assert server.inside(os.path.join(backups, "pgbackrest")) == os.path.join(backups, "pgbackrest")
    assert server.inside(volume + "x") is None
    assert server.problem([os.path.join(backups, "pgbackrest")]) is None
    assert server.in_server(["psql", "-c", "SELECT 1"]) == ["podman", "exec", "-u", user, container, "psql", "-c",
                                                            "SELECT 1"]
    elsewhere = os.path.join(tmp_dir, "elsewhere", "pgbackrest")
    assert server.problem([elsewhere]).startswith("%s is not mounted into the container of compose service "
                                                  "timescaledb at the same path" % elsewhere)
    outside = ComposeServer(manager, "timescaledb", os.path.join(tmp_dir, "pgdata"), os_user=user)
    assert "is not in a volume of the container" in outside.problem([])
    runner.containers[container]["State"].update(Status="exited", Running=False)
    with pytest.raises(RecoveryError, match="compose service timescaledb is exited: it must run for psql"):
        server.in_server(["psql"])
    runner.containers[container]["State"].update(Status="running", Running=True)
    other = [entry.pw_name for entry in pwd.getpwall() if entry.pw_uid != os.stat(volume).st_uid][0]
    wrong = ComposeServer(manager, "timescaledb", os.path.join(volume, "pgdata"), os_user=other)
    assert "set christmas_pg_os_user to this host's user of uid %d" % os.stat(volume).st_uid in wrong.problem([])


def test_service_runs_only_when_all_its_containers_run():
    running = {"running": True, "status": "running"}
    exited = {"running": False, "status": "exited"}
    assert service_state([]) == {"running": False, "state": "missing"}
    assert service_state([running, running]) == {"running": True, "state": "running"}
    assert service_state([running, exited]) == {"running": False, "state": "exited"}


def test_status_asks_the_engine_by_the_realpath_working_dir_label(project, tmp_dir):
    link = os.path.join(tmp_dir, "link")
    os.symlink(project, link)
    manager, runner = _compose(link)
    runner.add("api")
    runner.add("redis", status="exited")
    runner.add("api", project_dir="/elsewhere")  # another project's container
    runner.add("api", status="exited", oneoff=True)
    assert manager.status([]) == {"api": {"running": True, "state": "running"},
                                  "redis": {"running": False, "state": "exited"},
                                  "timescaledb": {"running": False, "state": "missing"}}
    assert runner.calls[0] == ["podman", "ps", "-a", "-q", "--filter",
                               "label=com.docker.compose.project.working_dir=" + os.path.realpath(project)]
    assert runner.calls[1][:2] == ["podman", "inspect"]
    assert manager.status(["redis"]) == {"redis": {"running": False, "state": "exited"}}


def test_status_survives_a_container_removed_between_ps_and_inspect(project):
    manager, runner = _compose(project)
    runner.add("api")
    original = runner.run

    def vanishing(argv, cwd=None, merge_output=False):
        result = original(argv, cwd, merge_output)
        if argv[1] == "ps":
            result = Finished(0, result.stdout + "deadbeef0000\n", "")
        return result

    runner.run = vanishing
    assert manager.status(["api"]) == {"api": {"running": True, "state": "running"}}


def test_apply_runs_the_commands_and_waits_for_the_state(project):
    manager, runner = _compose(project, "docker compose", timeout=5)
    runner.add("api")
    runner.add("redis")
    assert manager.apply("stop", ["api"]) == ["docker compose stop api"]
    assert manager.status(["api", "redis"]) == {"api": {"running": False, "state": "exited"},
                                                "redis": {"running": True, "state": "running"}}
    assert manager.apply("down", []) == ["docker compose down"]
    assert runner.containers == {}
    assert manager.apply("start", ["api"]) == ["docker compose up -d api"]
    assert manager.status(["api"])["api"]["running"]


def test_stop_that_exits_0_but_changes_nothing_fails_naming_service_state_and_command(project):
    manager, runner = _compose(project, obey=False)
    runner.add("api")
    with pytest.raises(RecoveryError) as caught:
        manager.apply("stop", ["api"])
    assert str(caught.value) == "service api is running, not stopped, 0 s after: podman-compose stop api"


def test_start_of_a_service_that_never_comes_up_fails(project):
    manager, runner = _compose(project, obey=False)
    runner.add("api", status="exited")
    with pytest.raises(RecoveryError, match=r"^service api is exited, not running, 0 s after: "
                                            r"podman-compose up -d api$"):
        manager.apply("start", ["api"])


def test_restart_that_restarts_nothing_is_an_error(project):
    manager, runner = _compose(project, obey=False)
    runner.add("redis")
    with pytest.raises(RecoveryError, match=r"^service redis is running but was not restarted 0 s after: "
                                            r"podman-compose restart redis$"):
        manager.apply("restart", ["redis"])


def test_nonzero_exit_reports_the_last_stderr_line(project):
    manager, runner = _compose(project)
    runner.fail["stop"] = Finished(1, "", "pulling...\nError response from daemon: cannot stop container\n")
    with pytest.raises(RecoveryError) as caught:
        manager.apply("stop", ["api"])
    assert str(caught.value) == ("podman-compose stop api failed (exit 1): Error response from daemon: "
                                 "cannot stop container")


def test_systemd_status_apply_and_wait():
    runner = StandInRunner()
    manager = service_manager("systemd", timeout=0, runner=runner)
    runner.units["redis-server.service"] = "active"
    assert manager.status(["redis-server.service", "christmas-api.service"]) == {
        "redis-server.service": {"running": True, "state": "active"},
        "christmas-api.service": {"running": False, "state": "inactive"}}
    assert runner.calls[0] == ["systemctl", "show", "--property=ActiveState", "--value", "redis-server.service"]
    assert manager.apply("start", ["christmas-api.service"]) == ["systemctl start christmas-api.service"]
    assert manager.logs("christmas-api.service", 5) == "log of christmas-api.service\n"
    assert runner.calls[-1] == ["journalctl", "-u", "christmas-api.service", "-n", "5", "--no-pager"]
    runner.obey = False
    with pytest.raises(RecoveryError, match=r"^service redis-server.service is active, not stopped, 0 s after: "
                                            r"systemctl stop redis-server.service$"):
        manager.apply("stop", ["redis-server.service"])


def test_none_manager_reads_and_runs_nothing():
    manager = service_manager("none")
    assert manager.status(["api"]) == {}
    assert manager.commands_for("stop", ["api"]) == []
    assert manager.apply("stop", ["api"]) == []
    assert converge(manager, "stopped", ["api"]) == {"manager": "none", "before": {}, "services": {},
                                                     "commands": [], "changed": False}


def test_bad_manager_settings_fail_with_one_line(tmp_dir):
    with pytest.raises(RecoveryError, match="compose_dir is required"):
        service_manager("compose")
    with pytest.raises(RecoveryError, match="compose_dir /no/such/dir does not exist"):
        service_manager("compose", "/no/such/dir")
    with pytest.raises(RecoveryError, match="holds none of compose.yaml, compose.yml"):
        service_manager("compose", tmp_dir)
    with open(os.path.join(tmp_dir, "docker-compose.yml"), "w", encoding="utf-8") as handle:
        handle.write("services: [")
    with pytest.raises(RecoveryError, match="compose_command is empty"):
        service_manager("compose", tmp_dir, "  ")
    with pytest.raises(RecoveryError, match="cannot read .*docker-compose.yml"):
        service_manager("compose", tmp_dir, runner=StandInRunner()).declared_services()
    with pytest.raises(RecoveryError, match="unknown service manager 'k8s'"):
        service_manager("k8s")


def test_converge_starts_and_stops_only_what_needs_it(project):
    manager, runner = _compose(project, timeout=5)
    runner.add("api")
    runner.add("redis", status="exited")
    result = converge(manager, "started", ["api", "redis"])
    assert (result["changed"], result["commands"]) == (True, ["podman-compose up -d redis"])
    assert result["before"]["redis"] == {"running": False, "state": "exited"}
    assert result["services"]["redis"] == {"running": True, "state": "running"}
    assert converge(manager, "started", ["api", "redis"])["changed"] is False
    assert converge(manager, "stopped", ["redis"])["commands"] == ["podman-compose stop redis"]
    assert converge(manager, "stopped", ["redis"])["changed"] is False
    assert converge(manager, "restarted", ["api"])["commands"] == ["podman-compose restart api"]
    with pytest.raises(RecoveryError, match="services is required for state=restarted with the compose manager"):
        converge(manager, "restarted", [])


def test_check_mode_reports_commands_and_runs_none(project):
    manager, runner = _compose(project)
    runner.add("api")
    result = converge(manager, "stopped", ["api"], logs_lines=3, check_mode=True)
    assert result["commands"] == ["podman-compose stop api"]
    assert result["changed"] is True
    assert result["services"] == result["before"] == {"api": {"running": True, "state": "running"}}
    assert result["logs"] == {"api": "%s line\n" % next(iter(runner.containers))}
    assert runner.commands() == []
    assert converge(manager, "down", [], check_mode=True)["commands"] == ["podman-compose down"]
    assert runner.commands() == []


def test_down_changes_only_when_containers_exist_and_up_only_when_something_is_down(project):
    manager, runner = _compose(project, timeout=5)
    assert converge(manager, "down", [])["changed"] is False
    up = converge(manager, "up", [])
    assert (up["changed"], up["commands"]) == (True, ["podman-compose up -d"])
    assert set(up["services"]) == {"api", "redis", "timescaledb"}
    assert all(entry["running"] for entry in up["services"].values())
    assert converge(manager, "up", [])["changed"] is False
    runner.containers[next(iter(runner.containers))]["State"].update(Status="exited", Running=False)
    down = converge(manager, "down", ["api"])  # down is the whole project whatever is listed
    assert (down["changed"], down["commands"]) == (True, ["podman-compose down"])
    assert set(down["before"]) == {"api", "redis", "timescaledb"}
    assert runner.containers == {}


def test_systemd_converge_needs_units_for_up_and_down():
    manager = service_manager("systemd", runner=StandInRunner())
    assert converge(manager, "status", [])["services"] == {}
    with pytest.raises(RecoveryError, match="services is required for state=down with the systemd manager"):
        converge(manager, "down", [])


def test_killed_sends_sigkill_through_the_engine_to_running_containers_only(project):
    manager, runner = _compose(project, timeout=5)
    api = runner.add("api")
    runner.add("redis", status="exited")
    check = converge(manager, "killed", ["api", "redis"], check_mode=True)
    assert check["commands"] == ["podman kill --signal KILL %s" % api] and runner.commands() == []

    killed = converge(manager, "killed", ["api", "redis"])

    assert killed["commands"] == ["podman kill --signal KILL %s" % api]
    assert runner.containers[api]["State"]["Status"] == "exited"
    assert killed["services"]["api"] == {"running": False, "state": "exited"}
    assert converge(manager, "killed", ["api"])["changed"] is False  # nothing runs any more
    with pytest.raises(RecoveryError, match="services is required for state=killed with the compose manager"):
        converge(manager, "killed", [])


def test_killed_with_systemd_is_systemctl_kill_sigkill():
    runner = StandInRunner()
    runner.units["christmas-api.service"] = "active"
    manager = service_manager("systemd", timeout=0, runner=runner)
    result = converge(manager, "killed", ["christmas-api.service"])
    assert result["commands"] == ["systemctl kill --signal=SIGKILL christmas-api.service"]
    assert result["services"] == {"christmas-api.service": {"running": False, "state": "failed"}}

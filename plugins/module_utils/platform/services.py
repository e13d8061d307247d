# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Stopping and starting the platform's services around a restore: a compose project, systemd units, or nothing.

Every manager reads state (``status``, ``logs``), predicts what it would run (``commands_for``) and runs it
(``apply``), then waits until the services really are in the wanted state: exit codes alone are not trusted
(podman-compose 1.0.3 exits 0 when podman failed).
"""

from __future__ import annotations

import collections
import json
import os
import shlex
import subprocess
import time

import yaml

from ansible_collections.christmas.recovery.plugins.module_utils.core.commands import child_env
from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError

MANAGERS = ("compose", "systemd", "none")
ACTIONS = ("stop", "start", "restart", "down", "up", "kill")
STATES = ("status", "started", "stopped", "restarted", "down", "up", "killed")
COMPOSE_FILES = ("compose.yaml", "compose.yml", "docker-compose.yml", "docker-compose.yaml")
WORKING_DIR_LABEL = "com.docker.compose.project.working_dir"
SERVICE_LABEL = "com.docker.compose.service"
ONEOFF_LABEL = "com.docker.compose.oneoff"
POLL_SECONDS = 0.5

Finished = collections.namedtuple("Finished", "returncode stdout stderr")


class SubprocessRunner:
    """Runs argv lists with our environment (CONTAINERS_CONF, DOCKER_HOST... pass through)."""

    def run(self, argv, cwd=None, merge_output=False):
        try:
            proc = subprocess.run(argv, cwd=cwd, env=child_env({}), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT if merge_output else subprocess.PIPE, check=False)
        except FileNotFoundError:
            raise RecoveryError("%s not found on PATH (needed for: %s)" % (argv[0], shlex.join(argv))) from None
        return Finished(proc.returncode, proc.stdout.decode("utf-8", "replace"),
                        (proc.stderr or b"").decode("utf-8", "replace"))


def service_manager(kind, compose_dir=None, compose_command="docker compose", timeout=60, runner=None):
    """The manager of ``kind`` (one of MANAGERS); ``runner`` replaces SubprocessRunner (tests)."""
    runner = runner or SubprocessRunner()
    if kind == "compose":
        return ComposeManager(compose_dir, compose_command, timeout, runner)
    if kind == "systemd":
        return SystemdManager(timeout, runner)
    if kind == "none":
        return NoManager()
    raise RecoveryError("unknown service manager %r (choose one of %s)" % (kind, ", ".join(MANAGERS)))


def _last_line(text):
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def _check_action(action):
    if action not in ACTIONS:
        raise RecoveryError("unknown service action %r (choose one of %s)" % (action, ", ".join(ACTIONS)))


class NoManager:
    """Services are not ours to control: nothing is read, nothing is run."""

    kind = "none"

    def status(self, names):
        return {}

    def logs(self, name, lines):
        return ""

    def scope(self, action, names):
        return []

    def commands_for(self, action, names):
        _check_action(action)
        return []

    def apply(self, action, names):
        _check_action(action)
        return []

    def is_present(self, entry):
        return False

    def check_names(self, names):
        """Any name will do: nothing is looked up."""


class _WaitingManager:
    """What compose and systemd share: run the commands, then poll until every affected service got there."""

    kind = None

    def __init__(self, timeout, runner, cwd=None):
        self.timeout, self.runner, self.cwd = timeout, runner, cwd

    def _run(self, argv, merge_output=False):
        result = self.runner.run(argv, cwd=self.cwd, merge_output=merge_output)
        if result.returncode != 0:
            raise RecoveryError("%s failed (exit %s): %s" % (shlex.join(argv), result.returncode,
                                                             _last_line(result.stderr or result.stdout)))
        return result.stdout

    def is_present(self, entry):
        """Whether ``down`` has anything to do for this service."""
        return entry["running"]

    def check_names(self, names):
        """systemctl itself refuses unknown units."""

    def _markers(self, names):
        """Per service, what changes when it is restarted (None: nothing we can see)."""
        return {}

    def apply(self, action, names):
        names = list(names)
        commands = self.commands_for(action, names)
        affected = self.scope(action, names)
        before = self._markers(affected) if action == "restart" else {}
        ran = []
        for argv in commands:
            self._run(argv)
            ran.append(shlex.join(argv))
        # A kill is not waited for: a restart policy may bring the service back before anyone sees it down.
        if ran and action != "kill":
            self._wait(affected, action in ("start", "restart", "up"), before, ran[-1])
        return ran

    def _wait(self, names, want_running, before, command):
        deadline = time.monotonic() + self.timeout
        while True:
            current = self.status(names)
            markers = self._markers(names) if before else {}
            lagging = [name for name in names if current[name]["running"] != want_running
                       or (before and markers.get(name) == before.get(name))]
            if not lagging:
                return
            if time.monotonic() >= deadline:
                name = lagging[0]
                if current[name]["running"] == want_running:
                    problem = "is %s but was not restarted" % current[name]["state"]
                else:
                    problem = "is %s, not %s," % (current[name]["state"], "running" if want_running else "stopped")
                raise RecoveryError("service %s %s %s s after: %s" % (name, problem, self.timeout, command))
            time.sleep(POLL_SECONDS)


class ComposeManager(_WaitingManager):
    """A compose project (docker compose v2, docker-compose v1, podman-compose, podman compose). Per-service state is
    read from the container engine through the labels all of them set, not from ``ps`` tables that differ."""

    kind = "compose"

    def __init__(self, compose_dir, compose_command, timeout, runner):
        if not compose_dir:
            raise RecoveryError("compose_dir is required for the compose service manager")
        if not os.path.isdir(compose_dir):
            raise RecoveryError("compose_dir %s does not exist or is not a directory" % compose_dir)
        found = [name for name in COMPOSE_FILES if os.path.isfile(os.path.join(compose_dir, name))]
        if not found:
            raise RecoveryError("compose_dir %s holds none of %s" % (compose_dir, ", ".join(COMPOSE_FILES)))
        self.compose_file = os.path.join(compose_dir, found[0])
        self.command = shlex.split(compose_command or "")
        if not self.command:
            raise RecoveryError("compose_command is empty (e.g. 'docker compose' or 'podman-compose')")
        super().__init__(timeout, runner, cwd=compose_dir)
        self.project_dir = os.path.realpath(compose_dir)
        self.engine = engine_for(self.command)

    def declared_services(self):
        try:
            with open(self.compose_file, encoding="utf-8") as handle:
                document = yaml.safe_load(handle)
        except (OSError, yaml.YAMLError) as err:
            raise RecoveryError("cannot read %s: %s" % (self.compose_file, _last_line(str(err)))) from None
        services = document.get("services") if isinstance(document, dict) else None
        if not isinstance(services, dict):
            raise RecoveryError("%s has no services: mapping" % self.compose_file)
        return sorted(str(name) for name in services)

    def check_names(self, names):
        """Refuse a service the compose file does not declare: a typo must not read as a stopped service."""
        declared = self.declared_services()
        unknown = [name for name in names if name not in declared]
        if unknown:
            raise RecoveryError("unknown service %s: %s declares %s" % (", ".join(unknown), self.compose_file,
                                                                       ", ".join(declared)))

    def containers(self):
        """The project's containers: service, id, engine status, running, started_at."""
        listed = self._run([self.engine, "ps", "-a", "-q", "--filter",
                            "label=%s=%s" % (WORKING_DIR_LABEL, self.project_dir)]).split()
        if not listed:
            return []
        result = self.runner.run([self.engine, "inspect", *listed], cwd=self.cwd)
        if result.returncode == 0:
            documents = json.loads(result.stdout)
        else:  # one was removed between the two calls (a down under way): take those still there
            documents = []
            for container_id in listed:
                single = self.runner.run([self.engine, "inspect", container_id], cwd=self.cwd)
                if single.returncode == 0:
                    documents.extend(json.loads(single.stdout))
        return [entry for entry in map(parse_container, documents) if entry]

    def status(self, names):
        by_service = collections.defaultdict(list)
        for container in self.containers():
            by_service[container["service"]].append(container)
        names = list(names) or sorted(set(self.declared_services()) | set(by_service))
        return {name: service_state(by_service.get(name, [])) for name in names}

    def is_present(self, entry):
        return entry["state"] != "missing"

    def _markers(self, names):
        by_service = collections.defaultdict(list)
        for container in self.containers():
            by_service[container["service"]].append((container["id"], container["started_at"]))
        return {name: sorted(by_service.get(name, [])) for name in names}

    def logs(self, name, lines):
        """The last ``lines`` lines of each of the service's containers, stdout and stderr merged. The engine is
        asked, not ``compose logs``: podman-compose 1.0.3 mixes its own chatter into that output."""
        texts = [self._run([self.engine, "logs", "--tail", str(lines), container["id"]], merge_output=True)
                 for container in self.containers() if container["service"] == name]
        return "".join(texts)

    def service_container(self, name):
        """The one container of service ``name`` (running or not), as ``containers`` lists it."""
        found = [container for container in self.containers() if container["service"] == name]
        if len(found) != 1:
            raise RecoveryError("compose service %s has %s containers in %s: expected one" % (
                name, len(found) or "no", self.project_dir))
        return found[0]

    def exec_argv(self, name, user, argv):
        """``argv`` run as ``user`` inside the running container of service ``name`` (through the engine: its exec
        takes no TTY unless asked, where compose implementations differ)."""
        container = self.service_container(name)
        if not container["running"]:
            raise RecoveryError("compose service %s is %s: it must run for %s" % (name, container["status"],
                                                                                 os.path.basename(argv[0])))
        return [self.engine, "exec", "-u", user, container["id"], *argv]

    def scope(self, action, names):
        if action == "down":
            return list(self.status([]))
        return list(names) or self.declared_services()

    def commands_for(self, action, names):
        _check_action(action)
        names = list(names)
        if action in ("stop", "start", "restart", "kill") and not names:
            raise RecoveryError("name the services to %s" % action)
        self.check_names(names)
        if action == "down":
            return [self.command + ["down"]]  # never -v: the volumes hold the data
        if action == "kill":  # through the engine: not every compose implementation has kill (podman-compose 1.0)
            ids = [container["id"] for container in self.containers()
                   if container["service"] in names and container["running"]]
            return [[self.engine, "kill", "--signal", "KILL", *ids]] if ids else []
        if action in ("start", "up"):  # up, not start: start fails when down removed the containers
            return [self.command + ["up", "-d"] + names]
        return [self.command + [action] + names]


def engine_for(command):
    """The container engine behind a compose command: podman for podman-compose and podman compose."""
    return "podman" if "podman" in os.path.basename(command[0]) else "docker"


def parse_container(document):
    """One ``inspect`` document as {service, id, status, running, started_at, mounts: [(host path, path inside)]};
    None for one-off or foreign ones."""
    labels = (document.get("Config") or {}).get("Labels") or {}
    service = labels.get(SERVICE_LABEL)
    if not service or str(labels.get(ONEOFF_LABEL, "")).lower() == "true":
        return None
    state = document.get("State") or {}
    status = str(state.get("Status") or "unknown").lower()
    mounts = [(str(mount.get("Source") or ""), str(mount.get("Destination") or ""))
              for mount in document.get("Mounts") or [] if isinstance(mount, dict)]
    return {"service": service, "id": document.get("Id", ""), "status": status,
            "running": bool(state.get("Running")) and status == "running", "started_at": state.get("StartedAt"),
            "mounts": mounts}


def service_state(containers):
    """A service runs only if it has containers and all of them run; its state is that of the first that does not."""
    if not containers:
        return {"running": False, "state": "missing"}
    stopped = [container["status"] for container in containers if not container["running"]]
    return {"running": not stopped, "state": stopped[0] if stopped else "running"}


class SystemdManager(_WaitingManager):
    """systemd units; running means ActiveState is active."""

    kind = "systemd"

    def status(self, names):
        states = {}
        for unit in names:
            state = self._run(["systemctl", "show", "--property=ActiveState", "--value", unit]).strip() or "unknown"
            states[unit] = {"running": state == "active", "state": state}
        return states

    def logs(self, name, lines):
        return self._run(["journalctl", "-u", name, "-n", str(lines), "--no-pager"], merge_output=True)

    def scope(self, action, names):
        return list(names)

    def commands_for(self, action, names):
        _check_action(action)
        if not names:
            raise RecoveryError("name the systemd units to %s" % action)
        if action == "kill":
            return [["systemctl", "kill", "--signal=SIGKILL", *names]]
        verb = {"down": "stop", "up": "start"}.get(action, action)
        return [["systemctl", verb, *names]]


def converge(manager, state, services=(), logs_lines=0, check_mode=False):
    """Bring ``services`` to ``state`` (one of STATES); the module's whole work. Check mode runs nothing."""
    if state not in STATES:
        raise RecoveryError("unknown state %r (choose one of %s)" % (state, ", ".join(STATES)))
    services = list(services)
    needs_names = (state in ("started", "stopped", "restarted", "killed")
                   or (state != "status" and manager.kind == "systemd"))
    if needs_names and not services and manager.kind != "none":
        raise RecoveryError("services is required for state=%s with the %s manager" % (state, manager.kind))
    manager.check_names(services)
    before = manager.status(manager.scope(state, services) if state in ("up", "down") else services)
    steps = _plan(manager, state, services, before)
    commands = [shlex.join(argv) for action, targets in steps for argv in manager.commands_for(action, targets)]
    after = before
    if commands and not check_mode:
        commands = [command for action, targets in steps for command in manager.apply(action, targets)]
        after = manager.status(list(before))
    result = {"manager": manager.kind, "before": before, "services": after, "commands": commands,
              "changed": bool(commands)}
    if logs_lines > 0:
        result["logs"] = {name: manager.logs(name, logs_lines) for name in after}
    return result


def _plan(manager, state, services, before):
    """The (action, names) steps that ``state`` needs; none when the services are there already."""
    running = [name for name, entry in before.items() if entry["running"]]
    idle = [name for name, entry in before.items() if not entry["running"]]
    if state == "started":
        return [("start", idle)] if idle else []
    if state == "stopped":
        return [("stop", running)] if running else []
    if state == "killed":
        return [("kill", running)] if running else []
    if state == "restarted":  # a service that is not running (or has no container any more) is started instead
        return [(action, names) for action, names in (("restart", running), ("start", idle)) if names]
    if state == "down":
        present = any(manager.is_present(entry) for entry in before.values())
        return [("down", services)] if present else []
    if state == "up":
        return [("up", services)] if idle else []
    return []

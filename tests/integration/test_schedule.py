"""playbooks/schedule.yml on a scheduling host in a container of the lab's scheduler image, over SSH: cron lines where
no systemd runs (sshd as the container's first process), timers where systemd does (systemd as PID 1). This machine's
/etc is never written; the cron container sees this machine's ansible-playbook, playbooks and a temp dir at the same
paths, so that the backup line it was given can be run here for real."""

from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time

import pytest
from conftest import ROOT, PlaybookRun, assert_no_warnings, connection_vars, isolated_vars, seed_redis
from sandbox import free_port

from ansible_collections.christmas.recovery.plugins.module_utils.sets.manifest import complete_set_ids
from lab import build_scheduler_image, lab_env

pytestmark = pytest.mark.xdist_group("podman")

JOBS = ("backup", "archive", "rehearse", "drill")
PROBE = "probe-%s" % secrets.token_hex(6)
ANSIBLE_PLAYBOOK = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")


def _podman(*args, check=True):
    return subprocess.run(["podman", *args], env=lab_env(), capture_output=True, text=True, check=check)


class Scheduler:
    """A container of the scheduler image reached over SSH on a loopback port; removed by destroy()."""

    def __init__(self, image, root, systemd, mounts=()):
        self.root, self.systemd = root, systemd
        self.name = "christmas-scheduler-%s" % secrets.token_hex(4)
        self.key = os.path.join(root, "id_ed25519")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", self.key], check=True)
        authorized = os.path.join(root, "authorized_keys")
        shutil.copy(self.key + ".pub", authorized)
        os.chmod(authorized, 0o600)
        self.port = free_port()
        argv = ["run", "-d", "--name", self.name, "--pull", "never", "-p", "127.0.0.1:%d:22" % self.port,
                "-v", "%s:/root/.ssh/authorized_keys:ro" % authorized]
        for source, target, options in mounts:
            argv += ["-v", "%s:%s:%s" % (source, target, options)]
        if systemd:
            argv += ["--systemd=always", image, "/sbin/init"]
        else:
            argv += [image, "bash", "-c", "exec /usr/sbin/sshd -D -e"]
        _podman(*argv)

    def wait_ready(self, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._ssh_answers() and (not self.systemd or self.sh(
                    "systemctl is-system-running --wait", check=False).stdout.strip() in ("running", "degraded")):
                return self
            time.sleep(0.5)
        raise AssertionError("the scheduler container %s is not ready: %s" % (
            self.name, _podman("logs", self.name, check=False).stderr[-2000:]))

    def _ssh_answers(self):
        done = subprocess.run(["ssh", "-p", str(self.port), "-i", self.key, "-o", "BatchMode=yes", "-o",
                               "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "root@127.0.0.1",
                               "true"], capture_output=True, check=False)
        return done.returncode == 0

    def sh(self, script, check=True):
        done = _podman("exec", self.name, "sh", "-c", script, check=False)
        if check:
            assert done.returncode == 0, "%s: %s" % (script, done.stderr)
        return done

    def exists(self, path):
        return self.sh("test -e %s" % path, check=False).returncode == 0

    def read(self, path):
        return self.sh("cat %s" % path).stdout

    def mode(self, path):
        """'mode owner group' of a path in the container, as stat prints it."""
        return self.sh("stat -c '%%a %%U %%G' %s" % path).stdout.strip()

    def play(self, variables, state=None, check=False, expect_ok=True):
        """playbooks/schedule.yml against this container (christmas_scheduler group), with the role's variables."""
        host = dict(variables, ansible_host="127.0.0.1", ansible_port=self.port, ansible_user="root",
                    ansible_ssh_private_key_file=self.key, ansible_python_interpreter="/usr/bin/python3",
                    ansible_ssh_common_args="-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null")
        inventory = os.path.join(self.root, "scheduler_inventory.json")
        with open(inventory, "w", encoding="utf-8") as handle:
            json.dump({"christmas_scheduler": {"hosts": {"scheduler": host}}}, handle)
        argv = [ANSIBLE_PLAYBOOK, "-i", inventory, os.path.join(ROOT, "playbooks", "schedule.yml")]
        if state:
            argv += ["-e", "state=%s" % state]
        if check:
            argv.append("--check")
        proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, check=False,
                              env=dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"),
                                       ANSIBLE_NOCOLOR="1"))
        result = PlaybookRun(proc)
        assert (result.rc == 0) == expect_ok, result.output[-4000:]
        assert_no_warnings(result.output)
        return result

    def destroy(self):
        _podman("rm", "-f", "-t", "0", self.name, check=False)


@pytest.fixture(scope="module")
def scheduler_image():
    return build_scheduler_image()


@pytest.fixture(scope="module")
def shared_dir(module_dir):
    """Seen at the same path here and in the cron container: the jobs' inventory, logs, environment file, lock."""
    path = tempfile.mkdtemp(prefix="schedule-", dir=module_dir)
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def cron_host(scheduler_image, module_dir, shared_dir):
    """A scheduling host without systemd (sshd is its first process) that has crontab, logrotate and flock."""
    root = tempfile.mkdtemp(prefix="cron-host-", dir=module_dir)
    mounts = [(shared_dir, shared_dir, "rw"), (os.path.join(ROOT, "playbooks"), os.path.join(ROOT, "playbooks"), "ro"),
              (os.path.realpath(ANSIBLE_PLAYBOOK), ANSIBLE_PLAYBOOK, "ro")]
    host = Scheduler(scheduler_image, root, systemd=False, mounts=mounts)
    try:
        yield host.wait_ready()
    finally:
        host.destroy()


@pytest.fixture(scope="module")
def systemd_host(scheduler_image, module_dir):
    """A scheduling host running systemd as PID 1; its ansible-playbook is a probe that logs its argv and env."""
    root = tempfile.mkdtemp(prefix="systemd-host-", dir=module_dir)
    host = Scheduler(scheduler_image, root, systemd=True)
    try:
        host.wait_ready()
        host.sh("mkdir -p /etc/christmas && echo 'christmas: {hosts: {localhost: {}}}' > /etc/christmas/hosts.yml"
                " && printf '#!/bin/sh\\necho \"probe argv: $*\"\\necho \"probe env: $CHRISTMAS_PROBE\"\\n'"
                " > /usr/local/bin/ansible-playbook && chmod 0755 /usr/local/bin/ansible-playbook")
        yield host
    finally:
        host.destroy()


def _cron_vars(shared_dir, **extra):
    variables = {
        "christmas_schedule_ansible_playbook": ANSIBLE_PLAYBOOK,
        "christmas_schedule_inventory": os.path.join(shared_dir, "jobs_inventory.json"),
        "christmas_schedule_playbook_dir": os.path.join(ROOT, "playbooks"),
        "christmas_schedule_environment": {"ANSIBLE_CONFIG": os.path.join(ROOT, "ansible.cfg"),
                                           "ANSIBLE_NOCOLOR": "1", "CHRISTMAS_PROBE": PROBE},
        "christmas_schedule_env_file": os.path.join(shared_dir, "schedule.env"),
        "christmas_schedule_lock_file": os.path.join(shared_dir, "schedule.lock"),
        "christmas_schedule_log_dir": os.path.join(shared_dir, "logs"),
    }
    with open(variables["christmas_schedule_inventory"], "a", encoding="utf-8"):
        pass  # the preflight wants it there; the line-running test fills it
    variables.update(extra)
    return variables


CRON_FILE = "/etc/cron.d/christmas-recovery"
LOGROTATE_FILE = "/etc/logrotate.d/christmas-recovery"


def _text(path):
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def _cron_lines(host):
    """{job: (the five time fields, user, command)} of the cron file, read in the container."""
    jobs = {}
    lines = host.read(CRON_FILE).splitlines()
    for comment, line in zip(lines, lines[1:], strict=False):
        match = re.match(r"^#Ansible: christmas-recovery (\w+)$", comment)
        if match:
            fields = line.split(None, 6)
            jobs[match.group(1)] = (" ".join(fields[:5]), fields[5], fields[6])
    return jobs


def test_cron_schedule_installs_lines_and_logrotate_then_removes_them(cron_host, shared_dir):
    variables = _cron_vars(shared_dir, christmas_schedule_drill_calendar={"minute": 15, "hour": 2, "day": "1,15"},
                           christmas_schedule_drill_scenario="redis_flush")
    log_dir = variables["christmas_schedule_log_dir"]

    predicted = cron_host.play(variables, check=True)
    assert predicted.changed > 0
    assert not cron_host.exists(CRON_FILE) and not cron_host.exists(LOGROTATE_FILE)
    assert not os.path.exists(variables["christmas_schedule_env_file"])

    cron_host.play(variables)
    jobs = _cron_lines(cron_host)
    assert sorted(jobs) == sorted(JOBS)
    assert jobs["backup"][:2] == ("0 3 * * *", "root")
    assert jobs["archive"][:2] == ("* * * * *", "root")
    assert jobs["rehearse"][:2] == ("0 5 * * 0", "root")
    assert jobs["drill"][:2] == ("15 2 1,15 * *", "root")
    inventory = variables["christmas_schedule_inventory"]
    playbooks = os.path.join(ROOT, "playbooks")
    for job, playbook, wait in (("backup", "backup.yml", 3600), ("archive", "archive.yml", 60),
                                ("rehearse", "rehearse.yml", 3600), ("drill", "dr_drill.yml", 3600)):
        command = jobs[job][2]
        lock = variables["christmas_schedule_lock_file"]
        assert "/usr/bin/flock --wait %d %s %s -i %s %s/%s" % (
            wait, lock, ANSIBLE_PLAYBOOK, inventory, playbooks, playbook) in command
        assert command.endswith(">>%s/%s.log 2>&1" % (log_dir, job))
        assert ". %s;" % variables["christmas_schedule_env_file"] in command and PROBE not in command
    assert jobs["drill"][2].count("-e scenario=redis_flush") == 1
    assert cron_host.mode(CRON_FILE) == "644 root root"
    assert cron_host.mode(log_dir) == "750 root root"
    assert cron_host.mode(variables["christmas_schedule_env_file"]) == "600 root root"
    assert "CHRISTMAS_PROBE='%s'" % PROBE in cron_host.read(variables["christmas_schedule_env_file"])

    logrotate = cron_host.read(LOGROTATE_FILE)
    assert cron_host.mode(LOGROTATE_FILE) == "644 root root"
    assert "%s/*.log {" % log_dir in logrotate
    for directive in ("weekly", "maxsize 100M", "rotate 8", "compress", "missingok", "copytruncate", "su root root"):
        assert "\n    %s\n" % directive in logrotate
    checked = cron_host.sh("logrotate --debug %s 2>&1" % LOGROTATE_FILE, check=False)
    assert checked.returncode == 0 and "error" not in checked.stdout.lower(), checked.stdout

    again = cron_host.play(variables)
    assert again.changed == 0, again.changed_tasks

    # One job off: its line goes, the others stay as they were.
    before = _cron_lines(cron_host)
    cron_host.play(dict(variables, christmas_schedule_drill_enabled=False))
    after = _cron_lines(cron_host)
    assert sorted(after) == ["archive", "backup", "rehearse"] and after["backup"] == before["backup"]

    with open(os.path.join(log_dir, "backup.log"), "w", encoding="utf-8") as handle:
        handle.write("an earlier run\n")
    predicted = cron_host.play(variables, state="absent", check=True)
    assert predicted.changed > 0 and cron_host.exists(CRON_FILE) and cron_host.exists(LOGROTATE_FILE)

    removed = cron_host.play(variables, state="absent")
    assert removed.changed > 0
    assert not cron_host.exists(CRON_FILE) and not cron_host.exists(LOGROTATE_FILE)
    assert not os.path.exists(variables["christmas_schedule_env_file"])
    assert _text(os.path.join(log_dir, "backup.log")) == "an earlier run\n"  # the logs stay
    again = cron_host.play(variables, state="absent")
    assert again.changed == 0, again.changed_tasks


@pytest.mark.parametrize(("setting", "named"), [
    ({"christmas_schedule_backup_calendar": {"minute": 0, "hour": 24}}, "calendar hour '24': values from 0 to 23"),
    ({"christmas_schedule_rehearse_calendar": {"minute": 0, "day": 1, "weekday": 0}}, "day (1) or weekday (0)"),
    ({"christmas_schedule_drill_calendar": {"hour": 6}}, "christmas_schedule_drill_calendar"),
    ({"christmas_schedule_environment": {"PASSWORD": "it's"}}, "without quotes or backslashes (names: PASSWORD)"),
    ({"christmas_schedule_ansible_playbook": "/nowhere/ansible-playbook"}, "/nowhere/ansible-playbook (executable)"),
    ({"christmas_schedule_archive_interval": 90}, "christmas_schedule_archive_interval must be a multiple of 60"),
])
def test_a_bad_setting_is_refused_in_one_line_before_anything_changes(cron_host, shared_dir, setting, named):
    failed = cron_host.play(_cron_vars(shared_dir, **setting), expect_ok=False)
    fatal = [line for line in failed.stdout.splitlines() if re.match(r"^(fatal|failed): \[scheduler\].* => ", line)]
    assert len(fatal) == 1 and failed.changed == 0, failed.output[-3000:]
    message = json.loads(fatal[0].split(" => ", 1)[1])["msg"]
    assert named in message and "\n" not in message, message
    assert "it's" not in failed.output
    assert not cron_host.exists(CRON_FILE) and not cron_host.exists(LOGROTATE_FILE)


def test_the_scheduled_backup_line_backs_up_and_logs_and_waits_for_the_lock(cron_host, shared_dir, platform,
                                                                          make_redis, config_dir, tmp_dir):
    """The backup line cron was given, run here as cron would (sh -c, \\% as %), against a throwaway platform."""
    redis_server = make_redis(password=secrets.token_urlsafe(12))
    seed_redis(redis_server)
    backup_dir = os.path.join(tmp_dir, "backups")
    variables = _cron_vars(shared_dir, christmas_schedule_lock_timeout=2, christmas_schedule_rehearse_enabled=False,
                           christmas_schedule_drill_enabled=False, christmas_schedule_archive_enabled=False)
    host = dict(connection_vars(platform, redis_server, config_dir, backup_dir), **isolated_vars(tmp_dir),
                ansible_connection="local", ansible_python_interpreter=sys.executable)
    with open(variables["christmas_schedule_inventory"], "w", encoding="utf-8") as handle:
        json.dump({"christmas": {"hosts": {"platform": host}}}, handle)
    os.chmod(variables["christmas_schedule_inventory"], 0o600)
    log = os.path.join(variables["christmas_schedule_log_dir"], "backup.log")
    try:
        cron_host.play(variables)
        assert sorted(_cron_lines(cron_host)) == ["backup"]
        command = _cron_lines(cron_host)["backup"][2].replace("\\%", "%")
        if os.path.exists(log):
            os.unlink(log)

        # Another job holds the lock: this one waits 2 s, gives up, and nothing is backed up.
        with open(variables["christmas_schedule_lock_file"], "a", encoding="utf-8") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            blocked = subprocess.run(["sh", "-c", command], cwd="/", env={"PATH": "/usr/bin:/bin"}, check=False)
            fcntl.flock(lock, fcntl.LOCK_UN)
        assert blocked.returncode == 1
        assert not os.path.isdir(backup_dir) or complete_set_ids(backup_dir) == []
        assert "PLAY" not in _text(log)

        # cron's environment: a short PATH, no ANSIBLE_CONFIG but the one of the environment file.
        done = subprocess.run(["sh", "-c", command], cwd="/", env={"PATH": "/usr/bin:/bin"}, check=False)
        assert done.returncode == 0, _text(log)[-3000:]
        assert len(complete_set_ids(backup_dir)) == 1
        text = _text(log)
        assert re.search(r"^=== \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC backup starts$", text, re.M), text[:500]
        assert re.search(r"ok=\d+\s+changed=\d+\s+unreachable=0\s+failed=0", text), text[-2000:]
        for secret in (platform.password, platform.cluster.password, redis_server.password):
            assert secret not in text
    finally:
        cron_host.play(variables, state="absent")
    assert os.path.exists(log) and not cron_host.exists(CRON_FILE)


def _timers(host):
    listed = host.sh("systemctl list-timers --all --no-legend --no-pager").stdout
    return sorted(set(re.findall(r"christmas-recovery-(\w+)\.timer", listed)))


def test_systemd_schedule_installs_running_timers_then_removes_them(systemd_host):
    host = systemd_host
    variables = {"christmas_schedule_ansible_playbook": "/usr/local/bin/ansible-playbook",
                 "christmas_schedule_inventory": "/etc/christmas/hosts.yml",
                 "christmas_schedule_environment": {"CHRISTMAS_PROBE": PROBE}}
    units = ["/etc/systemd/system/christmas-recovery-%s.%s" % (job, kind) for job in JOBS
             for kind in ("service", "timer")]

    predicted = host.play(variables, check=True)
    assert predicted.changed > 0
    assert not any(host.exists(unit) for unit in units) and _timers(host) == []

    host.play(variables)
    _assert_the_timers_run_the_jobs(host, units)

    again = host.play(variables)
    assert again.changed == 0, again.changed_tasks

    # A new time reaches the running timer; a disabled job's timer goes.
    host.play(dict(variables, christmas_schedule_backup_calendar={"minute": 30, "hour": 4},
                   christmas_schedule_drill_enabled=False))
    assert "OnCalendar=*-*-* 04:30:00" in host.sh(
        "systemctl show -P TimersCalendar christmas-recovery-backup.timer").stdout
    assert _timers(host) == ["archive", "backup", "rehearse"]
    assert not host.exists("/etc/systemd/system/christmas-recovery-drill.service")

    _assert_a_switch_to_cron_and_back(host, variables, units)

    predicted = host.play(variables, state="absent", check=True)
    assert predicted.changed > 0 and _timers(host) == ["archive", "backup", "rehearse"]

    removed = host.play(variables, state="absent")
    assert removed.changed > 0
    assert _timers(host) == [] and not any(host.exists(unit) for unit in units)
    assert host.sh("systemctl is-enabled christmas-recovery-backup.timer", check=False).returncode != 0
    assert not host.exists(LOGROTATE_FILE) and not host.exists("/etc/default/christmas-recovery")
    assert "probe env: %s" % PROBE in host.read("/var/log/christmas-recovery/backup.log")  # the logs stay
    again = host.play(variables, state="absent")
    assert again.changed == 0, again.changed_tasks


def _assert_the_timers_run_the_jobs(host, units):
    assert _timers(host) == sorted(JOBS)
    for job in JOBS:
        timer = "christmas-recovery-%s.timer" % job
        assert host.sh("systemctl is-enabled %s; systemctl is-active %s" % (timer, timer)).stdout.split() == [
            "enabled", "active"]
    calendars = {job: host.sh("systemctl show -P TimersCalendar christmas-recovery-%s.timer" % job).stdout
                 for job in JOBS}
    assert "OnCalendar=*-*-* 03:00:00" in calendars["backup"]
    assert "OnCalendar=Sun *-*-* 05:00:00" in calendars["rehearse"]
    assert "OnCalendar=*-*-01 06:00:00" in calendars["drill"]
    assert "OnCalendar=*-*-* *:*:00" in calendars["archive"]
    assert host.sh("systemctl show -P Persistent christmas-recovery-backup.timer").stdout.strip() == "yes"
    assert all(host.mode(unit) == "644 root root" for unit in units)
    verified = host.sh("systemd-analyze verify %s 2>&1" % " ".join(units), check=False)
    assert verified.returncode == 0, verified.stdout
    service = host.read(units[0])
    assert ("ExecStart=/usr/bin/flock --wait 3600 /run/lock/christmas-recovery.lock /usr/local/bin/ansible-playbook"
            " -i /etc/christmas/hosts.yml christmas.recovery.backup\n") in service
    assert "EnvironmentFile=/etc/default/christmas-recovery\n" in service and PROBE not in service
    assert "-e scenario=db_stop" in host.read("/etc/systemd/system/christmas-recovery-drill.service")
    assert host.mode("/etc/default/christmas-recovery") == "600 root root"

    # The backup's service, started as its timer would: the command runs with the environment file, into its log.
    host.sh("systemctl start christmas-recovery-backup.service")
    log = host.read("/var/log/christmas-recovery/backup.log")
    assert re.search(r"^=== \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC backup starts$", log, re.M), log
    assert "probe argv: -i /etc/christmas/hosts.yml christmas.recovery.backup\n" in log
    assert "probe env: %s\n" % PROBE in log
    assert host.mode("/var/log/christmas-recovery") == "750 root root"


def _assert_a_switch_to_cron_and_back(host, variables, units):
    # Switched to cron: the timers go, and the cron daemon of the host runs the backup line (every minute here).
    host.play(dict(variables, christmas_schedule_method="cron", christmas_schedule_backup_calendar={"minute": "*"}))
    assert _timers(host) == [] and sorted(_cron_lines(host)) == sorted(JOBS)
    assert not any(host.exists(unit) for unit in units)
    deadline = time.monotonic() + 75
    while host.read("/var/log/christmas-recovery/backup.log").count("backup starts") < 2:
        assert time.monotonic() < deadline, "cron did not run the backup line within 75 s"
        time.sleep(2)
    assert host.read("/var/log/christmas-recovery/backup.log").count("probe env: %s\n" % PROBE) >= 2

    # Back to systemd (auto): the cron file goes.
    host.play(dict(variables, christmas_schedule_drill_enabled=False))
    assert _timers(host) == ["archive", "backup", "rehearse"] and not host.exists(CRON_FILE)

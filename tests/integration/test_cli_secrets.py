"""The runbook's commands with all three passwords in their environment: no child process (pg_dump, pg_restore,
anything) inherits any of them, a password holding ``:`` and ``\\`` works through the password file, and one with
a line break is refused by the variable's name before anything starts."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest
from conftest import ROOT, script_environ, seed_redis

from ansible_collections.christmas.recovery.plugins.module_utils.sets.manifest import complete_set_ids

PG_TOOLS = ("pg_dump", "pg_restore")
CLI_SCRIPTS = {os.path.join(ROOT, "scripts", name).encode() for name in ("backup.py", "restore.py")}


class EnvironSampler(threading.Thread):
    """Reads /proc/*/environ of every process but the command's own until stopped; counts the PostgreSQL tools
    seen."""

    def __init__(self, secrets, skip):
        super().__init__(daemon=True)
        self.secrets, self.skip = [s.encode() for s in secrets], skip
        self.leaks, self.tools_seen, self.rounds = [], 0, 0
        self.done = threading.Event()

    def run(self):
        me = str(os.getpid())
        while not self.done.is_set():
            self.rounds += 1
            for pid in filter(str.isdigit, os.listdir("/proc")):
                if pid == me or int(pid) in self.skip:
                    continue
                try:
                    argv = _read("/proc/%s/cmdline" % pid).split(b"\0")
                    environ = _read("/proc/%s/environ" % pid)
                    comm = _read("/proc/%s/comm" % pid).decode("utf-8", "replace").strip()
                    exec_meanwhile = _read("/proc/%s/cmdline" % pid).split(b"\0") != argv
                except OSError:
                    continue
                if exec_meanwhile:
                    continue  # a child of the command between fork and exec: its environment was the command's
                if len(argv) > 1 and argv[1] in CLI_SCRIPTS:
                    continue  # the command itself was given them: its initial environment stays in /proc
                if comm in PG_TOOLS:
                    self.tools_seen += 1
                if any(secret in environ for secret in self.secrets):
                    self.leaks.append(comm)


def _read(path):
    with open(path, "rb") as handle:
        return handle.read()


def _run_sampled(argv, env, secrets):
    """Run a command while sampling every process's environment until it ends; (process, sampler)."""
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = EnvironSampler(secrets, skip={proc.pid})
    sampler.start()
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        sampler.done.set()
        sampler.join(timeout=30)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(argv, proc.returncode, out, err), sampler


def test_cli_children_inherit_no_password_and_a_colon_backslash_password_works(platform, make_redis, tmp_dir):
    cluster = platform.cluster
    admin_password = "ad:min\\pa:ss\\%s" % os.urandom(4).hex()
    cluster.sql("ALTER ROLE postgres PASSWORD '%s'" % admin_password.replace("'", "''"))
    cluster.password = admin_password
    server = make_redis(password="redis:pa\\ss-%s" % os.urandom(4).hex())
    seed_redis(server)
    backup_dir = os.path.join(tmp_dir, "backups")
    env = script_environ(CHRISTMAS_DB_PASSWORD=platform.password, CHRISTMAS_DB_ADMIN_PASSWORD=admin_password,
                         CHRISTMAS_REDIS_PASSWORD=server.password)
    secrets = [platform.password, admin_password, server.password]
    connection = ["--db-host", "127.0.0.1", "--db-port", str(cluster.port), "--db-admin-user", "postgres",
                  "--redis-host", "127.0.0.1", "--redis-port", str(server.port), "--skip-config",
                  "--backup-dir", backup_dir]
    backup, sampled = _run_sampled([sys.executable, os.path.join(ROOT, "scripts", "backup.py"), *connection],
                                   env, secrets)
    assert backup.returncode == 0, backup.stderr
    assert sampled.leaks == [] and sampled.tools_seen >= 1 and sampled.rounds > 5
    assert len(complete_set_ids(backup_dir)) == 1
    before = platform.snapshot()
    platform.sql("UPDATE orders SET qty = 0")
    restore, sampled = _run_sampled([sys.executable, os.path.join(ROOT, "scripts", "restore.py"), "latest",
                                     *connection], env, secrets)
    assert restore.returncode == 0, restore.stderr
    assert sampled.leaks == [] and sampled.tools_seen >= 1
    assert platform.snapshot() == before


def test_a_password_with_a_line_break_is_refused_by_name_before_anything_starts(platform, tmp_dir):
    backup_dir = os.path.join(tmp_dir, "backups")
    secret = "first\nsecond-%s" % os.urandom(4).hex()
    env = script_environ(CHRISTMAS_DB_ADMIN_PASSWORD=secret)
    done = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "backup.py"), "--db-host", "127.0.0.1",
                           "--db-port", str(platform.cluster.port), "--db-admin-user", "postgres", "--skip-redis",
                           "--skip-config", "--backup-dir", backup_dir], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "error: CHRISTMAS_DB_ADMIN_PASSWORD holds a line break or NUL, which libpq's password file cannot express; "
        "choose a password without one"]
    assert "second" not in done.stderr
    assert not os.path.exists(backup_dir)


def test_a_world_writable_backup_dir_of_ours_is_tightened_to_0700_and_said(config_dir, tmp_dir):
    backup_dir = os.path.join(tmp_dir, "backups")
    os.mkdir(backup_dir)
    os.chmod(backup_dir, 0o777)
    done = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "backup.py"), "--skip-db", "--skip-redis",
                           "--config-dir", config_dir, "--backup-dir", backup_dir], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert os.stat(backup_dir).st_mode & 0o7777 == 0o700
    assert "tightened %s from 0777 to 0700" % backup_dir in done.stderr
    assert len(complete_set_ids(backup_dir)) == 1


def test_a_world_writable_backup_dir_of_another_user_is_refused_and_left_alone(config_dir, tmp_dir):
    if os.geteuid() != 0:
        pytest.skip("giving a directory to another user needs root")
    backup_dir = os.path.join(tmp_dir, "backups")
    os.mkdir(backup_dir)
    os.chown(backup_dir, 65534, 65534)
    os.chmod(backup_dir, 0o777)
    done = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "backup.py"), "--skip-db", "--skip-redis",
                           "--config-dir", config_dir, "--backup-dir", backup_dir], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 1 and done.stderr.strip().splitlines() == [
        "error: directory %s is mode 0777 and owned by uid 65534, not by us (uid 0): make it private (chmod 0700) "
        "or use another directory" % backup_dir]
    assert os.stat(backup_dir).st_mode & 0o7777 == 0o777 and os.listdir(backup_dir) == []

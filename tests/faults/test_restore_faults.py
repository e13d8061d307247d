"""Faults during a restore: SIGKILL at each step, the database or Redis failing under the load, wrong targets."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from conftest import ROOT, redis_state, seal_signed, seed_platform, seed_redis, tree_state

from ansible_collections.christmas.recovery.plugins.module_utils.sets.restore_journal import journal_name

# Progress lines of scripts/restore.py at which a kill lands, one per step of each component.
KILL_AT = [
    "verifying backup set",
    "creating missing roles and scratch database",
    "loading ",
    "swapping scratch database",
    "flushing Redis",
    "restoring config tree into",
]


def _env(platform, server):
    return dict(os.environ, CHRISTMAS_DB_PASSWORD=platform.password,
                CHRISTMAS_DB_ADMIN_PASSWORD=platform.cluster.password, CHRISTMAS_REDIS_PASSWORD=server.password or "")


def _flags(platform, server, backup_dir, config):
    return ["--backup-dir", backup_dir, "--db-host", "127.0.0.1", "--db-port", str(platform.cluster.port),
            "--db-admin-user", "postgres", "--redis-host", "127.0.0.1", "--redis-port", str(server.port),
            "--config-dir", config]


def _script(name, *args, env):
    return subprocess.run([sys.executable, os.path.join(ROOT, "scripts", name), *args], capture_output=True,
                          text=True, env=env, check=False)


@pytest.fixture
def big_set(make_cluster, make_redis, config_dir, tmp_dir):
    """A platform large enough that each restore step takes a moment, backed up once, then damaged."""
    platform = seed_platform(make_cluster())
    platform.sql("INSERT INTO market_data SELECT timestamptz '2026-01-01' + i * interval '1 ms', 'BIG', i, i "
                 "FROM generate_series(1, 150000) AS i")
    server = make_redis(password="fault-redis")
    seed_redis(server)
    pipe = server.client(2).pipeline(transaction=False)
    for i in range(20000):
        pipe.set("k%d" % i, "v" * 50)
    pipe.execute()
    for i in range(200):
        with open(os.path.join(config_dir, "strategies", "s%03d.json" % i), "w", encoding="utf-8") as handle:
            handle.write('{"n": %d}\n' % i)
    backup_dir = os.path.join(tmp_dir, "backups")
    done = _script("backup.py", *_flags(platform, server, backup_dir, config_dir), env=_env(platform, server))
    assert done.returncode == 0, done.stderr
    good = {"db": platform.snapshot(), "redis": redis_state(server), "config": tree_state(config_dir)}
    return platform, server, config_dir, backup_dir, json.loads(done.stdout)["set_id"], good


def _damage(platform, server, config):
    platform.sql("DELETE FROM market_data WHERE symbol = 'BIG' AND price < 1000")
    server.client(0).flushall()
    with open(os.path.join(config, "app.yml"), "w", encoding="utf-8") as handle:
        handle.write("broken")


def _restore_killed_at(platform, server, config, backup_dir, needle):
    """Start a restore and SIGKILL it (and its children) right after the progress line containing ``needle``."""
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "scripts", "restore.py"), "latest",
                             *_flags(platform, server, backup_dir, config)], stderr=subprocess.PIPE, text=True,
                            stdout=subprocess.DEVNULL, env=_env(platform, server), start_new_session=True)
    seen = []
    for line in proc.stderr:
        seen.append(line.strip())
        if needle in line:
            os.killpg(proc.pid, signal.SIGKILL)
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "restore ended before '%s': %s" % (needle, seen)
    return seen


def _scratch_databases(platform):
    return platform.cluster.sql("SELECT datname FROM pg_database WHERE datname LIKE 'christmas\\_\\_%' ORDER BY 1")


def test_restore_killed_at_each_step_leaves_a_journal_and_a_rerun_finishes_the_job(big_set):
    platform, server, config, backup_dir, set_id, good = big_set
    journal_path = os.path.join(backup_dir, journal_name(set_id))
    for needle in KILL_AT:
        _damage(platform, server, config)
        damaged = {"db": platform.snapshot(), "redis": redis_state(server), "config": tree_state(config)}
        safety_before = _safety_copies(config)

        _restore_killed_at(platform, server, config, backup_dir, needle)
        if needle == "verifying backup set":
            # Killed before any change: the journal still says the last run finished, and nothing moved.
            assert {"db": platform.snapshot(), "redis": redis_state(server), "config": tree_state(config)} == damaged
        else:
            with open(journal_path, encoding="utf-8") as handle:
                journal = json.load(handle)
            assert journal["finished"] is False, needle
            assert any(needle in state for state in journal["components"].values()), journal
        for safety in set(_safety_copies(config)) - set(safety_before):
            assert tree_state(safety) == damaged["config"], needle

        rerun = _script("restore.py", "latest", *_flags(platform, server, backup_dir, config),
                        env=_env(platform, server))
        assert rerun.returncode == 0, rerun.stderr
        if needle != "verifying backup set":
            assert "stopped unfinished" in rerun.stderr, needle
            assert json.loads(rerun.stdout)["previous_attempt"] == journal["components"]
        assert platform.snapshot() == good["db"], needle
        assert redis_state(server) == good["redis"], needle
        assert tree_state(config) == good["config"], needle
        assert _scratch_databases(platform) == [], needle
        with open(journal_path, encoding="utf-8") as handle:
            assert json.load(handle)["finished"] is True


def _safety_copies(config):
    parent = os.path.dirname(config)
    return sorted(os.path.join(parent, name) for name in os.listdir(parent) if ".pre-restore-" in name)


def test_database_dropping_the_connection_mid_load_fails_and_keeps_the_database(big_set):
    platform, server, config, backup_dir, _set_id, _good = big_set
    platform.sql("UPDATE positions SET qty = -1")
    before = platform.snapshot()
    oids = platform.cluster.sql("SELECT oid FROM pg_database WHERE datname = 'christmas'")
    stop = threading.Event()

    def terminate_loaders():
        while not stop.is_set():
            platform.cluster.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                 "WHERE datname LIKE 'christmas\\_\\_restore%'")
            time.sleep(0.05)

    killer = threading.Thread(target=terminate_loaders, daemon=True)
    killer.start()
    try:
        failed = _script("restore.py", "latest", "--skip-redis", "--skip-config",
                         *_flags(platform, server, backup_dir, config), env=_env(platform, server))
    finally:
        stop.set()
        killer.join()
    assert failed.returncode == 1
    error = [line for line in failed.stderr.splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and "pg_restore into christmas__restore_" in error[0], failed.stderr
    assert "database christmas left as it was, scratch database dropped" in error[0]
    assert platform.snapshot() == before
    assert platform.cluster.sql("SELECT oid FROM pg_database WHERE datname = 'christmas'") == oids
    assert _scratch_databases(platform) == []


def test_redis_with_another_password_is_refused_before_anything_changes(big_set):
    platform, server, config, backup_dir, _set_id, _good = big_set
    server.client(0).flushall()
    server.client(0).set("only", "key")
    before = redis_state(server)
    env = dict(_env(platform, server), CHRISTMAS_REDIS_PASSWORD="not-the-password")
    failed = _script("restore.py", "latest", "--skip-db", "--skip-config",
                     *_flags(platform, server, backup_dir, config), env=env)
    assert failed.returncode == 1
    assert "authentication failed" in failed.stderr.splitlines()[-1]
    assert redis_state(server) == before


def test_redis_going_away_mid_restore_says_how_far_it_got(big_set):
    platform, server, config, backup_dir, _set_id, good = big_set
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "scripts", "restore.py"), "latest", "--skip-db",
                             "--skip-config", "--force", *_flags(platform, server, backup_dir, config)],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=_env(platform, server))
    for line in proc.stderr:
        if "flushing Redis" in line:
            time.sleep(0.05)
            server.stop(signal.SIGKILL)
            break
    remaining = proc.stderr.read()
    assert proc.wait() == 1
    error = remaining.strip().splitlines()[-1]
    assert error.startswith("error: restore of redis failed: ") and "Traceback" not in remaining
    assert "failed after the flush with" in error or "restore failed before anything changed" in error \
        or "unreachable" in error, error

    server.start()
    rerun = _script("restore.py", "latest", "--skip-db", "--skip-config",
                    *_flags(platform, server, backup_dir, config), env=_env(platform, server))
    assert rerun.returncode == 0, rerun.stderr
    assert redis_state(server) == good["redis"]


def test_backup_from_a_newer_redis_is_refused_before_anything_changes(big_set):
    platform, server, config, backup_dir, set_id, _good = big_set
    path = os.path.join(backup_dir, "manifest_%s.json" % set_id)
    with open(path, encoding="utf-8") as handle:
        manifest = json.load(handle)
    manifest.pop("manifest_sha256")
    manifest["redis"]["version"] = "99.0.0"
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(seal_signed(manifest), handle)
    server.client(0).set("after-backup", "1")
    before = redis_state(server)
    failed = _script("restore.py", "latest", "--skip-db", "--skip-config",
                     *_flags(platform, server, backup_dir, config), env=_env(platform, server))
    assert failed.returncode == 1
    assert "is older than the backup's 99.0.0" in failed.stderr.splitlines()[-1]
    assert redis_state(server) == before

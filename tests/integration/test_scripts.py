"""The runbook's commands, scripts/backup.py and scripts/restore.py, run as an operator runs them."""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys

import pytest
from conftest import ROOT, redis_state, seal_signed, seed_redis, tree_state

from ansible_collections.christmas.recovery.plugins.module_utils.core.locking import LOCK_NAME
from ansible_collections.christmas.recovery.plugins.module_utils.sets.verify import verify_set

PROGRESS_RE = re.compile(r"^\[ *\d+\.\ds\] \S")


def _run(script, *args, env=None):
    """Run a runbook command with passwords in its environment only."""
    return subprocess.run([sys.executable, os.path.join(ROOT, "scripts", script), *args], capture_output=True,
                          text=True, env=dict(os.environ, **(env or {})), timeout=300, check=False)


def _ok(proc, manifest=None):
    """The command succeeded, said what it did on stderr and printed its report on stdout."""
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines and all(PROGRESS_RE.match(line) for line in lines), proc.stderr
    report = json.loads(proc.stdout)
    assert os.path.basename(manifest or report["manifest"]) == "manifest_%s.json" % report["set_id"]
    return report


def _fails_in_one_line(proc):
    """Exit 1, no report, and after any progress lines a single line saying what is wrong."""
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout == ""
    *progress, last = proc.stderr.splitlines()
    assert all(PROGRESS_RE.match(line) for line in progress), proc.stderr
    assert last.startswith("error: "), proc.stderr
    return last


def _backup(platform, server, config, backup_dir, *extra, db_password=None):
    return _run("backup.py", "--db-host", "127.0.0.1", "--db-port", str(platform.cluster.port),
                "--backup-dir", backup_dir, "--retention-days", "30", "--config-dir", config,
                "--redis-host", "127.0.0.1", "--redis-port", str(server.port), *extra,
                env={"CHRISTMAS_DB_PASSWORD": db_password or platform.password,
                     "CHRISTMAS_REDIS_PASSWORD": server.password})


def _restore(manifest, platform, server, *extra):
    return _run("restore.py", manifest, "--db-host", "127.0.0.1", "--db-port", str(platform.cluster.port),
                "--db-admin-user", "postgres", "--redis-host", "127.0.0.1", "--redis-port", str(server.port), *extra,
                env={"CHRISTMAS_DB_ADMIN_PASSWORD": platform.cluster.password,
                     "CHRISTMAS_REDIS_PASSWORD": server.password})


def _backed_up(platform, make_redis, config_dir, tmp_dir):
    """A seeded Redis and one complete set of platform, Redis and config; returns (redis, manifest)."""
    server = make_redis(password="redis-script-pass")
    seed_redis(server)
    report = _ok(_backup(platform, server, config_dir, os.path.join(tmp_dir, "backups")))
    return server, report["manifest"]


def _damage(platform, server, config_dir):
    platform.sql("DELETE FROM market_data WHERE symbol = 'SYM3'; UPDATE orders SET qty = 0")
    server.client(0).flushall()
    server.client(2).set("stray", "key")
    with open(os.path.join(config_dir, "app.yml"), "w", encoding="utf-8") as handle:
        handle.write("broken: [")
    os.unlink(os.path.join(config_dir, "run.sh"))


def _state(platform, server, config_dir):
    return {"db": platform.snapshot(), "redis": redis_state(server), "config": tree_state(config_dir),
            "databases": platform.cluster.sql("SELECT datname, oid FROM pg_database ORDER BY 1"),
            "safety_copies": glob.glob(config_dir + ".pre-restore-*")}


def test_backup_with_passwords_from_the_environment_makes_a_set_that_verifies_and_prunes_by_retention(
        platform, make_redis, config_dir, tmp_dir):
    server = make_redis(password="redis-script-pass")
    seed_redis(server)
    backup_dir = os.path.join(tmp_dir, "backups")

    refused = _backup(platform, server, config_dir, backup_dir, db_password="not-the-password")
    assert "password authentication failed" in _fails_in_one_line(refused)
    assert not os.path.exists(backup_dir)

    first = _backup(platform, server, config_dir, backup_dir)
    report = _ok(first)
    assert glob.glob(os.path.join(backup_dir, "manifest_*.json")) == [report["manifest"]]
    verification, manifest = verify_set(report["manifest"], deep=True)
    assert verification["ok"] and manifest["components"] == ["db", "redis", "config"]
    assert manifest["db"]["row_counts"] == {"public.market_data": 5000, "public.orders": 700,
                                            "public.positions": 17}
    for step in ("dumping database christmas", "taking the Redis snapshot at 127.0.0.1:%d" % server.port,
                 "archiving config tree " + config_dir, "checksumming set " + report["set_id"]):
        assert step in first.stderr
    assert platform.password not in first.stdout + first.stderr
    assert server.password not in first.stdout + first.stderr

    second = _ok(_backup(platform, server, config_dir, backup_dir, "--retention-days", "0"))
    assert second["pruned"] == [report["set_id"]]
    assert sorted(os.listdir(backup_dir)) == [LOCK_NAME, "manifest_%s.json" % second["set_id"],
                                              "set_%s" % second["set_id"]]


def test_restore_dry_run_verifies_and_changes_nothing(platform, make_redis, config_dir, tmp_dir):
    server, manifest = _backed_up(platform, make_redis, config_dir, tmp_dir)
    _damage(platform, server, config_dir)
    damaged = _state(platform, server, config_dir)

    report = _ok(_restore(manifest, platform, server, "--dry-run", "--config-dir", config_dir), manifest)

    assert report["verification"]["ok"] and report["verification"]["deep"]
    assert {name: part["changed"] for name, part in report["components"].items()} == {
        "db": True, "redis": True, "config": True}
    assert _state(platform, server, config_dir) == damaged


def test_restore_with_skip_db_and_skip_redis_restores_only_the_config(platform, make_redis, config_dir, tmp_dir):
    server, manifest = _backed_up(platform, make_redis, config_dir, tmp_dir)
    good_tree = tree_state(config_dir)
    _damage(platform, server, config_dir)
    damaged = _state(platform, server, config_dir)

    report = _ok(_restore(manifest, platform, server, "--skip-db", "--skip-redis", "--config-dir", config_dir),
                 manifest)

    assert list(report["components"]) == ["config"] and report["components"]["config"]["changed"]
    now = _state(platform, server, config_dir)
    assert now["config"] == good_tree
    assert now["safety_copies"] == [report["components"]["config"]["safety_copy"]]
    assert {key: now[key] for key in ("db", "databases", "redis")} == {
        key: damaged[key] for key in ("db", "databases", "redis")}
    again = _ok(_restore(manifest, platform, server, "--skip-db", "--skip-redis", "--config-dir", config_dir), manifest)
    assert again["components"]["config"]["changed"] is False


@pytest.mark.parametrize("manifest, problem", [
    ("absent/manifest_20261124_030000.json", "cannot be read: No such file or directory"),
    ("a-directory", "is invalid: not a regular file"),
    ("not-json.json", "is not valid JSON"),
    ("latest", "no complete backup set"),
])
def test_restore_of_a_bad_manifest_path_fails_in_one_line(tmp_dir, manifest, problem):
    os.mkdir(os.path.join(tmp_dir, "a-directory"))
    with open(os.path.join(tmp_dir, "not-json.json"), "w", encoding="utf-8") as handle:
        handle.write("{'set_id': ")
    path = manifest if manifest == "latest" else os.path.join(tmp_dir, manifest)
    line = _fails_in_one_line(_run("restore.py", path, "--backup-dir", tmp_dir))
    assert problem in line


def _config_only_set(config_dir, tmp_dir):
    return _ok(_run("backup.py", "--backup-dir", os.path.join(tmp_dir, "backups"), "--skip-db", "--skip-redis",
                    "--config-dir", config_dir))["manifest"]


def test_backup_refuses_bad_input_before_writing_a_set(config_dir, tmp_dir):
    backup_dir = os.path.join(tmp_dir, "backups")
    negative = _run("backup.py", "--backup-dir", backup_dir, "--retention-days", "-1", "--skip-db", "--skip-redis",
                    "--config-dir", config_dir)
    assert negative.returncode == 2
    assert negative.stderr.splitlines()[-1] == (
        "backup.py: error: argument --retention-days: must be a whole number of days, 0 or more, got '-1'")
    assert not os.path.exists(backup_dir)

    a_file = os.path.join(tmp_dir, "a-file")
    open(a_file, "w", encoding="utf-8").close()
    line = _fails_in_one_line(_run("backup.py", "--backup-dir", a_file, "--skip-db", "--skip-redis",
                                   "--config-dir", config_dir))
    assert "File exists" in line and a_file in line
    assert sorted(os.listdir(tmp_dir)) == ["a-file", "config"]


def test_restore_into_a_config_dir_beneath_a_file_fails_in_one_line(config_dir, tmp_dir):
    manifest = _config_only_set(config_dir, tmp_dir)
    a_file = os.path.join(tmp_dir, "a-file")
    open(a_file, "w", encoding="utf-8").close()
    line = _fails_in_one_line(_run("restore.py", manifest, "--skip-db", "--skip-redis",
                                   "--config-dir", os.path.join(a_file, "config")))
    assert a_file in line


def test_restore_of_a_manifest_whose_section_lacks_a_field_fails_in_one_line(config_dir, tmp_dir):
    manifest = _config_only_set(config_dir, tmp_dir)
    with open(manifest, encoding="utf-8") as handle:
        data = json.load(handle)
    del data["config"]["source_dir"]
    del data["manifest_sha256"]
    with open(manifest, "w", encoding="utf-8") as handle:
        json.dump(seal_signed(data), handle)
    line = _fails_in_one_line(_run("restore.py", manifest, "--skip-db", "--skip-redis", "--dry-run"))
    assert "config.source_dir is missing" in line

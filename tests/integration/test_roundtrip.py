"""Back up, break, restore: through the playbooks, asserting on the servers and files themselves."""

from __future__ import annotations

import glob
import os
import shutil

import psycopg2
import pytest
from conftest import connection_vars, redis_state, seed_platform, seed_redis, tree_state


def _backup(run_playbook, platform, redis_server, config, backup_dir, admin=True):
    run_playbook("backup", connection_vars(platform, redis_server, config, backup_dir, admin=admin))
    manifests = sorted(glob.glob(os.path.join(backup_dir, "manifest_*.json")))
    assert manifests, "backup wrote no manifest"
    return manifests[-1]


def test_full_restore_onto_brand_new_servers_brings_back_everything(
        run_playbook, make_cluster, make_redis, config_dir, tmp_dir):
    source = seed_platform(make_cluster())
    source_redis = make_redis(password="redis-pass-1")
    redis_before = seed_redis(source_redis)
    db_before = source.snapshot()
    tree_before = tree_state(config_dir)
    backup_dir = os.path.join(tmp_dir, "backups")
    manifest = _backup(run_playbook, source, source_redis, config_dir, backup_dir)

    new_cluster = make_cluster()
    new_redis = make_redis(password="redis-pass-2")
    new_config = os.path.join(tmp_dir, "new-host", "config")
    host_vars = connection_vars(None, new_redis, new_config, backup_dir)
    host_vars.update(christmas_db_host="127.0.0.1", christmas_db_port=new_cluster.port,
                     christmas_db_admin_user="postgres", christmas_db_admin_password=new_cluster.password)
    run_playbook("restore_full", host_vars, {"manifest": manifest})

    # Roles come back with their password hashes: the original passwords log in on the new cluster.
    restored = type(source)(new_cluster, source.password, source.analyst_password)
    assert restored.snapshot() == db_before
    assert restored.sql("SELECT count(*) FROM latest_prices", user="analyst") == [(17,)]
    assert new_cluster.sql("SELECT datacl::text FROM pg_database WHERE datname = 'christmas'") == \
        source.cluster.sql("SELECT datacl::text FROM pg_database WHERE datname = 'christmas'")
    assert new_cluster.sql("SELECT setconfig FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase "
                           "WHERE d.datname = 'christmas'")[0][0][0] == "work_mem=8MB"
    with pytest.raises(psycopg2.Error):
        restored.sql("SELECT count(*) FROM orders", user="analyst")
    assert redis_state(new_redis) == redis_before
    assert tree_state(new_config) == tree_before


def test_restore_replaces_damage_and_a_rerun_changes_nothing(
        run_playbook, platform, make_redis, config_dir, tmp_dir):
    server = make_redis()
    redis_before = seed_redis(server)
    db_before = platform.snapshot()
    tree_before = tree_state(config_dir)
    backup_dir = os.path.join(tmp_dir, "backups")
    host_vars = connection_vars(platform, server, config_dir, backup_dir)
    _backup(run_playbook, platform, server, config_dir, backup_dir)

    platform.sql("DELETE FROM market_data WHERE symbol = 'SYM3'; UPDATE orders SET qty = 0; DROP VIEW latest_prices")
    server.client(0).flushall()
    server.client(5).set("stray", "key")
    with open(os.path.join(config_dir, "app.yml"), "w", encoding="utf-8") as handle:
        handle.write("broken: [")
    with open(os.path.join(config_dir, "not-in-backup.txt"), "w", encoding="utf-8") as handle:
        handle.write("x")

    first = run_playbook("restore_full", host_vars, {"manifest": "latest"})
    assert first.changed >= 1
    assert platform.snapshot() == db_before
    assert platform.sql("SELECT count(*) FROM latest_prices") == [(17,)]
    assert redis_state(server) == redis_before
    assert tree_state(config_dir) == tree_before
    safety = glob.glob(config_dir + ".pre-restore-*")
    assert len(safety) == 1 and os.path.exists(os.path.join(safety[0], "not-in-backup.txt"))
    assert "moved to " + safety[0] in first.stdout

    second = run_playbook("restore_full", host_vars, {"manifest": "latest"})
    assert second.changed_tasks == [], second.stdout  # the platform matches: nothing restored, nothing recorded
    assert "nothing was changed or recorded" in second.stdout
    assert len(glob.glob(config_dir + ".pre-restore-*")) == 1


def test_dry_run_verifies_and_changes_nothing(run_playbook, platform, make_redis, config_dir, tmp_dir):
    server = make_redis()
    seed_redis(server)
    backup_dir = os.path.join(tmp_dir, "backups")
    host_vars = connection_vars(platform, server, config_dir, backup_dir)

    check_backup = run_playbook("backup", host_vars, check=True)
    assert check_backup.changed == 1
    assert not os.path.exists(backup_dir)
    _backup(run_playbook, platform, server, config_dir, backup_dir)

    platform.sql("TRUNCATE orders")
    server.client(0).flushdb()
    with open(os.path.join(config_dir, "app.yml"), "w", encoding="utf-8") as handle:
        handle.write("broken")
    damaged_db, damaged_redis, damaged_tree = platform.snapshot(), redis_state(server), tree_state(config_dir)
    databases = platform.cluster.sql("SELECT datname, oid FROM pg_database ORDER BY 1")

    dry = run_playbook("restore_full", host_vars, {"manifest": "latest"}, check=True)
    assert dry.changed == 1
    assert platform.snapshot() == damaged_db
    assert platform.cluster.sql("SELECT datname, oid FROM pg_database ORDER BY 1") == databases
    assert redis_state(server) == damaged_redis
    assert tree_state(config_dir) == damaged_tree
    assert not glob.glob(config_dir + ".pre-restore-*")


@pytest.mark.parametrize("playbook, restored, untouched", [
    ("restore_db", "db", ("redis", "config")),
    ("restore_redis", "redis", ("db", "config")),
    ("restore_config", "config", ("db", "redis")),
])
def test_partial_restore_touches_only_its_component(run_playbook, platform, make_redis, config_dir, tmp_dir,
                                                    playbook, restored, untouched):
    server = make_redis()
    seed_redis(server)
    backup_dir = os.path.join(tmp_dir, "backups")
    host_vars = connection_vars(platform, server, config_dir, backup_dir)
    _backup(run_playbook, platform, server, config_dir, backup_dir)
    good = {"db": platform.snapshot(), "redis": redis_state(server), "config": tree_state(config_dir)}

    platform.sql("TRUNCATE orders")
    server.client(0).delete("user:1")
    os.unlink(os.path.join(config_dir, "run.sh"))
    broken = {"db": platform.snapshot(), "redis": redis_state(server), "config": tree_state(config_dir)}

    run_playbook(playbook, host_vars)
    now = {"db": platform.snapshot(), "redis": redis_state(server), "config": tree_state(config_dir)}
    assert now[restored] == good[restored]
    for component in untouched:
        assert now[component] == broken[component]


def test_backup_without_admin_restores_roles_that_need_a_password(run_playbook, make_cluster, tmp_dir):
    source = seed_platform(make_cluster())
    backup_dir = os.path.join(tmp_dir, "backups")
    host_vars = connection_vars(source, backup_dir=backup_dir, admin=False)
    host_vars.update(christmas_skip_redis=True)
    run_playbook("backup", host_vars, {"skip_redis": True, "skip_config": True})

    target = make_cluster()
    restore_vars = {"christmas_backup_dir": backup_dir, "christmas_db_host": "127.0.0.1",
                    "christmas_db_port": target.port, "christmas_db_admin_user": "postgres",
                    "christmas_db_admin_password": target.password}
    result = run_playbook("restore_db", restore_vars)
    assert "were created without a password" in result.stdout
    assert "analyst" in result.stdout and "christmas" in result.stdout
    assert target.sql("SELECT rolname, rolpassword IS NULL FROM pg_authid WHERE rolname IN "
                      "('analyst', 'christmas', 'christmas_readers') ORDER BY 1") == [
        ("analyst", True), ("christmas", True), ("christmas_readers", True)]
    assert target.sql("SELECT count(*) FROM market_data", dbname="christmas") == [(5000,)]


@pytest.mark.parametrize("appendonly", [True, False])
def test_redis_restore_survives_a_restart(run_playbook, make_redis, tmp_dir, appendonly):
    server = make_redis(password="s3cret-redis", appendonly=appendonly)
    before = seed_redis(server)
    backup_dir = os.path.join(tmp_dir, "backups")
    host_vars = connection_vars(None, server, None, backup_dir)
    run_playbook("backup", host_vars, {"skip_db": True, "skip_config": True})
    server.client(0).flushall()
    server.client(0).set("after-backup", "1")

    run_playbook("restore_redis", host_vars)
    assert redis_state(server) == before
    server.restart()
    assert redis_state(server) == before


def test_backup_dir_holds_only_private_files_whatever_the_umask(run_playbook, platform, make_redis, config_dir,
                                                                tmp_dir):
    server = make_redis()
    seed_redis(server)
    backup_dir = os.path.join(tmp_dir, "backups")
    old = os.umask(0)
    try:
        _backup(run_playbook, platform, server, config_dir, backup_dir)
    finally:
        os.umask(old)
    for base, dirs, files in os.walk(backup_dir):
        for name in dirs:
            assert os.stat(os.path.join(base, name)).st_mode & 0o777 == 0o700, name
        for name in files:
            assert os.stat(os.path.join(base, name)).st_mode & 0o777 == 0o600, name
    assert os.stat(backup_dir).st_mode & 0o777 == 0o700
    shutil.rmtree(backup_dir)

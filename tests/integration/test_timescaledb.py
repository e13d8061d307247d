"""The TimescaleDB path of restore_db.yml, with the SQL-only STAND-IN extension (tests/fixtures/timescaledb_standin),
which logs each call of its restore hooks to the server log."""

from __future__ import annotations

import os
import pwd
import re

import pytest
from conftest import Platform, seed_platform

from ansible_collections.christmas.recovery.plugins.module_utils.backup_set import make_backup_set
from ansible_collections.christmas.recovery.plugins.module_utils.postgres import PgTarget

# The stand-in is installed into the system extension directory for the session: one worker only.
pytestmark = pytest.mark.xdist_group("timescaledb")

HOOK_RE = re.compile(r"timescaledb-standin: (pre_restore|post_restore) in database (\S+)")


def _with_timescaledb(platform, version):
    platform.cluster.sql("CREATE EXTENSION timescaledb VERSION '%s'" % version, dbname="christmas")
    return platform


def _backup(platform, tmp_dir):
    """A database-only set, made as the superuser so that role passwords come along; returns its set id."""
    target = PgTarget(host="127.0.0.1", port=platform.cluster.port, password=platform.password,
                      admin_user="postgres", admin_password=platform.cluster.password)
    report = make_backup_set(os.path.join(tmp_dir, "backups"), db=target, progress=lambda _message: None)
    assert report["manifest"].endswith("manifest_%s.json" % report["set_id"])
    return report


def _restore_db(run_playbook, cluster, report, expect_ok=True):
    host_vars = {"christmas_backup_dir": os.path.dirname(report["manifest"]), "christmas_db_host": "127.0.0.1",
                 "christmas_db_port": cluster.port, "christmas_db_admin_user": "postgres",
                 "christmas_db_admin_password": cluster.password}
    return run_playbook("restore_db", host_vars, {"manifest": report["manifest"]}, expect_ok=expect_ok)


def _hook_calls(cluster):
    with open(cluster.log, encoding="utf-8", errors="replace") as handle:
        return HOOK_RE.findall(handle.read())


def _databases(cluster):
    return cluster.sql("SELECT datname, oid FROM pg_database ORDER BY 1")


def _timescaledb_version(cluster):
    return cluster.sql("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'", dbname="christmas")


def test_restore_onto_a_new_cluster_loads_between_the_hooks_and_keeps_the_version(
        timescaledb_standin, run_playbook, make_cluster, tmp_dir):
    source = _with_timescaledb(seed_platform(make_cluster()), "2.14.2")
    before = source.snapshot()
    report = _backup(source, tmp_dir)

    target = make_cluster()
    _restore_db(run_playbook, target, report)

    scratch = "christmas__restore_%s" % report["set_id"]
    assert _hook_calls(target) == [("pre_restore", scratch), ("post_restore", scratch)]
    assert _timescaledb_version(target) == [("2.14.2",)]
    assert Platform(target, source.password, source.analyst_password).snapshot() == before
    # post_restore took the database out of restoring mode before it was swapped in.
    assert target.sql("SELECT s.setconfig FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase "
                      "WHERE d.datname = 'christmas'")[0][0] == ["work_mem=8MB",
                                                                "christmas_recovery.restored_set=" + report["set_id"]]
    assert [name for name, _oid in _databases(target)] == ["christmas", "postgres", "template0", "template1"]


def test_restore_refuses_a_database_with_another_timescaledb_version_and_leaves_it_untouched(
        timescaledb_standin, run_playbook, make_cluster, tmp_dir):
    platform = _with_timescaledb(seed_platform(make_cluster()), "2.14.2")
    report = _backup(platform, tmp_dir)
    platform.cluster.sql("DROP EXTENSION timescaledb; CREATE EXTENSION timescaledb VERSION '2.15.0'",
                         dbname="christmas")
    platform.sql("DELETE FROM orders WHERE id > 100")
    before, databases = platform.snapshot(), _databases(platform.cluster)

    result = _restore_db(run_playbook, platform.cluster, report, expect_ok=False)

    assert "database christmas has TimescaleDB 2.15.0, the backup was made with 2.14.2" in result.stdout
    assert platform.snapshot() == before
    assert _databases(platform.cluster) == databases
    assert _timescaledb_version(platform.cluster) == [("2.15.0",)]
    assert _hook_calls(platform.cluster) == []


def _table_in_new_tablespace(platform):
    """A table in tablespace fastspace, whose directory lives beside the cluster (postgres must own it)."""
    location = os.path.join(platform.cluster.root, "fastspace")
    os.mkdir(location, 0o700)
    postgres = pwd.getpwnam("postgres")
    os.chown(location, postgres.pw_uid, postgres.pw_gid)
    platform.cluster.sql("CREATE TABLESPACE fastspace LOCATION '%s'" % location)
    platform.cluster.sql("GRANT CREATE ON TABLESPACE fastspace TO christmas")
    platform.sql("CREATE TABLE hot_ticks (symbol text, price numeric) TABLESPACE fastspace;"
                 "INSERT INTO hot_ticks SELECT 'SYM' || i, i FROM generate_series(1, 50) AS i")


def test_a_failed_pg_restore_still_calls_post_restore_and_leaves_the_target_untouched(
        timescaledb_standin, run_playbook, make_cluster, tmp_dir):
    source = _with_timescaledb(seed_platform(make_cluster()), "2.14.2")
    _table_in_new_tablespace(source)
    report = _backup(source, tmp_dir)

    target = _with_timescaledb(seed_platform(make_cluster()), "2.14.2")  # no tablespace fastspace here
    target.sql("UPDATE orders SET qty = 0")
    before, databases = target.snapshot(), _databases(target.cluster)

    result = _restore_db(run_playbook, target.cluster, report, expect_ok=False)

    scratch = "christmas__restore_%s" % report["set_id"]
    assert "pg_restore into %s failed" % scratch in result.stdout
    assert "could not set default_tablespace to fastspace" in result.stdout
    assert _hook_calls(target.cluster) == [("pre_restore", scratch), ("post_restore", scratch)]
    assert target.snapshot() == before
    assert _databases(target.cluster) == databases  # same oid for christmas, no scratch database left

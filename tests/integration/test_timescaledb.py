"""The TimescaleDB path of backups and restore_db.yml, with the SQL-only STAND-IN extension
(tests/fixtures/timescaledb_standin) and its stand-in launcher (tests/timescaledb_standin.py): catalog tables with
foreign keys between them, hypertables of chunks (some compressed), a continuous aggregate, jobs and their scheduler,
the preload requirement. The restore hooks log each call to the server log."""

from __future__ import annotations

import json
import os
import pwd
import re
import time

import pytest
from conftest import Platform, seed_hypertable_platform, seed_platform
from timescaledb_standin import EXPECTED_FACTS, SCHEDULER, catalog

from ansible_collections.christmas.recovery.plugins.module_utils.db.connection import PgTarget
from ansible_collections.christmas.recovery.plugins.module_utils.platform.validation import validate
from ansible_collections.christmas.recovery.plugins.module_utils.sets.backup_set import make_backup_set

# The stand-in is installed into the system extension directory for the session: one worker only.
pytestmark = pytest.mark.xdist_group("timescaledb")

HOOK_RE = re.compile(r"timescaledb-standin: (pre_restore|post_restore) in database (\S+)")
WAIT = 30


def _backup(platform, tmp_dir):
    """A database-only set, made as the superuser so that role passwords come along; returns its report."""
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


def _manifest(report):
    with open(report["manifest"], encoding="utf-8") as handle:
        return json.load(handle)


def _hook_calls(cluster):
    with open(cluster.log, encoding="utf-8", errors="replace") as handle:
        return HOOK_RE.findall(handle.read())


def _databases(cluster):
    return cluster.sql("SELECT datname, oid FROM pg_database ORDER BY 1")


def _roles(cluster):
    return cluster.sql("SELECT rolname FROM pg_roles ORDER BY 1")


def _timescaledb_version(cluster):
    return cluster.sql("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'", dbname="christmas")


def _scheduler_sessions(cluster, dbname="christmas"):
    return cluster.sql("SELECT count(*) FROM pg_stat_activity WHERE datname = '%s' AND application_name = '%s'" % (
        dbname, SCHEDULER))[0][0]


def _wait_for_scheduler(cluster):
    """Whether the launcher runs a scheduler for database christmas within WAIT seconds."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if cluster.launcher.state_of("christmas") == "running" and _scheduler_sessions(cluster) == 1:
            return True
        time.sleep(0.1)
    return False


def test_backup_counts_each_hypertable_through_its_name_and_records_timescaledbs_objects(
        timescaledb_cluster, tmp_dir):
    platform = seed_hypertable_platform(timescaledb_cluster())

    meta = _manifest(_backup(platform, tmp_dir))["db"]

    assert meta["row_counts"] == {"public.market_data": 5000, "public.orders": 700, "public.positions": 17}
    assert meta["timescaledb"] == EXPECTED_FACTS
    assert meta["market_data"]["rows"] == 5000


def test_a_hypertable_platform_round_trips_with_parallel_jobs_and_its_jobs_run_after(
        timescaledb_cluster, run_playbook, tmp_dir):
    source = seed_hypertable_platform(timescaledb_cluster())
    before, source_catalog = source.snapshot(), catalog(source.cluster)
    report = _backup(source, tmp_dir)
    target = timescaledb_cluster()

    _restore_db(run_playbook, target, report)  # at the default christmas_jobs (2)

    scratch = "christmas__restore_%s" % report["set_id"]
    assert _hook_calls(target) == [("pre_restore", scratch), ("post_restore", scratch)]
    assert Platform(target, source.password, source.analyst_password).snapshot() == before
    assert catalog(target) == source_catalog
    assert _timescaledb_version(target) == [("2.14.2",)]
    # The swap killed no scheduler: the launcher did not disable the database, and its jobs run in it.
    assert _wait_for_scheduler(target), target.launcher.state
    assert [name for name, _oid in _databases(target)] == ["christmas", "postgres", "template0", "template1"]


def test_validation_fails_when_no_scheduler_runs_the_restored_jobs(timescaledb_cluster, tmp_dir):
    platform = seed_hypertable_platform(timescaledb_cluster())
    report = _backup(platform, tmp_dir)
    db = PgTarget(host="127.0.0.1", port=platform.cluster.port, password=platform.password)
    assert _wait_for_scheduler(platform.cluster)
    checks = {check["name"]: check for check in validate(report["manifest"], db=db, components=["db"],
                                                          progress=lambda _message: None)["checks"]}
    assert checks["db: timescaledb objects"]["ok"] and checks["db: timescaledb scheduler"]["ok"], checks

    platform.cluster.sql("SELECT _timescaledb_functions.stop_background_workers()", dbname="christmas")
    deadline = time.monotonic() + WAIT
    while _scheduler_sessions(platform.cluster) and time.monotonic() < deadline:
        time.sleep(0.1)
    scheduler = validate(report["manifest"], db=db, components=["db"], progress=lambda _message: None)["checks"][-1]

    assert scheduler["name"] == "db: timescaledb scheduler" and not scheduler["ok"]
    assert scheduler["detail"].startswith("no TimescaleDB scheduler in database christmas after")


def test_restore_onto_a_cluster_that_does_not_preload_timescaledb_is_refused_before_any_change(
        timescaledb_cluster, make_cluster, run_playbook, tmp_dir):
    report = _backup(seed_hypertable_platform(timescaledb_cluster()), tmp_dir)
    target = make_cluster()  # the stand-in is installed, but not preloaded
    databases, roles = _databases(target), _roles(target)

    result = _restore_db(run_playbook, target, report, expect_ok=False)

    assert ("target 127.0.0.1:%d does not preload TimescaleDB: add timescaledb to shared_preload_libraries and "
            "restart PostgreSQL first" % target.port) in result.stdout
    assert _databases(target) == databases
    assert _roles(target) == roles


def test_restore_refuses_a_database_with_another_timescaledb_version_and_leaves_it_untouched(
        timescaledb_cluster, run_playbook, tmp_dir):
    platform = seed_platform(timescaledb_cluster())
    platform.cluster.sql("CREATE EXTENSION timescaledb VERSION '2.14.2'", dbname="christmas")
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
        timescaledb_cluster, run_playbook, tmp_dir):
    source = seed_hypertable_platform(timescaledb_cluster())
    _table_in_new_tablespace(source)
    report = _backup(source, tmp_dir)

    target = seed_platform(timescaledb_cluster())  # no tablespace fastspace here
    target.cluster.sql("CREATE EXTENSION timescaledb VERSION '2.14.2'", dbname="christmas")
    target.sql("UPDATE orders SET qty = 0")
    before, databases = target.snapshot(), _databases(target.cluster)

    result = _restore_db(run_playbook, target.cluster, report, expect_ok=False)

    scratch = "christmas__restore_%s" % report["set_id"]
    assert "pg_restore into %s failed" % scratch in result.stdout
    assert "could not set default_tablespace to fastspace" in result.stdout
    assert _hook_calls(target.cluster) == [("pre_restore", scratch), ("post_restore", scratch)]
    assert target.snapshot() == before
    assert _databases(target.cluster) == databases  # same oid for christmas, no scratch database left

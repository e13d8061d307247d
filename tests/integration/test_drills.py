"""Disaster-recovery drills against the sample platform running as a compose project under podman: each drill
injects its fault for real, and the tests check the platform on the servers afterwards and the drill's record in the
incident database (read with SQLite directly)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess

import pytest
from conftest import read_metrics, redis_state, value

from lab import CONTAINERS_CONF

pytestmark = pytest.mark.xdist_group("podman")

GENEROUS = {"detection_seconds": 120, "rto_seconds": 600, "rpo_seconds": 90000}
RUNBOOK_CHECKS = {"alerts fire in time", "recovery time within expectations", "data loss within target"}
MEASUREMENTS = {"detection_seconds", "rto_seconds", "rpo_seconds", "target_detection_seconds", "target_rto_seconds",
                "target_rpo_seconds"}


@pytest.fixture
def drill(run_playbook, lab, tmp_dir):
    """playbooks/dr_drill.yml -e scenario=NAME against the lab, after a fresh backup of the healthy platform."""

    def run(scenario, targets=None, expect_ok=True, **host_vars):
        assert lab.health()[0] == 200
        variables = lab.host_vars(christmas_drill_targets_override={scenario: targets or GENEROUS},
                                  christmas_metrics_dir=os.path.join(tmp_dir, "metrics"), **host_vars)
        run_playbook("backup", variables, env={"CONTAINERS_CONF": CONTAINERS_CONF})
        return run_playbook("dr_drill", variables, extra_vars={"scenario": scenario}, expect_ok=expect_ok,
                            env={"CONTAINERS_CONF": CONTAINERS_CONF})

    return run


def platform_markers(lab):
    """What the drills must not lose: market_data's rows and newest time, every Redis key."""
    (rows, newest), = lab.sql("SELECT count(*), max(ts)::text FROM market_data")
    return {"market_data": (rows, newest), "redis": redis_state(lab)}


def drill_records(lab, procedure):
    with sqlite3.connect(lab.host_vars()["christmas_incident_db"]) as conn:
        conn.row_factory = sqlite3.Row
        rows = [dict(row) for row in conn.execute(
            "SELECT * FROM christmas_incidents WHERE procedure = ? ORDER BY id", (procedure,))]
    for row in rows:
        for key in ("commands", "verification", "measurements"):
            row[key] = json.loads(row[key])
    return rows


def assert_healthy(lab, markers):
    assert lab.health()[0] == 200
    for service in ("timescaledb", "redis", "api"):
        assert lab.state(service) == "running"
    assert platform_markers(lab) == markers


def checks(record):
    return {check["name"]: check for check in record["verification"]}


def test_db_stop_drill_heals_by_restart_and_records_its_measurements(lab, drill, tmp_dir):
    before = platform_markers(lab)

    result = drill("db_stop")

    assert_healthy(lab, before)
    record, = drill_records(lab, "drill_db_stop")
    assert (record["status"], record["incident_type"], record["backup_set"]) == ("passed", "drill", None)
    assert set(record["measurements"]) == MEASUREMENTS
    measured = record["measurements"]
    assert 0 < measured["detection_seconds"] <= measured["rto_seconds"] <= 600 and measured["rpo_seconds"] == 0
    assert measured["target_rto_seconds"] == 600
    answered = checks(record)
    assert RUNBOOK_CHECKS | {"restore succeeds", "data intact after recovery", "all services restart normally"} == set(
        answered)
    assert all(check["ok"] for check in answered.values())
    assert answered["restore succeeds"]["actual"] == "healed by restart"
    assert any("stop timescaledb" in step for step in record["commands"])
    assert any("healed" in step for step in record["commands"])
    assert "drill db_stop passed" in result.stdout
    exported = read_metrics(os.path.join(tmp_dir, "metrics"))["christmas_recovery_drill_db_stop.prom"]
    labels = {"kind": "drill", "scenario": "db_stop"}
    assert value(exported, "drill_passed", **labels) == 1 and value(exported, "last_run_success", **labels) == 1
    assert value(exported, "drill_rto_seconds", **labels) == measured["rto_seconds"]
    assert value(exported, "drill_rto_target_seconds", **labels) == 600


def test_app_kill_drill_restarts_the_killed_service_and_says_who_did(lab, drill):
    before = platform_markers(lab)
    started = lab.started_at("api")

    drill("app_kill", christmas_drill_restart_wait=3)

    assert_healthy(lab, before)
    assert lab.started_at("api") != started
    record, = drill_records(lab, "drill_app_kill")
    assert record["status"] == "passed" and record["measurements"]["rpo_seconds"] == 0
    answered = checks(record)
    assert answered["service restarts after the kill"]["actual"] == "restarted by the drill"  # no restart policy
    assert {"data intact after recovery", "all services restart normally"} <= set(answered)
    assert "restore succeeds" not in answered
    assert any(step.startswith("fault: podman kill --signal KILL ") for step in record["commands"])
    assert any("not restarted by a restart policy within 3 s" in step for step in record["commands"])


@pytest.fixture
def small_backup_fs(tmp_dir):
    """A 48 MiB tmpfs as the lab's backup dir (room for a few sets), unmounted afterwards."""
    path = os.path.join(tmp_dir, "backups")
    os.makedirs(path)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m,mode=0700", "tmpfs", path], capture_output=True,
                          text=True, check=False)
    if done.returncode:
        pytest.skip("cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): %s" % done.stderr.strip())
    try:
        yield path
    finally:
        if subprocess.run(["umount", path], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", path], capture_output=True, check=False)


def test_disk_full_drill_warns_fails_the_backup_cleanly_and_backs_up_after_the_cleanup(lab, drill, small_backup_fs):
    before = platform_markers(lab)
    drill("disk_full", christmas_backup_dir=small_backup_fs)

    assert_healthy(lab, before)
    record, = drill_records(lab, "drill_disk_full")
    assert record["status"] == "passed", record["error"]
    answered = checks(record)
    assert answered["backup during the fault fails cleanly"]["actual"]["backup"].startswith("failed: ")
    assert answered["backup during the fault fails cleanly"]["actual"]["left"] == []
    assert {"cleanup frees the space", "backup succeeds after the cleanup", "data intact after recovery"} <= set(
        answered)
    names = os.listdir(small_backup_fs)
    assert not [name for name in names if name.endswith((".partial", ".tmp", ".fill"))]
    manifests = sorted(name for name in names if name.startswith("manifest_") and name.endswith(".json"))
    assert len(manifests) == 2  # the drill's first backup, and the one after the cleanup
    sets = [name for name in names if name.startswith("set_")]
    assert sorted("manifest_%s.json" % name[len("set_"):] for name in sets) == manifests  # every set complete
    stats = os.statvfs(small_backup_fs)
    assert stats.f_bavail / stats.f_blocks > 0.5
    measured = record["measurements"]
    assert measured["detection_seconds"] < measured["rto_seconds"] and 0 <= measured["rpo_seconds"] < 120


def test_a_missed_target_fails_the_drill_naming_it_and_still_records_it(lab, drill, tmp_dir):
    before = platform_markers(lab)

    result = drill("db_stop", targets={"rto_seconds": 0.5}, expect_ok=False)

    message = result.failure_message()
    assert message.startswith("drill db_stop failed: recovery time within expectations: RTO ")
    assert message.endswith(", target 0.5 s")
    assert_healthy(lab, before)  # recovered all the same
    record = drill_records(lab, "drill_db_stop")[-1]
    assert record["status"] == "failed" and record["error"] == message[len("drill db_stop failed: "):]
    answered = checks(record)
    assert answered["recovery time within expectations"]["ok"] is False
    assert answered["alerts fire in time"]["ok"] and answered["restore succeeds"]["ok"]
    assert record["measurements"]["rto_seconds"] > record["measurements"]["target_rto_seconds"] == 0.5
    assert record["measurements"]["target_detection_seconds"] == 30  # the default, the override only changed rto
    exported = read_metrics(os.path.join(tmp_dir, "metrics"))["christmas_recovery_drill_db_stop.prom"]
    labels = {"kind": "drill", "scenario": "db_stop"}
    assert value(exported, "drill_passed", **labels) == 0 and value(exported, "last_run_success", **labels) == 0


def test_unknown_scenario_fails_in_one_line_listing_the_scenarios(run_playbook, tmp_dir):
    result = run_playbook("dr_drill", {"christmas_backup_dir": tmp_dir}, extra_vars={"scenario": "meteor"},
                          expect_ok=False)

    assert result.failure_message() == ("unknown drill scenario 'meteor'; known: db_stop, app_kill, disk_full, "
                                        "host_loss, failover (-e scenario=NAME)")
    assert os.listdir(tmp_dir) == ["inventory.json"]  # nothing was touched, nothing recorded

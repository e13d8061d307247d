"""christmas_drill_marker against a real PostgreSQL: the check-mode sequence, markers found after a restart, and a
one-line error while the database is down."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import ROOT


def marker_module(platform, tmp_dir, check=False, **args):
    """Run the module the way Ansible does (arguments in a file), as the platform's owner over TCP."""
    args = dict(db_host="127.0.0.1", db_port=platform.cluster.port, db_password=platform.password,
                _ansible_check_mode=check, **args)
    path = os.path.join(tmp_dir, "args.json")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump({"ANSIBLE_MODULE_ARGS": args}, handle)
    proc = subprocess.run([sys.executable, "-m", "ansible_collections.christmas.recovery.plugins.modules."
                           "christmas_drill_marker", path], capture_output=True, text=True, check=False,
                          env=dict(os.environ, PYTHONPATH=os.path.join(ROOT, ".collections")))
    return json.loads(proc.stdout)


def markers(platform):
    return [marker for (marker,) in platform.sql("SELECT marker FROM christmas_drill_markers ORDER BY 1")]


def test_marker_check_mode_writes_nothing_then_written_once_and_found_after_a_restart(platform, tmp_dir):
    dry = marker_module(platform, tmp_dir, check=True, marker="drill-1")
    assert (dry["changed"], dry["written"]) == (True, False)
    assert platform.sql("SELECT to_regclass('christmas_drill_markers') IS NULL") == [(True,)]

    first = marker_module(platform, tmp_dir, marker="drill-1")
    assert (first["changed"], first["written"]) == (True, True)
    assert [(first["market_data_rows"],)] == platform.sql("SELECT count(*) FROM market_data")
    assert markers(platform) == ["drill-1"]

    platform.cluster.restart()
    after = marker_module(platform, tmp_dir, marker="drill-1.after", expect=["drill-1", "drill-0"])
    assert after["present"] == {"drill-1": True, "drill-0": False} and after["written"] is True
    assert markers(platform) == ["drill-1", "drill-1.after"]

    again = marker_module(platform, tmp_dir, marker="drill-1.after")
    assert (again["changed"], again["written"]) == (False, False)
    assert markers(platform) == ["drill-1", "drill-1.after"]


def test_marker_on_a_stopped_database_fails_in_one_line_without_the_password(platform, tmp_dir):
    platform.cluster.stop()
    result = marker_module(platform, tmp_dir, marker="drill-2")
    assert result["failed"] is True
    assert result["msg"].startswith("cannot connect to PostgreSQL christmas@127.0.0.1:%d/" % platform.cluster.port)
    assert "\n" not in result["msg"] and platform.password not in json.dumps(result)


def test_tracers_measure_what_each_component_lost_and_the_redis_key_goes_again(platform, make_redis, config_dir,
                                                                                tmp_dir):
    server = make_redis(password="tracer-secret")
    connection = dict(redis_host="127.0.0.1", redis_port=server.port, redis_password=server.password,
                      config_dir=config_dir)
    traced = marker_module(platform, tmp_dir, action="trace", marker="drill-db_stop-1", **connection)
    assert sorted(traced["traced"]) == ["config", "db", "redis"]
    assert markers(platform) == ["drill-db_stop-1"]
    assert server.client(0).get("christmas:drill:drill-db_stop-1") is not None
    fault_at = traced["traced"]["db"]["at"] + 2.0

    kept = marker_module(platform, tmp_dir, action="find", marker="drill-db_stop-1", traced=traced["traced"],
                         fault_at=fault_at, **connection)
    assert kept["rpo_seconds"] == 0 and all(entry["came_back"] for entry in kept["components"].values())
    assert server.client(0).get("christmas:drill:drill-db_stop-1") is None  # the drill leaves no key behind

    # What a restore of an older point looks like: the row and the key gone, the config tree changed.
    platform.sql("DELETE FROM christmas_drill_markers")
    with open(os.path.join(config_dir, "app.yml"), "a", encoding="utf-8") as handle:
        handle.write("restored: older\n")
    lost = marker_module(platform, tmp_dir, action="find", marker="drill-db_stop-1", traced=traced["traced"],
                         fault_at=fault_at, restored_at=fault_at - 3600, **connection)
    assert lost["rpo_seconds"] == 3600.0
    assert {name: entry["came_back"] for name, entry in lost["components"].items()} == \
        {"db": False, "redis": False, "config": False}
    assert "db: its tracer is missing, 3600.0 s lost (restored to " in lost["rpo_source"]
    unknown = marker_module(platform, tmp_dir, action="find", marker="drill-db_stop-1", traced=traced["traced"],
                            fault_at=fault_at, **connection)
    assert unknown["rpo_seconds"] is None and "the point restored to is unknown" in unknown["rpo_source"]
    assert "tracer-secret" not in json.dumps([traced, kept, lost, unknown])

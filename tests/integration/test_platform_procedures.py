"""The runbook's procedures against the sample platform running as a compose project under podman: break it the way
the runbook's failure describes, run the playbook, and check the platform is healthy, its data identical to the
backup, and the recovery recorded."""

from __future__ import annotations

import functools
import json
import os
import sqlite3

import psycopg2
import pytest
from conftest import redis_state, seed_redis, tree_state

from lab import CONTAINERS_CONF, LabPlatform

pytestmark = pytest.mark.xdist_group("podman")


@pytest.fixture
def play(run_playbook):
    """ansible-playbook with the lab's podman settings, as a compose host's own configuration would give them."""
    return functools.partial(run_playbook, env={"CONTAINERS_CONF": CONTAINERS_CONF})


def platform_state(lab):
    return {"db": lab.table_digests(), "redis": redis_state(lab), "config": tree_state(lab.config_dir)}


def backed_up(lab, play):
    """A fresh backup of the healthy platform, and the state it holds."""
    assert lab.health()[0] == 200
    play("backup", lab.host_vars())
    return platform_state(lab)


def incidents(lab):
    path = lab.host_vars()["christmas_incident_db"]
    with sqlite3.connect(path) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(row) for row in conn.execute("SELECT * FROM christmas_incidents ORDER BY id")]


def last_incident(lab):
    record = incidents(lab)[-1]
    for key in ("commands", "verification", "components"):
        if isinstance(record.get(key), str):
            record[key] = json.loads(record[key])
    return record


def assert_recovered(lab, expected, procedure, status="recovered"):
    assert lab.health()[0] == 200
    assert platform_state(lab) == expected
    for service in ("timescaledb", "redis", "api"):
        assert lab.state(service) == "running"
    record = last_incident(lab)
    assert (record["procedure"], record["status"]) == (procedure, status)
    assert record["verification"] and all(check["ok"] for check in record["verification"])
    return record


def test_db_procedure_heals_a_stopped_database_with_a_restart(lab, play):
    expected = backed_up(lab, play)
    lab.compose("stop", "timescaledb")
    assert lab.health()[0] == 503

    play("restore_db", lab.host_vars(), extra_vars={"incident_type": "database",
                                                             "incident_symptoms": "api answers 503"})

    record = assert_recovered(lab, expected, "db", status="healed_by_restart")
    assert record["incident_symptoms"] == "api answers 503"
    assert any("healed" in step for step in record["commands"])
    assert not any(step.startswith("restore of") for step in record["commands"])


def test_db_procedure_restores_a_wiped_volume(lab, play):
    expected = backed_up(lab, play)
    lab.podman("rm", "-f", "-t", "0", lab.container("timescaledb"))
    lab.podman("volume", "rm", "%s_pgdata" % lab.name)

    play("restore_db", lab.host_vars())

    record = assert_recovered(lab, expected, "db")
    steps = " | ".join(record["commands"])
    assert "did not heal" in steps and "restore of db: set" in steps
    assert steps.index("stop api") < steps.index("restore of db: set") < steps.index("up -d api")
    names = [check["name"] for check in record["verification"]]
    assert {"db: row counts", "db: market_data rows", "db: newest market_data", "services: up"} <= set(names)


def test_redis_procedure_after_flushall(lab, play):
    expected = backed_up(lab, play)
    started = lab.started_at("redis")
    lab.client().flushall()

    play("restore_redis", lab.host_vars())

    assert_recovered(lab, expected, "redis")
    assert lab.started_at("redis") != started  # restarted after the restore, and served its keys from disk


def test_redis_procedure_with_the_aof_off(lab_image, play):
    platform = LabPlatform(lab_image, appendonly=False)
    try:
        platform.up()
        seed_redis(platform)
        expected = backed_up(platform, play)["redis"]
        platform.client().flushall()

        play("restore_redis", platform.host_vars())

        assert redis_state(platform) == expected  # after the restart: loaded from the RDB the restore saved
        assert platform.client().config_get("appendonly") == {"appendonly": "no"}
        assert last_incident(platform)["status"] == "recovered"
    finally:
        platform.destroy()


def test_db_procedure_ends_open_sessions_of_a_client_it_does_not_manage(lab, play):
    expected = backed_up(lab, play)
    lab.sql("DELETE FROM orders WHERE id % 2 = 0")  # healthy but wrong: the operator wants the set back
    client = lab.connect()
    client.autocommit = False
    with client.cursor() as cur:
        cur.execute("SELECT count(*) FROM orders")  # a session holding a snapshot of the old database

    play("restore_db", lab.host_vars())

    assert_recovered(lab, expected, "db")
    with pytest.raises(psycopg2.OperationalError), client.cursor() as cur:
        cur.execute("SELECT 1")
    client.close()


def test_config_procedure_after_corruption(lab, play):
    expected = backed_up(lab, play)
    api_container = lab.podman("inspect", "--format", "{{.Id}}", lab.container("api")).stdout
    with open(os.path.join(lab.config_dir, "settings.json"), "w", encoding="utf-8") as handle:
        handle.write("{ corrupted")
    assert lab.health()[0] == 503

    play("restore_config", lab.host_vars())

    record = assert_recovered(lab, expected, "config")
    assert lab.podman("inspect", "--format", "{{.Id}}", lab.container("api")).stdout != api_container  # down, up
    safety = [name for name in os.listdir(lab.root) if name.startswith("config") and name != "config"]
    assert len(safety) == 1
    with open(os.path.join(lab.root, safety[0], "settings.json"), encoding="utf-8") as handle:
        assert handle.read() == "{ corrupted"
    assert [step for step in record["commands"] if step.startswith("plan of config")]


def test_full_procedure_after_losing_everything(lab, play):
    expected = backed_up(lab, play)
    lab.client().flushall()
    lab.compose("down")
    lab.podman("volume", "rm", "%s_pgdata" % lab.name, "%s_redisdata" % lab.name)
    with open(os.path.join(lab.config_dir, "settings.json"), "w", encoding="utf-8") as handle:
        handle.write("{}")

    play("restore_full", lab.host_vars(), extra_vars={"incident_type": "hardware"})

    record = assert_recovered(lab, expected, "full")
    assert record["incident_type"] == "hardware"
    assert {"db", "redis", "config"} <= {check["name"].split(":")[0] for check in record["verification"]}


def test_partial_restore_with_skip_flags_leaves_the_database_alone(lab, play):
    expected = backed_up(lab, play)
    lab.sql("INSERT INTO orders (symbol, side, qty) VALUES ('NEW', 'buy', 1)")
    lab.client().flushall()
    os.unlink(os.path.join(lab.config_dir, "strategies", "momentum.json"))

    play("restore_full", lab.host_vars(), extra_vars={"skip_db": True})

    state = platform_state(lab)
    assert state["redis"] == expected["redis"] and state["config"] == expected["config"]
    assert state["db"]["orders"][1] == expected["db"]["orders"][1] + 1  # the new order is still there
    record = last_incident(lab)
    assert (record["procedure"], record["status"], record["components"]) == ("partial", "recovered",
                                                                           ["redis", "config"])
    lab.sql("DELETE FROM orders WHERE symbol = 'NEW'")


def test_check_mode_shows_the_plan_and_changes_nothing(lab, play):
    expected = backed_up(lab, play)
    lab.client().flushall()
    lab.compose("stop", "api")
    before = platform_state(lab), lab.started_at("redis"), len(incidents(lab))

    result = play("restore_full", lab.host_vars(), check=True)

    assert (platform_state(lab), lab.started_at("redis"), len(incidents(lab))) == before
    assert lab.state("api") == "exited"
    assert "down" in result.output and "would" in result.output.lower()
    play("restore_full", lab.host_vars())
    assert_recovered(lab, expected, "full")


def test_failed_validation_fails_the_play_and_is_recorded(lab, play):
    backed_up(lab, play)
    query = {"name": "a million orders", "sql": "SELECT count(*) FROM orders", "min": 1000000}
    host_vars = lab.host_vars(christmas_validation_queries=[query])

    result = play("restore_db", host_vars, expect_ok=False)

    assert "query: a million orders" in result.output
    record = last_incident(lab)
    assert record["status"] == "failed" and "a million orders" in record["error"]
    failed = [check for check in record["verification"] if not check["ok"]]
    assert [check["name"] for check in failed] == ["query: a million orders"]
    with open(record["markdown"], encoding="utf-8") as handle:
        assert "a million orders" in handle.read()


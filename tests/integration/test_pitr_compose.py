"""Continuous protection of the sample platform run as a compose project under podman: the database's
archive_command and pgBackRest's server-side commands run inside its container, the repository mounted there at its
own path; restore_full.yml -e target_time=T stops the container, restores its data volume from this host, and the
container's server replays the archived WAL to T."""

from __future__ import annotations

import functools
import os
import time

import pytest
from conftest import redis_state, seeded_lab, tree_state
from pitr_helpers import iso, second_boundary

from lab import CONTAINERS_CONF

pytestmark = pytest.mark.xdist_group("podman")


@pytest.fixture
def play(run_playbook):
    return functools.partial(run_playbook, env={"CONTAINERS_CONF": CONTAINERS_CONF})


@pytest.fixture
def lab(lab_image):
    with seeded_lab(lab_image) as platform:
        os.chmod(platform.root, 0o711)  # the server's archive_command reaches the repository below it
        yield platform


def _volume(lab, name):
    return lab.podman("volume", "inspect", "--format", "{{.Mountpoint}}", "%s_%s" % (lab.name, name)).stdout.strip()


def _protected_vars(lab):
    return lab.host_vars(christmas_pg_data_dir=os.path.join(_volume(lab, "pgdata"), "pgdata"),
                         christmas_redis_data_dir=_volume(lab, "redisdata"))


def _state(lab):
    return {"db": lab.table_digests(), "redis": redis_state(lab), "config": tree_state(lab.config_dir)}


def _in_container(lab, *argv):
    return lab.podman("exec", "-u", "postgres", lab.container("timescaledb"), *argv).stdout


def test_a_platform_run_by_compose_is_protected_and_restored_to_a_second(lab, play):
    host_vars = _protected_vars(lab)
    first = play("backup", host_vars)
    assert "Continuous protection is off:" not in first.output, first.output[-3000:]
    assert lab.sql("SHOW archive_mode", user="postgres")[0][0] == "on"
    command = lab.sql("SHOW archive_command", user="postgres")[0][0]
    assert command.startswith("pgbackrest --config=%s/pgbackrest.conf.d/" % lab.backup_dir)
    info = _in_container(lab, "pgbackrest", "--config=%s/pgbackrest.conf.d/pgbackrest.conf" % lab.backup_dir,
                         "--stanza=christmas", "info")
    assert "full backup" in info  # the container's pgBackRest sees the repository this host wrote

    lab.sql("INSERT INTO orders (symbol, side, qty) VALUES ('SYM1', 'buy', 7)")
    lab.client().set("fill:before", "100@101.5")
    with open(os.path.join(lab.config_dir, "limits.json"), "w", encoding="utf-8") as handle:
        handle.write('{"max_position": 100}\n')
    play("archive", host_vars)
    expected = _state(lab)
    target = second_boundary()
    lab.sql("DELETE FROM orders")
    lab.client().flushdb()
    os.unlink(os.path.join(lab.config_dir, "limits.json"))
    play("archive", host_vars)
    assert _state(lab) != expected

    started = lab.started_at("timescaledb")
    restored = play("restore_full", host_vars, {"target_time": iso(target)})
    assert _state(lab) == expected, restored.output[-3000:]
    assert "restored to %s" % time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(target)) in restored.output
    assert lab.started_at("timescaledb") != started  # stopped for the restore, started on the restored volume
    assert lab.sql("SELECT pg_is_in_recovery()", user="postgres")[0][0] is False
    assert lab.health()[0] == 200

    # The same second again: every component is there already, nothing is stopped or replaced.
    restarted = lab.started_at("timescaledb"), lab.started_at("redis"), lab.started_at("api")
    again = play("restore_full", host_vars, {"target_time": iso(target)})
    assert "already restored to %s" % time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(target)) in again.output
    assert (lab.started_at("timescaledb"), lab.started_at("redis"), lab.started_at("api")) == restarted
    assert _state(lab) == expected

    # Archiving goes on inside the container, on the new timeline.
    lab.sql("INSERT INTO orders (symbol, side, qty) VALUES ('SYM4', 'buy', 3)")
    play("archive", host_vars)
    timeline = lab.sql("SELECT timeline_id FROM pg_control_checkpoint()", user="postgres")[0][0]
    assert timeline > 1


def test_a_repository_the_container_cannot_reach_turns_protection_off_and_says_why(lab, play):
    host_vars = _protected_vars(lab)
    elsewhere = os.path.join(lab.root, "elsewhere")
    os.mkdir(elsewhere, 0o700)
    done = play("backup", dict(host_vars, christmas_pitr_repo=os.path.join(elsewhere, "pgbackrest")))
    assert ("Continuous protection is off: %s/pgbackrest is not mounted into the container of compose service "
            "timescaledb at the same path" % elsewhere) in done.output
    assert lab.sql("SHOW archive_mode", user="postgres")[0][0] == "off"
    assert not os.path.exists(os.path.join(elsewhere, "pgbackrest"))

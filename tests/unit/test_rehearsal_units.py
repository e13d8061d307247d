"""Pure parts of restore rehearsals: port rules, the scratch Redis configuration, the scratch directory's checks."""

from __future__ import annotations

import os
import pwd

import pytest

from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.platform import rehearsal, scratch


@pytest.mark.parametrize("ports, production, problem", [
    ({"database": 5432, "Redis": 0}, {5432, 6379}, "scratch database port 5432 is a production port (5432, 6379)"),
    ({"database": 0, "Redis": 6379}, {5432, 6379}, "scratch Redis port 6379 is a production port (5432, 6379)"),
    ({"database": 55432, "Redis": 55432}, {5432}, "the scratch database and Redis ports are both 55432"),
    ({"database": 70000, "Redis": 0}, set(), "scratch database port 70000 is not a port number"),
])
def test_check_ports_refuses_production_ports_in_one_line(ports, production, problem):
    with pytest.raises(RecoveryError) as caught:
        rehearsal.check_ports(ports, production)
    assert str(caught.value).startswith(problem)


def test_check_ports_accepts_free_ports_and_zero():
    rehearsal.check_ports({"database": 0, "Redis": 0}, {5432, 6379})
    rehearsal.check_ports({"database": 55432, "Redis": 56379}, {5432, 6379})


def test_redis_config_listens_on_loopback_only_without_persistence_and_quotes_the_password():
    text = rehearsal.redis_config(56379, "/scratch/redis", 'pa"ss\\word', 16)
    lines = text.splitlines()
    assert "bind 127.0.0.1" in lines and "port 56379" in lines and 'save ""' in lines
    assert "appendonly no" in lines and "daemonize no" in lines and "dir /scratch/redis" in lines
    assert 'requirepass "pa\\"ss\\\\word"' in lines


def test_redis_databases_cover_every_database_of_the_set():
    assert rehearsal.redis_databases({}) == 16
    assert rehearsal.redis_databases({"redis": {"keys_per_db_at_start": {"0": 3, "3": 1}}}) == 16
    assert rehearsal.redis_databases({"redis": {"keys_per_db_at_start": {"0": 3, "40": 1}}}) == 41


def test_a_scratch_dir_without_the_marker_is_refused(tmp_dir):
    os.mkdir(os.path.join(tmp_dir, "scratch"))
    with pytest.raises(RecoveryError) as caught:
        scratch.ScratchDir(os.path.join(tmp_dir, "scratch"), 0, 0).exists()
    assert "is not a rehearsal's scratch directory" in str(caught.value)
    assert not scratch.ScratchDir(os.path.join(tmp_dir, "absent"), 0, 0).exists()


def test_a_scratch_dir_the_user_cannot_reach_is_refused_naming_the_directory(tmp_dir):
    postgres = pwd.getpwnam("postgres")
    closed = os.path.join(tmp_dir, "closed")
    os.mkdir(closed, 0o700)
    with pytest.raises(RecoveryError) as caught:
        scratch.check_reachable(os.path.join(closed, "scratch"), postgres.pw_uid, {postgres.pw_gid})
    assert str(caught.value).endswith("%s (mode 0o700) does not let the scratch user postgres through" % closed)
    os.chmod(closed, 0o711)
    os.chmod(tmp_dir, 0o711)
    scratch.check_reachable(os.path.join(closed, "scratch"), postgres.pw_uid, {postgres.pw_gid})

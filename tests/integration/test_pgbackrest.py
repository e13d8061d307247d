"""Continuous protection on a real pgBackRest: archiving set up on a running cluster, backups, WAL archived on
demand, point-in-time restores checked by querying the restored server, and verify catching a corrupt WAL file."""

from __future__ import annotations

import datetime
import grp
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from types import SimpleNamespace

import pytest
from conftest import settings_into_conf
from sandbox import PgCluster

from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.wal import archiving, pitr
from ansible_collections.christmas.recovery.plugins.module_utils.wal.pg_server import PgCtlServer
from ansible_collections.christmas.recovery.plugins.module_utils.wal.pgbackrest import Repository

POSTGRES = pwd.getpwnam("postgres")


def backup_dir(parent):
    """A backup directory as the platform keeps it: root's, mode 0710, group postgres (traversable, not listable)."""
    path = tempfile.mkdtemp(prefix="backups-", dir=parent)
    os.chown(path, 0, POSTGRES.pw_gid)
    os.chmod(path, 0o710)
    return path


def rows(cluster):
    return sorted(cluster.sql("SELECT id, what FROM t ORDER BY id"))


def wait_server_clock_past(cluster, moment):
    deadline = time.monotonic() + 5
    while not cluster.sql("SELECT clock_timestamp() > '%s'::timestamptz" % moment.isoformat())[0][0]:
        assert time.monotonic() < deadline, "server clock never passed %s" % moment
        time.sleep(0.05)


@pytest.fixture(scope="module")
def protected(workdir, pg_template):
    """One cluster with archiving set up (plans recorded before and after the restart), an encrypted stanza, a
    check and a full backup; stopped and removed after the module whatever happened."""
    cluster = PgCluster(tempfile.mkdtemp(prefix="pg-", dir=workdir), pg_template.password)
    backups = backup_dir(workdir)
    try:
        cluster.init(template=pg_template.data).start()
        settings_into_conf(cluster)
        cipher_pass = secrets.token_urlsafe(24)
        repo = Repository(os.path.join(backups, "pgbackrest"), "main", cluster.data, cluster.port, cluster.run_dir,
                          cipher_pass=cipher_pass)
        repo.prepare()
        server = PgCtlServer(cluster.data, log_file=cluster.log)
        conn = cluster.connect()
        first = archiving.archiving_plan(conn, repo)
        archiving.apply_archiving(conn, first)
        mode_before_restart = cluster.sql("SHOW archive_mode")[0][0]
        conn.close()
        server.restart()
        conn = cluster.connect()
        second = archiving.archiving_plan(conn, repo)
        repo.stanza_create()
        repo.check()
        full = repo.backup("full")
        cluster.sql("CREATE TABLE t (id int PRIMARY KEY, what text)")
        yield SimpleNamespace(cluster=cluster, repo=repo, server=server, conn=conn, first=first, second=second,
                              mode_before_restart=mode_before_restart, full=full, cipher_pass=cipher_pass)
        conn.close()
    finally:
        cluster.destroy()
        shutil.rmtree(backups, ignore_errors=True)


def test_archiving_needs_a_restart_the_first_time_only(protected):
    first, second = protected.first, protected.second
    assert first["restart_needed"] and first["changed"]
    assert set(first["changes"]) == {"archive_mode", "archive_command", "archive_timeout"}
    assert protected.mode_before_restart == "off"  # ALTER SYSTEM alone does not switch archive_mode
    assert second == {"changes": {}, "restart_needed": False, "reload_needed": False, "changed": False}
    cluster = protected.cluster
    assert cluster.sql("SHOW archive_mode")[0][0] == "on"
    assert cluster.sql("SHOW archive_command")[0][0] == protected.repo.archive_command()
    assert cluster.sql("SHOW archive_timeout")[0][0] == "1min"


def test_repository_is_private_and_encrypted(protected):
    repo = protected.repo
    for path in (repo.path, repo.config_dir):
        info = os.lstat(path)
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (POSTGRES.pw_uid, 0o700), path
    info = os.lstat(repo.config_file)
    assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (POSTGRES.pw_uid, 0o600)
    with open(repo.config_file, encoding="utf-8") as handle:
        assert "repo1-cipher-pass=%s" % protected.cipher_pass in handle.read()
    assert protected.cipher_pass not in " ".join(repo.argv("backup")) + repo.archive_command()
    assert repo.info()["cipher"] == "aes-256-cbc"
    full = protected.full
    assert full["type"] == "full" and full["label"].endswith("F")
    assert full["archive_start"] <= full["archive_stop"] and full["start_time"] <= full["stop_time"]
    assert full["size"] > 0 and full["repo_size"] > 0


def test_backup_files_are_zstandard_and_wal_segments_gzip(protected):
    repo = protected.repo
    backup_files = [name for base, _dirs, names in os.walk(os.path.join(repo.path, "backup", "main",
                                                                         protected.full["label"], "pg_data"))
                    for name in names]
    segments = [name for base, _dirs, names in os.walk(os.path.join(repo.path, "archive", "main"))
                for name in names if re.match(r"[0-9A-F]{24}-", name)]
    assert backup_files and {os.path.splitext(name)[1] for name in backup_files} == {".zst"}
    assert segments and {os.path.splitext(name)[1] for name in segments} == {".gz"}


def test_restore_to_times_and_to_the_end_on_every_timeline(protected):
    cluster, repo, server = protected.cluster, protected.repo, protected.server
    cluster.sql("INSERT INTO t VALUES (1, 'A'), (2, 'A')")
    marked = archiving.archive_now(protected.conn, repo, timeout=30)
    target = marked["time"].replace(microsecond=0) + datetime.timedelta(seconds=1)
    wait_server_clock_past(cluster, target)
    cluster.sql("DELETE FROM t; INSERT INTO t VALUES (3, 'B')")
    archiving.archive_now(protected.conn, repo, timeout=30)

    latest = pitr.restore(repo, server, None)
    assert rows(cluster) == [(3, "B")]
    at_target = pitr.restore(repo, server, target)
    assert rows(cluster) == [(1, "A"), (2, "A")]
    assert at_target["stop"] and at_target["timeline"] > latest["timeline"]
    assert not cluster.sql("SELECT pg_is_in_recovery()")[0][0]
    # the new timeline holds no commit after the target yet: the same target again cannot be reached on it
    assert repo.window()["newest"] <= target
    with pytest.raises(RecoveryError, match="not before the newest archived commit"):
        pitr.restore(repo, server, target)

    # archiving goes on on the new timeline, and a second point in time on it is reachable
    cluster.sql("INSERT INTO t VALUES (4, 'C')")
    conn = cluster.connect()
    try:
        second = archiving.archive_now(conn, repo, timeout=30)
        assert int(second["segment"][:8], 16) == at_target["timeline"]
        cluster.sql("DELETE FROM t WHERE id = 1")
        archiving.archive_now(conn, repo, timeout=30)
    finally:
        conn.close()
    pitr.restore(repo, server, second["time"])
    assert rows(cluster) == [(1, "A"), (2, "A"), (4, "C")]


def test_target_past_the_archive_is_refused_before_the_server_is_touched(protected):
    cluster, repo, server = protected.cluster, protected.repo, protected.server
    conn = cluster.connect()
    try:
        archiving.archive_now(conn, repo)  # a commit after the backup: the window is not empty, whatever ran before
    finally:
        conn.close()
    window = repo.window()
    started = cluster.sql("SELECT pg_postmaster_start_time()")[0][0]
    with pytest.raises(RecoveryError, match="not before the newest archived commit"):
        pitr.restore(repo, server, window["newest"] + datetime.timedelta(seconds=1))
    with pytest.raises(RecoveryError, match="before the oldest recoverable point"):
        pitr.restore(repo, server, window["oldest"] - datetime.timedelta(seconds=1))
    assert cluster.sql("SELECT pg_postmaster_start_time()")[0][0] == started


def test_verify_names_a_corrupt_wal_file_though_pgbackrest_exits_0(protected):
    repo = protected.repo
    assert repo.verify()["status"] == "ok"
    archive_dir = os.path.join(repo.path, "archive", "main")
    segments = sorted(os.path.join(base, name) for base, _dirs, names in os.walk(archive_dir) for name in names
                      if len(name) > 25 and name[24] == "-")
    victim = segments[len(segments) // 2]  # not the first: pgBackRest reads that one's header to start
    with open(victim, "rb") as handle:
        original = handle.read()
    try:
        with open(victim, "r+b") as handle:
            handle.seek(len(original) // 2)
            handle.write(bytes(64))
        argv = repo.argv("verify", "--job-retry=0")
        assert os.spawnvp(os.P_WAIT, argv[0], argv) == 0  # the upstream behaviour this guards against
        with pytest.raises(RecoveryError, match=os.path.basename(victim)):
            repo.verify()
    finally:
        with open(victim, "wb") as handle:
            handle.write(original)
    assert repo.verify()["status"] == "ok"


def test_an_archive_command_of_another_tool_is_taken_over_only_when_asked(make_cluster, tmp_dir):
    cluster = make_cluster()
    repo = Repository(os.path.join(tmp_dir, "repo"), "other", cluster.data, cluster.port, cluster.run_dir)
    cluster.sql("ALTER SYSTEM SET archive_command = 'cp %p /mnt/wal/%f'")
    cluster.sql("SELECT pg_reload_conf()")
    conn = cluster.connect()
    try:
        with pytest.raises(RecoveryError, match="already set to 'cp %p /mnt/wal/%f'"):
            archiving.archiving_plan(conn, repo)
        plan = archiving.archiving_plan(conn, repo, take_over=True)
    finally:
        conn.close()
    assert plan["changes"]["archive_command"] == {"from": "cp %p /mnt/wal/%f", "to": repo.archive_command()}
    assert cluster.sql("SELECT setting FROM pg_file_settings WHERE name = 'archive_command'") == [
        ("cp %p /mnt/wal/%f",)]


def test_archive_now_fails_naming_the_wal_the_archiver_could_not_push(make_cluster, tmp_dir):
    cluster = make_cluster("archive_mode=on")
    repo = Repository(os.path.join(tmp_dir, "repo"), "broken", cluster.data, cluster.port, cluster.run_dir)
    # the repository was never prepared: its config file is missing and every archive-push fails
    cluster.sql("ALTER SYSTEM SET archive_command = '%s'" % repo.archive_command().replace("'", "''"))
    cluster.sql("SELECT pg_reload_conf()")
    conn = cluster.connect()
    try:
        with pytest.raises(RecoveryError, match=r"archiving WAL failed: .* is 0000000\w{17}"):
            archiving.archive_now(conn, repo, timeout=30)
    finally:
        conn.close()


def test_repository_refuses_a_parent_the_os_user_cannot_enter(tmp_dir):
    closed = os.path.join(tmp_dir, "closed")
    os.mkdir(closed, 0o700)
    repo = Repository(os.path.join(closed, "repo"), "main", "/nonexistent/data", 5432, "/tmp")
    with pytest.raises(RecoveryError, match="directory %s .* is not traversable by postgres" % closed):
        repo.prepare()
    assert os.listdir(closed) == []
    os.chown(tmp_dir, 0, grp.getgrgid(POSTGRES.pw_gid).gr_gid)
    os.chmod(tmp_dir, 0o710)
    os.chown(closed, 0, POSTGRES.pw_gid)
    os.chmod(closed, 0o710)
    assert repo.prepare() is True
    assert os.lstat(repo.path).st_uid == POSTGRES.pw_uid
    assert repo.prepare() is False


RESTORE_CHILD = """
import json, sys
sys.path.insert(0, sys.argv[1])
from ansible_collections.christmas.recovery.plugins.module_utils.wal import pitr
from ansible_collections.christmas.recovery.plugins.module_utils.wal.pg_server import PgCtlServer
from ansible_collections.christmas.recovery.plugins.module_utils.wal.pgbackrest import Repository
args = json.load(sys.stdin)
pitr.restore(Repository(**args["repository"]), PgCtlServer(**args["server"]), None)
"""


def test_a_restore_killed_half_way_is_finished_by_the_next_one(protected):
    cluster, repo, server = protected.cluster, protected.repo, protected.server
    before = rows(cluster)
    server.stop()
    for name in os.listdir(cluster.data):  # a lost data directory: the restore copies everything
        path = os.path.join(cluster.data, name)
        shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)
    args = {"repository": {"path": repo.path, "stanza": repo.stanza, "pg_data_dir": repo.pg_data_dir,
                           "pg_port": repo.pg_port, "pg_socket_dir": repo.pg_socket_dir,
                           "cipher_pass": protected.cipher_pass},
            "server": {"data_dir": server.data_dir, "log_file": server.log_file}}
    collections = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                               ".collections")
    child = subprocess.Popen([sys.executable, "-c", RESTORE_CHILD, collections], stdin=subprocess.PIPE,
                             start_new_session=True)
    try:
        child.stdin.write(json.dumps(args).encode("utf-8"))  # the cipher pass on stdin, not in argv
        child.stdin.close()
        deadline = time.monotonic() + 30
        while not os.path.isdir(os.path.join(cluster.data, "base")) or len(os.listdir(cluster.data)) < 5:
            assert child.poll() is None, "the restore ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        os.killpg(child.pid, signal.SIGKILL)  # the module and its pgbackrest, as a killed Ansible task
        child.wait()
    # pgBackRest writes pg_control last: the torn copy cannot be started by mistake
    assert not os.path.exists(os.path.join(cluster.data, "global", "pg_control"))
    assert os.path.exists(os.path.join(repo.config_dir, pitr.RESTORING))
    pitr.restore(repo, server, None)
    assert rows(cluster) == before
    assert not os.path.exists(os.path.join(repo.config_dir, pitr.RESTORING))

"""christmas_replication on real PostgreSQL 15 clusters on 127.0.0.1: a primary made ready, a hot standby built and
rebuilt with pg_basebackup, promotion, fencing. The module itself runs (through ansible-playbook) where its wiring
matters: the build that is watched for leaked passwords, and a refusal."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time

import psycopg2
import pytest
from conftest import ROOT, ArgvSampler, assert_no_warnings

from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.db import failover, replication, replication_conf
from ansible_collections.christmas.recovery.plugins.module_utils.db.connection import PgTarget

USER = "replicator"


def target(cluster):
    return PgTarget(host="127.0.0.1", port=cluster.port, dbname="postgres", user="postgres",
                    password=cluster.password, admin_user="postgres", admin_password=cluster.password)


def allow_replication(cluster):
    """A pg_hba line for replication connections of USER from 127.0.0.1, first, and a reload."""
    hba = os.path.join(cluster.data, "pg_hba.conf")
    with open(hba, encoding="utf-8") as handle:
        text = handle.read()
    with open(hba, "w", encoding="utf-8") as handle:
        handle.write("host replication %s 127.0.0.1/32 scram-sha-256\n%s" % (USER, text))
    cluster.sql("SELECT pg_reload_conf()")


def ready_primary(make_cluster, slots=("db2",)):
    primary = make_cluster()
    allow_replication(primary)
    password = "repl-" + secrets.token_urlsafe(16)
    replication.ensure_primary(target(primary), USER, password, list(slots), listen_addresses="127.0.0.1",
                               progress=lambda _m: None)
    return primary, password


def empty_standby(make_cluster):
    """A cluster whose data directory is gone (stopped first): what a new standby host starts from."""
    standby = make_cluster()
    standby.stop()
    shutil.rmtree(standby.data)
    return standby


def standby_args(primary, standby, password, **extra):
    args = {"primary_host": "127.0.0.1", "primary_port": primary.port, "replication_user": USER,
            "replication_password": password, "slot_name": "db2", "data_dir": standby.data,
            "stop_command": standby.stop_command(), "start_command": standby.start_command(),
            "application_name": "db2", "wait_seconds": 30}
    args.update(extra)
    return args


def build_standby(primary, standby, password, **extra):
    return replication.ensure_standby(target(standby), progress=lambda _m: None,
                                      **standby_args(primary, standby, password, **extra))


def wait_for(probe, seconds=10.0):
    deadline = time.monotonic() + seconds
    while True:
        value = probe()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def run_module(tmp_dir, args, check=False):
    """christmas_replication in a one-task playbook (local connection); (what it registered, playbook output)."""
    token = secrets.token_hex(4)
    result_path = os.path.join(tmp_dir, "result-%s.json" % token)
    playbook_path = os.path.join(tmp_dir, "replication-%s.yml" % token)
    playbook = [{"name": "Replication", "hosts": "localhost", "gather_facts": False, "tasks": [
        {"name": "Run christmas_replication", "christmas.recovery.christmas_replication": args,
         "register": "result", "ignore_errors": True},
        {"name": "Keep the result", "check_mode": False,
         "ansible.builtin.copy": {"content": "{{ result | to_json }}", "dest": result_path, "mode": "0600"}},
    ]}]
    fd = os.open(playbook_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(playbook, handle)
    argv = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", "localhost,", "-c", "local",
            "-e", "ansible_python_interpreter=" + sys.executable, "-vvv", playbook_path]
    if check:
        argv.append("--check")
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, check=False,
                          env=dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_NOCOLOR="1"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert_no_warnings(proc.stdout + proc.stderr)
    with open(result_path, encoding="utf-8") as handle:
        return json.load(handle), proc.stdout + proc.stderr


def role_row(cluster):
    return cluster.sql("SELECT rolcanlogin, rolreplication, rolsuper FROM pg_roles WHERE rolname = '%s'" % USER)


def physical_slots(cluster):
    return [name for (name,) in cluster.sql(
        "SELECT slot_name::text FROM pg_replication_slots WHERE slot_type = 'physical' ORDER BY 1")]


def auto_conf(cluster):
    with open(os.path.join(cluster.data, "postgresql.auto.conf"), encoding="utf-8") as handle:
        return handle.read()


# ---------------------------------------------------------------- state: primary


def test_primary_state_sets_wal_settings_role_and_slot_then_changes_nothing(make_cluster):
    primary = make_cluster("log_statement=all")
    with open(os.path.join(primary.data, "postgresql.conf"), "a", encoding="utf-8") as handle:
        handle.write("wal_level = minimal\nmax_wal_senders = 0\n")
    primary.restart("log_statement=all")
    allow_replication(primary)
    password = "repl-" + secrets.token_urlsafe(16)
    args = {"replication_user": USER, "slots": ["db2"], "listen_addresses": "127.0.0.1", "progress": lambda _m: None}
    conf_before = auto_conf(primary)

    dry = replication.ensure_primary(target(primary), replication_password=password, check_mode=True, **args)
    assert dry["changed"] and dry["restart_required"] and dry["role_changed"]
    assert sorted(dry["settings_changed"]) == ["max_wal_senders", "wal_level"] and dry["slots_pending"] == ["db2"]
    assert auto_conf(primary) == conf_before and role_row(primary) == []

    done = replication.ensure_primary(target(primary), replication_password=password, **args)
    assert done["changed"] and done["restart_required"]
    assert sorted(done["settings_changed"]) == ["max_wal_senders", "wal_level"]
    assert done["slots_created"] == [] and done["slots_pending"] == ["db2"]  # wal_level=minimal holds no slot
    assert role_row(primary) == [(True, True, False)]
    assert primary.sql("SELECT name, setting FROM pg_file_settings WHERE sourcefile LIKE '%%auto.conf' "
                       "AND name IN ('wal_level', 'max_wal_senders') ORDER BY 1") == [
        ("max_wal_senders", "10"), ("wal_level", "replica")]
    assert primary.sql("SELECT current_setting('wal_level')") == [("minimal",)]  # only a restart applies it

    again = replication.ensure_primary(target(primary), replication_password=password, **args)
    assert not again["changed"] and again["restart_required"], again  # still pending: the restart has not happened
    primary.restart("log_statement=all")
    primary.sql("SELECT pg_create_physical_replication_slot('forgotten')")
    after = replication.ensure_primary(target(primary), replication_password=password, **args)
    assert after["changed"] and after["slots_created"] == ["db2"] and not after["restart_required"]
    assert not after["settings_changed"] and not after["role_changed"]
    assert physical_slots(primary) == ["db2", "forgotten"]  # never dropped unless asked
    assert primary.sql("SELECT current_setting('wal_level'), current_setting('max_wal_senders')") == [
        ("replica", "10")]
    assert not replication.ensure_primary(target(primary), replication_password=password, **args)["changed"]
    # The role logs in for replication with that password, and the primary holds the slot.
    assert replication.check_primary("127.0.0.1", primary.port, USER, password, "db2")[0] == primary.sql(
        "SELECT system_identifier::text FROM pg_control_system()")[0][0]

    new_password = "new-" + secrets.token_urlsafe(16)
    changed = replication.ensure_primary(target(primary), replication_password=new_password, drop_other_slots=True,
                                         **args)
    assert changed["role_changed"] and changed["slots_dropped"] == ["forgotten"] and not changed["settings_changed"]
    assert physical_slots(primary) == ["db2"]
    with pytest.raises(RecoveryError, match="authentication failed"):
        replication.check_primary("127.0.0.1", primary.port, USER, password, "db2")
    replication.check_primary("127.0.0.1", primary.port, USER, new_password, "db2")
    with open(primary.log, encoding="utf-8") as handle:
        log = handle.read()
    assert "ALTER ROLE" in log and "SCRAM-SHA-256$" in log  # statements are logged, with the verifier only
    assert password not in log and new_password not in log


def test_primary_state_refuses_a_setting_pinned_on_the_command_line(make_cluster):
    primary = make_cluster()  # the sandbox starts it with -c listen_addresses=127.0.0.1
    with pytest.raises(RecoveryError, match=r"^listen_addresses is set on the server's command line \(127\.0\.0\.1\)"):
        replication.ensure_primary(target(primary), USER, "pw-" + secrets.token_hex(8), ["db2"],
                                   listen_addresses="*", progress=lambda _m: None)
    assert role_row(primary) == [] and physical_slots(primary) == []


def test_scram_verifier_with_non_ascii_password_logs_in(make_cluster):
    primary = make_cluster()
    allow_replication(primary)
    password = "Ünïcode pässwörd ß " + secrets.token_hex(4)
    replication.ensure_primary(target(primary), USER, password, [], listen_addresses="127.0.0.1",
                               progress=lambda _m: None)
    primary.connect(user=USER, password=password).close()
    assert not replication.ensure_primary(target(primary), USER, password, [], listen_addresses="127.0.0.1",
                                          progress=lambda _m: None)["changed"]


# ---------------------------------------------------------------- state: standby and info


def test_standby_built_by_the_module_streams_and_leaks_no_password(make_cluster, tmp_dir):
    primary, password = ready_primary(make_cluster)
    standby = empty_standby(make_cluster)
    args = dict(standby_args(primary, standby, password), state="standby", db_host="127.0.0.1",
                db_port=standby.port, db_admin_password=standby.password)

    dry, _ = run_module(tmp_dir, args, check=True)
    assert dry["changed"] and not dry["rebuilt"] and not os.path.exists(standby.data)

    sampler = ArgvSampler()
    sampler.start()
    try:
        built, output = run_module(tmp_dir, args)
    finally:
        sampler.stop()
    assert built["changed"] and built["rebuilt"] and built["healthy"], built
    assert built["old_data_dir"] is None and built["wal_receiver"]["status"] == "streaming"
    argv, environ = b"\n".join(sampler.seen), b"\n".join(sampler.environ)
    assert sampler.rounds > 50 and b"/pg_basebackup\x00" in argv  # the sampler did see pg_basebackup run
    assert b"PGPASSFILE=/proc/self/fd/" in environ
    assert password.encode() not in argv and password.encode() not in environ
    assert password not in output and password not in json.dumps(built)
    data = os.lstat(standby.data)
    assert data.st_mode & 0o777 == 0o700 and data.st_uid == os.lstat(os.path.dirname(standby.data)).st_uid

    primary.sql("CREATE TABLE ticks (id int PRIMARY KEY, note text)")
    primary.sql("INSERT INTO ticks VALUES (1, 'from the primary')")
    assert wait_for(lambda: standby.sql("SELECT to_regclass('ticks') IS NOT NULL")[0][0]
                    and standby.sql("SELECT note FROM ticks WHERE id = 1"), 5) == [("from the primary",)]
    with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
        standby.sql("INSERT INTO ticks VALUES (2, 'on the standby')")

    # info: replay paused on the standby, so both sides report lag in bytes.
    standby.sql("SELECT pg_wal_replay_pause()")
    primary.sql("INSERT INTO ticks SELECT i, repeat('x', 100) FROM generate_series(2, 2000) i")

    def lagging_info():
        info = replication.server_info(target(standby))
        return info if info["replay_lag_bytes"] else None

    lagging = wait_for(lagging_info, 10)
    assert lagging and lagging["role"] == "standby" and lagging["replay_lag_bytes"] > 100000
    assert lagging["wal_receiver"] == {"status": "streaming", "sender_host": "127.0.0.1", "sender_port": primary.port,
                                       "slot_name": "db2", "latest_end_lsn": lagging["wal_receiver"]["latest_end_lsn"]}
    info, _ = run_module(tmp_dir, {"db_host": "127.0.0.1", "db_port": primary.port,
                                   "db_admin_password": primary.password})
    assert info["role"] == "primary" and not info["in_recovery"] and info["timeline"] == 1
    assert info["system_identifier"] == lagging["system_identifier"]
    assert info["slots"] == [{"slot_name": "db2", "active": True, "restart_lsn": info["slots"][0]["restart_lsn"]}]
    [replica] = info["replicas"]
    assert replica["application_name"] == "db2" and replica["state"] == "streaming"
    assert replica["client_addr"].startswith("127.0.0.1") and replica["lag_bytes"] > 100000
    standby.sql("SELECT pg_wal_replay_resume()")
    assert wait_for(lambda: standby.sql("SELECT count(*) FROM ticks") == [(2000,)], 10)

    # A healthy standby is left alone: same data directory, same postmaster.
    postmaster = standby.sql("SELECT pg_postmaster_start_time()")
    again, _ = run_module(tmp_dir, dict(args, rebuild=True))
    assert not again["changed"] and not again["rebuilt"] and again["healthy"] and again["problem"] is None
    assert os.lstat(standby.data).st_ino == data.st_ino
    assert standby.sql("SELECT pg_postmaster_start_time()") == postmaster


def test_broken_standby_is_refused_without_rebuild_and_rebuilt_with_it(make_cluster, tmp_dir):
    primary, password = ready_primary(make_cluster)
    standby = empty_standby(make_cluster)
    build_standby(primary, standby, password)
    # Pointed elsewhere: the wal receiver cannot connect any more.
    elsewhere = primary.port + 1 if primary.port < 65535 else primary.port - 1
    standby.sql("ALTER SYSTEM SET primary_conninfo = 'host=127.0.0.1 port=%d user=%s'" % (elsewhere, USER))
    standby.sql("SELECT pg_reload_conf()")
    primary.sql("CREATE TABLE after_break (id int)")
    inode = os.lstat(standby.data).st_ino
    args = dict(standby_args(primary, standby, password), state="standby", db_host="127.0.0.1",
                db_port=standby.port, db_admin_password=standby.password)

    refused, output = run_module(tmp_dir, args)
    assert refused["failed"] and "\n" not in refused["msg"] and "Traceback" not in output
    assert refused["msg"].startswith("standby ") and "is not streaming from 127.0.0.1:%d" % primary.port in refused[
        "msg"] and refused["msg"].endswith("run with christmas_replica_rebuild: true (module option rebuild) to "
                                           "rebuild it from the primary"), refused["msg"]
    dry, _ = run_module(tmp_dir, dict(args, rebuild=True), check=True)
    assert dry["changed"] and dry["would_move_old_data_dir"] and not dry["rebuilt"]
    assert os.lstat(standby.data).st_ino == inode and standby.sql("SELECT pg_is_in_recovery()") == [(True,)]

    rebuilt = build_standby(primary, standby, password, rebuild=True)
    assert rebuilt["changed"] and rebuilt["rebuilt"] and rebuilt["problem"].startswith("is not streaming")
    old = rebuilt["old_data_dir"]
    assert old.startswith(standby.data + ".pre-rebuild-") and os.path.isfile(os.path.join(old, "PG_VERSION"))
    assert "port=%d" % elsewhere not in auto_conf(standby)  # a fresh copy, pointing at the primary
    with open(os.path.join(old, "postgresql.auto.conf"), encoding="utf-8") as handle:
        assert "port=%d" % elsewhere in handle.read()  # the old one, kept as it was
    assert os.lstat(standby.data).st_ino != inode
    assert standby.sql("SELECT to_regclass('after_break') IS NOT NULL") == [(True,)]
    info = replication.server_info(target(standby))
    assert info["role"] == "standby" and info["wal_receiver"]["status"] == "streaming"

    # Down with its data still there: refused too, and nothing moves.
    standby.stop()
    with pytest.raises(RecoveryError, match=r"is down \(cannot connect") as caught:
        build_standby(primary, standby, password)
    assert "christmas_replica_rebuild: true" in str(caught.value)
    assert sorted(os.listdir(os.path.dirname(standby.data))).count(os.path.basename(old)) == 1


def test_a_new_cluster_becomes_a_standby_without_the_rebuild_flag_but_one_with_data_does_not(make_cluster):
    primary, password = ready_primary(make_cluster)
    used = make_cluster()  # a primary of its own that holds a database: never replaced without the flag
    used.sql("CREATE DATABASE trading")
    with pytest.raises(RecoveryError, match="christmas_replica_rebuild: true"):
        build_standby(primary, used, password)
    assert used.sql("SELECT pg_is_in_recovery()") == [(False,)]

    fresh = make_cluster()  # what the package leaves: only postgres, template0 and template1
    built = build_standby(primary, fresh, password)

    assert built["rebuilt"] and built["old_data_dir"].startswith(fresh.data + ".pre-rebuild-")
    assert fresh.sql("SELECT pg_is_in_recovery()") == [(True,)]


def test_rebuild_checks_the_primary_before_touching_the_standby(make_cluster):
    primary, password = ready_primary(make_cluster)
    standby = empty_standby(make_cluster)
    build_standby(primary, standby, password)
    standby.sql("ALTER SYSTEM SET primary_slot_name = 'other'")
    standby.sql("SELECT pg_reload_conf()")
    inode = os.lstat(standby.data).st_ino
    with pytest.raises(RecoveryError, match="^cannot open a replication connection .*password authentication"):
        build_standby(primary, standby, "wrong-" + password, rebuild=True)
    with pytest.raises(RecoveryError, match="^replication slot nosuchslot does not exist on the primary"):
        build_standby(primary, standby, password, rebuild=True, slot_name="nosuchslot")
    assert os.lstat(standby.data).st_ino == inode and standby.sql("SELECT pg_is_in_recovery()") == [(True,)]
    assert not [name for name in os.listdir(os.path.dirname(standby.data)) if ".pre-rebuild-" in name]


# ---------------------------------------------------------------- state: promoted and fenced


def test_promote_makes_the_standby_writable_on_the_next_timeline(make_cluster):
    primary, password = ready_primary(make_cluster)
    standby = empty_standby(make_cluster)
    build_standby(primary, standby, password)
    with pytest.raises(RecoveryError, match="in recovery"):
        replication.ensure_primary(target(standby), USER, password, [], progress=lambda _m: None)

    dry = failover.promote(target(standby), check_mode=True, progress=lambda _m: None)
    assert dry["changed"] and dry["previous_timeline"] == 1
    assert standby.sql("SELECT pg_is_in_recovery()") == [(True,)]

    promoted = failover.promote(target(standby), wait_seconds=30, progress=lambda _m: None)
    assert promoted["changed"] and promoted["role"] == "primary"
    assert (promoted["previous_timeline"], promoted["timeline"]) == (1, 2)
    assert standby.sql("SELECT pg_is_in_recovery(), (SELECT timeline_id FROM pg_control_checkpoint())") == [
        (False, 2)]
    standby.sql("CREATE TABLE written_after_promotion (id int)")
    assert replication.server_info(target(standby))["timeline"] == 2
    assert not failover.promote(target(standby), progress=lambda _m: None)["changed"]
    assert not failover.promote(target(primary), progress=lambda _m: None)["changed"]


DEBIAN_START_CONF = """# Automatic startup configuration
#   auto: automatically start the cluster
#   manual: manual startup with pg_ctlcluster/postgresql@.service only
#   disabled: refuse to start cluster
# See pg_createcluster(1) for details. When running from systemd,
# invoke 'systemctl daemon-reload' after editing this file.

auto
"""


def test_fenced_writes_manual_and_stops_the_server(make_cluster, tmp_dir):
    cluster = make_cluster()
    start_conf = os.path.join(tmp_dir, "start.conf")
    with open(start_conf, "w", encoding="utf-8") as handle:
        handle.write(DEBIAN_START_CONF)
    os.chmod(start_conf, 0o640)
    args = {"stop_command": cluster.stop_command(), "data_dir": cluster.data, "start_conf": start_conf,
            "progress": lambda _m: None}

    dry = failover.fence(target(cluster), check_mode=True, **args)
    assert dry["changed"] and dry["stopped"] and dry["start_conf_changed"]
    with open(start_conf, encoding="utf-8") as handle:
        assert handle.read() == DEBIAN_START_CONF
    assert cluster.sql("SELECT 1") == [(1,)]

    fenced = failover.fence(target(cluster), **args)
    assert fenced["changed"] and fenced["stopped"] and fenced["previous_start_conf"] == DEBIAN_START_CONF
    with open(start_conf, encoding="utf-8") as handle:
        text = handle.read()
    assert replication_conf.start_conf_value(text) == "manual" and text.startswith("# Automatic startup configuration")
    assert os.lstat(start_conf).st_mode & 0o777 == 0o640
    assert not os.path.exists(os.path.join(cluster.data, "postmaster.pid"))
    with pytest.raises(psycopg2.OperationalError):
        cluster.sql("SELECT 1")

    again = failover.fence(target(cluster), **args)
    assert not again["changed"] and not again["stopped"] and again["previous_start_conf"] == text
    down = replication.server_info(target(cluster))
    assert down["role"] == "down" and down["in_recovery"] is None and "Connection refused" in down["error"]

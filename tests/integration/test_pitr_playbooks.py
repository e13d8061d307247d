"""Continuous protection from the runbook's playbooks, on real servers and a real pgBackRest: backup.yml sets
archiving up and takes the physical backup, archive.yml ships, restore_full.yml -e target_time=T puts the database,
Redis and the config tree back as they stood at T."""

from __future__ import annotations

import base64
import datetime
import json
import os
import pwd
import secrets
import shutil
import stat
import subprocess
import time

import pytest
from conftest import ROOT, connection_vars, read_metrics, redis_state, run_module, settings_into_conf, value
from pitr_helpers import changes_after, changes_before, iso, protect, second_boundary, state, wait_past

from ansible_collections.christmas.recovery.plugins.module_utils.platform.arguments import PGBACKREST_CIPHER_PURPOSE
from ansible_collections.christmas.recovery.plugins.module_utils.sets import encryption
from ansible_collections.christmas.recovery.plugins.module_utils.sets.manifest import complete_set_ids, load
from ansible_collections.christmas.recovery.plugins.module_utils.wal.pg_server import PgCtlServer

STANDIN_BIN = os.path.join(ROOT, "tests", "fixtures", "systemctl_standin")

def _pgbackrest_info(env):
    config = os.path.join(env.backup_dir, "pgbackrest.conf.d", "pgbackrest.conf")
    proc = subprocess.run(["runuser", "-u", "postgres", "--", "pgbackrest", "--config=" + config,
                           "--stanza=christmas", "info", "--output=json"], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)[0]


@pytest.fixture
def protected(platform, make_redis, config_dir, tmp_dir, run_playbook):
    return protect(platform, make_redis, config_dir, tmp_dir, run_playbook)


def test_restore_full_to_a_second_brings_the_database_redis_and_config_back_as_they_stood(protected, run_playbook):
    env = protected
    # backup.yml turned archiving on (one restart), took a physical backup and recorded it in the set's manifest.
    assert env.platform.cluster.sql("SHOW archive_mode")[0][0] == "on"
    assert "pgbackrest" in env.platform.cluster.sql("SHOW archive_command")[0][0]
    manifest = load(os.path.join(env.backup_dir, "manifest_%s.json" % complete_set_ids(env.backup_dir)[0]))
    labels = [backup["label"] for backup in _pgbackrest_info(env)["backup"]]
    assert manifest["db"]["physical"]["label"] in labels and manifest["db"]["physical"]["type"] == "full"
    assert env.redis.client().config_get("aof-timestamp-enabled")["aof-timestamp-enabled"] == "yes"
    with open(os.path.join(env.redis.root, "redis.conf"), encoding="utf-8") as handle:
        assert "aof-timestamp-enabled yes" in handle.read()  # persisted: a restart keeps it

    changes_before(env)
    shipped_at = time.time()
    run_playbook("archive", env.host_vars)
    expected = state(env)
    window = read_metrics(os.path.join(env.tmp_dir, "metrics"))["christmas_recovery_window.prom"]
    assert value(window, "pitr_enabled") == 1
    for component in ("db", "redis", "config"):
        start, end = (value(window, "window_%s_seconds" % edge, component=component) for edge in ("start", "end"))
        assert start < end and end >= shipped_at - 2, (component, start, end)  # Redis counts whole seconds
    target = second_boundary()
    changes_after(env)
    run_playbook("archive", env.host_vars)
    assert state(env) != expected

    restored = run_playbook("restore_full", env.host_vars, {"target_time": iso(target)})
    assert state(env) == expected
    assert "restored to %s" % time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(target)) in restored.output
    assert not env.platform.cluster.sql("SELECT pg_is_in_recovery()")[0][0]

    # Archiving goes on, on the new timeline: the next archive and backup succeed, and a second restore works.
    env.platform.sql("INSERT INTO orders (symbol, side, qty, note) VALUES ('SYM4', 'buy', 3, 'second timeline')")
    run_playbook("archive", env.host_vars)
    run_playbook("backup", env.host_vars)
    again = state(env)
    second = second_boundary()
    env.platform.sql("DELETE FROM orders")
    run_playbook("archive", env.host_vars)
    run_playbook("restore_full", env.host_vars, {"target_time": iso(second, datetime.UTC)})
    assert state(env) == again


def test_with_christmas_encryption_the_repository_is_encrypted_restores_and_keeps_its_encryption(
        platform, make_redis, config_dir, tmp_dir, run_playbook):
    key_text = base64.b64encode(os.urandom(32)).decode("ascii")
    env = protect(platform, make_redis, config_dir, tmp_dir, run_playbook,
                   christmas_encryption=True, christmas_encryption_key=key_text)
    cipher_pass = encryption.derived_secret(base64.b64decode(key_text), PGBACKREST_CIPHER_PURPOSE)
    env.platform.sql("INSERT INTO orders (symbol, side, qty, note) VALUES ('SYM1', 'buy', 7, 'before T')")
    outputs = [env.first.output, run_playbook("archive", env.host_vars, verbosity=3).output]
    expected = env.platform.snapshot()
    target = second_boundary()
    env.platform.sql("DELETE FROM orders")
    outputs.append(run_playbook("archive", env.host_vars).output)

    repo = os.path.join(env.backup_dir, "pgbackrest")
    stored = [os.path.join(top, name) for kind in ("archive", "backup")
              for top, _dirs, names in os.walk(os.path.join(repo, kind, "christmas")) for name in names]
    assert any(path.endswith(".gz") for path in stored) and any(path.endswith("backup.info") for path in stored)
    for path in stored:
        with open(path, "rb") as handle:
            assert handle.read(8) == b"Salted__", path  # OpenSSL's format: pgBackRest's aes-256-cbc

    outputs.append(run_playbook("restore_db", env.host_vars, {"target_time": iso(target)}, verbosity=3).output)
    assert env.platform.snapshot() == expected
    assert not any(cipher_pass in output or key_text in output for output in outputs)

    # The same repository with encryption turned off is refused by name, before any change to the server.
    sets = complete_set_ids(env.backup_dir)
    off = run_playbook("backup", dict(env.host_vars, christmas_encryption=False), expect_ok=False)
    assert "pgBackRest repository %s (stanza christmas) is encrypted but christmas_encryption is off" % repo \
        in off.output
    assert complete_set_ids(env.backup_dir) == sets
    with open(os.path.join(repo + ".conf.d", "pgbackrest.conf"), encoding="utf-8") as handle:
        assert "repo1-cipher-pass=%s" % cipher_pass in handle.read()  # the config file was not rewritten


def test_a_data_directory_lost_with_its_disk_comes_back_as_it_stood_at_a_second(protected, run_playbook):
    env = protected
    env.platform.sql("INSERT INTO orders (symbol, side, qty, note) VALUES ('SYM1', 'buy', 7, 'before the loss')")
    run_playbook("archive", env.host_vars)
    expected = env.platform.snapshot()
    target = second_boundary()
    env.platform.sql("DELETE FROM orders")
    redis_index = os.path.join(env.backup_dir, "pitr", "redis", "index.json")
    with open(redis_index, "rb") as handle:
        kept = handle.read()
    env.redis.client(0).set("fill:not-shipped", "1")
    run_playbook("archive", env.host_vars, {"skip_redis": True, "skip_config": True})  # the database's WAL only
    with open(redis_index, "rb") as handle:
        assert handle.read() == kept
    PgCtlServer(env.platform.cluster.data).stop(mode="immediate")
    shutil.rmtree(env.platform.cluster.data)

    planned = run_playbook("restore_db", env.host_vars, {"target_time": iso(target)}, check=True)
    assert "would restore to" in planned.output and not os.path.exists(env.platform.cluster.data)
    run_playbook("restore_db", env.host_vars, {"target_time": iso(target)})
    assert env.platform.snapshot() == expected
    info = os.stat(env.platform.cluster.data)
    assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (pwd.getpwnam("postgres").pw_uid, 0o700)


def _histories(env):
    """The timeline history files of the repository: each promotion that archived into it left one."""
    archive = os.path.join(env.backup_dir, "pgbackrest", "archive")
    return sorted(name for _top, _dirs, names in os.walk(archive) for name in names if name.endswith(".history"))


def test_the_rehearsal_restores_the_platform_to_a_second_in_scratch_servers_and_leaves_production_alone(
        protected, run_playbook):
    env = protected
    changes_before(env)
    run_playbook("archive", env.host_vars)
    rows_at_target = {"public." + name: int(rows) for name, (_md5, rows) in env.platform.snapshot().items()}
    keys_at_target = {str(db): len(keys) for db, keys in redis_state(env.redis).items()}
    target = second_boundary()
    changes_after(env)
    run_playbook("archive", env.host_vars)
    before, histories = state(env), _histories(env)
    scratch = os.path.join(env.tmp_dir, "rehearsal")
    host_vars = dict(env.host_vars, christmas_rehearsal_dir=scratch)

    rehearsed = run_playbook("rehearse", dict(host_vars, christmas_rehearsal_target_time=target))
    assert "restore of db, redis, config to %s rehearsed" % time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(target)) \
        in rehearsed.output
    with open(os.path.join(env.backup_dir, "pitr", "rehearsals.json"), encoding="utf-8") as handle:
        record = json.load(handle)["rehearsals"][-1]
    assert record["passed"] and record["error"] is None
    restored = record["restored"]
    assert {name: rows for name, rows in restored["db"]["rows"].items() if name.startswith("public.")} \
        == rows_at_target
    assert restored["redis"]["keys"] == keys_at_target
    assert restored["config"]["entries"] > 0
    # The platform's servers, its repository (no new timeline) and its archiving are as they were.
    assert state(env) == before and _histories(env) == histories
    assert not os.path.exists(scratch)
    run_playbook("archive", env.host_vars)

    # Without a second given, a random one of the window.
    run_playbook("rehearse", host_vars)
    with open(os.path.join(env.backup_dir, "pitr", "rehearsals.json"), encoding="utf-8") as handle:
        records = json.load(handle)["rehearsals"]
    assert len(records) == 2 and records[-1]["passed"]
    chosen = datetime.datetime.fromisoformat(records[-1]["target_time"].replace("Z", "+00:00")).timestamp()
    assert env.first_backup_at <= chosen <= time.time()


def test_a_target_outside_the_window_is_refused_before_anything_changes(protected, run_playbook):
    env = protected
    run_playbook("archive", env.host_vars)
    archived = time.time()
    env.platform.sql("INSERT INTO orders (symbol, side, qty, note) VALUES ('SYM5', 'buy', 1, 'not archived')")
    before = state(env)
    wait_past(archived + 2)
    now = time.time()
    for target, problem in (
        (iso(now), "is past the newest archived point"),
        (iso(now + 3600), "is in the future"),
        (iso(now - 30 * 86400), "is before the oldest recoverable point"),
        ("yesterday at noon", "is not an ISO 8601 time"),
    ):
        failed = run_playbook("restore_full", env.host_vars, {"target_time": target}, expect_ok=False)
        message = failed.failure_message()
        assert problem in message
        assert "the recoverable window is" in message or "ISO" in problem
        assert state(env) == before


def test_the_dry_run_names_the_backup_aof_generation_and_config_version_it_would_use(protected, run_playbook):
    env = protected
    run_playbook("archive", env.host_vars)
    changes_before(env)  # not shipped: the newest point is before them, so every component would change
    before = state(env)
    planned = run_playbook("restore_full", env.host_vars, {"target_time": "latest"}, check=True)
    physical = load(os.path.join(env.backup_dir, "manifest_%s.json" % complete_set_ids(env.backup_dir)[0]))
    assert physical["db"]["physical"]["label"] in planned.output
    assert "generation" in planned.output and "version" in planned.output
    assert state(env) == before

    # christmas_set_info shows the window per component, as the repositories say.
    info, _output = run_module(env.tmp_dir, "christmas_set_info", {
        "backup_dir": env.backup_dir, "pitr_repo": os.path.join(env.backup_dir, "pgbackrest"),
        "pitr_dir": os.path.join(env.backup_dir, "pitr"), "pg_data_dir": env.platform.cluster.data})
    assert sorted(info["window"]["components"]) == ["config", "db", "redis"] and info["window"]["problems"] == {}
    for edges in info["window"]["components"].values():
        start, end = (datetime.datetime.fromisoformat(edges[edge].replace("Z", "+00:00")).timestamp()
                      for edge in ("start", "end"))
        assert env.first_backup_at - 2 <= start <= end <= time.time()

    shutil.rmtree(os.path.join(env.backup_dir, "pitr", "config"))
    refused = run_playbook("restore_full", env.host_vars, {"target_time": "latest"}, check=True, expect_ok=False)
    assert "no recovery window for config" in refused.output


def test_without_a_database_server_to_manage_continuous_protection_is_off_said_once_and_in_the_metrics(
        platform, make_redis, config_dir, tmp_dir, run_playbook):
    server = make_redis(password=secrets.token_urlsafe(12))
    backup_dir = os.path.join(tmp_dir, "backups")
    host_vars = connection_vars(platform, server, config_dir, backup_dir)
    backup = run_playbook("backup", host_vars)
    assert backup.output.count("Continuous protection is off: the collection cannot stop and start the database "
                               "server") == 1
    assert len(complete_set_ids(backup_dir)) == 1  # the nightly set, as always
    assert env_untouched(platform, server, backup_dir)
    archive = run_playbook("archive", host_vars)
    assert "Continuous protection is off" in archive.output
    files = read_metrics(os.path.join(tmp_dir, "metrics"))
    window = files["christmas_recovery_window.prom"]
    reason = "the collection cannot stop and start the database server: set christmas_pg_data_dir (the cluster " \
             "run with pg_ctl, by its systemd unit christmas_db_service, or the host path of its data volume with " \
             "compose)"
    assert value(window, "pitr_enabled", reason=reason) == 0
    assert value(files["christmas_recovery_archive.prom"], "last_run_success", kind="archive") == 1


def env_untouched(platform, server, backup_dir):
    """Nothing of continuous protection was set up: no archiving, no AOF, no repositories."""
    return (platform.cluster.sql("SHOW archive_mode")[0][0] == "off"
            and server.client().config_get("appendonly")["appendonly"] == "no"
            and not os.path.exists(os.path.join(backup_dir, "pitr"))
            and not os.path.exists(os.path.join(backup_dir, "pgbackrest")))


def test_a_database_run_by_its_systemd_unit_is_protected_and_restored_to_a_second_through_the_unit(
        platform, make_redis, config_dir, tmp_dir, run_playbook):
    """systemd cannot run here: the systemctl STAND-IN runs the unit's real cluster with pg_ctl, as Debian's
    postgresql@15-main runs its cluster."""
    unit, log_file = "postgresql@15-main", platform.cluster.data + ".log"
    state_file = os.path.join(tmp_dir, "systemd.json")
    with open(state_file, "w", encoding="utf-8") as handle:
        json.dump({"units": {unit: {"log": [], "pg_data_dir": platform.cluster.data, "log_file": log_file},
                             "christmas-api": {"state": "active", "log": []}, "redis": {"state": "active", "log": []}},
                   "calls": []}, handle)
    systemd = {"PATH": STANDIN_BIN + os.pathsep + os.environ["PATH"], "SYSTEMCTL_STANDIN_STATE": state_file}
    env = protect(platform, make_redis, config_dir, tmp_dir, run_playbook, env=systemd,
                  christmas_service_manager="systemd", christmas_db_service=unit,
                  christmas_app_services=["christmas-api"], christmas_pg_log_file=log_file)

    def calls():
        with open(state_file, encoding="utf-8") as handle:
            return [call[1:3] for call in json.load(handle)["calls"] if call[0] == "systemctl" and call[1] != "show"]

    assert env.platform.cluster.sql("SHOW archive_mode")[0][0] == "on"
    assert calls() == [["stop", unit], ["start", unit]]  # archiving's one restart, through the unit
    env.platform.sql("INSERT INTO orders (symbol, side, qty, note) VALUES ('SYM1', 'buy', 7, 'before T')")
    run_playbook("archive", env.host_vars, env=systemd)
    expected = env.platform.snapshot()
    target = second_boundary()
    env.platform.sql("DELETE FROM orders")
    run_playbook("archive", env.host_vars, env=systemd)

    restored = run_playbook("restore_db", env.host_vars, {"target_time": iso(target)}, env=systemd)
    assert env.platform.snapshot() == expected, restored.output[-3000:]
    assert not env.platform.cluster.sql("SELECT pg_is_in_recovery()")[0][0]
    assert calls()[2:] == [["stop", "christmas-api"], ["stop", unit], ["start", unit], ["start", "christmas-api"]]
    run_playbook("archive", env.host_vars, env=systemd)  # archiving goes on, on the new timeline



def test_a_cluster_with_its_config_files_elsewhere_is_run_with_pg_ctl_on_its_config_dir(
        platform, make_redis, config_dir, tmp_dir, run_playbook):
    """Debian's layout: postgresql.conf, pg_hba.conf and pg_ident.conf in /etc/postgresql/15/main, naming the data
    directory; the cluster is stopped and started with pg_ctl -D that directory."""
    cluster = platform.cluster
    settings_into_conf(cluster)
    cluster.stop()
    os.chmod(tmp_dir, 0o711)
    conf_dir = os.path.join(tmp_dir, "etc-main")
    os.mkdir(conf_dir, 0o700)
    for name in ("postgresql.conf", "pg_hba.conf", "pg_ident.conf"):
        shutil.move(os.path.join(cluster.data, name), os.path.join(conf_dir, name))
    with open(os.path.join(conf_dir, "postgresql.conf"), "a", encoding="utf-8") as handle:
        handle.write("data_directory = '%s'\nhba_file = '%s/pg_hba.conf'\nident_file = '%s/pg_ident.conf'\n" % (
            cluster.data, conf_dir, conf_dir))
    postgres = pwd.getpwnam("postgres")
    for path in [conf_dir] + [os.path.join(conf_dir, name) for name in os.listdir(conf_dir)]:
        os.chown(path, postgres.pw_uid, postgres.pw_gid)
    server = PgCtlServer(cluster.data, config_dir=conf_dir)
    assert server.start()
    env = protect(platform, make_redis, config_dir, tmp_dir, run_playbook, christmas_pg_config_dir=conf_dir,
                  christmas_skip_redis=True)
    assert cluster.sql("SHOW archive_mode")[0][0] == "on"  # the restart that turned it on went through conf_dir
    env.platform.sql("INSERT INTO orders (symbol, side, qty, note) VALUES ('SYM1', 'buy', 7, 'before T')")
    run_playbook("archive", env.host_vars)
    expected = env.platform.snapshot()
    target = second_boundary()
    env.platform.sql("DELETE FROM orders")
    run_playbook("archive", env.host_vars)

    run_playbook("restore_db", env.host_vars, {"target_time": iso(target)})
    assert env.platform.snapshot() == expected
    assert not os.path.exists(os.path.join(cluster.data, "postgresql.conf"))  # the config stayed where it lives
    run_playbook("archive", env.host_vars)

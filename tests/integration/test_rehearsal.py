"""Restore rehearsals on real servers: a set is verified, restored into scratch servers, validated there, recorded
beside its manifest and in the incident database, and everything it started is gone afterwards."""

from __future__ import annotations

import calendar
import fcntl
import glob
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest
from conftest import (
    PG_BIN,
    ROOT,
    ArgvSampler,
    connection_vars,
    live_state,
    read_metrics,
    seal_signed,
    seed_hypertable_platform,
    seed_redis,
    value,
)
from sandbox import free_port

from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.db.connection import PgTarget
from ansible_collections.christmas.recovery.plugins.module_utils.platform import rehearsal, scratch
from ansible_collections.christmas.recovery.plugins.module_utils.redis.redis_keys import RedisTarget
from ansible_collections.christmas.recovery.plugins.module_utils.sets.backup_set import make_backup_set
from ansible_collections.christmas.recovery.plugins.module_utils.sets.proof import is_proven, read_proof


def _quiet(_message):
    pass


def _backup(platform, server, config, backup_dir):
    db = PgTarget(host="127.0.0.1", port=platform.cluster.port, password=platform.password, admin_user="postgres",
                  admin_password=platform.cluster.password)
    redis_target = RedisTarget("127.0.0.1", server.port, server.password) if server else None
    return make_backup_set(backup_dir, db=db, redis_target=redis_target, config_dir=config, progress=_quiet)


@pytest.fixture
def env(platform, make_redis, config_dir, tmp_dir):
    """A seeded platform, Redis and config tree, a set of all three, and a scratch directory postgres can reach."""
    server = make_redis(password="redis-rehearsal-pass")
    seed_redis(server)
    os.chmod(tmp_dir, 0o711)
    backup_dir = os.path.join(tmp_dir, "backups")
    report = _backup(platform, server, config_dir, backup_dir)
    host_vars = connection_vars(platform, server, config_dir, backup_dir)
    host_vars["christmas_rehearsal_dir"] = os.path.join(tmp_dir, "rehearsal")
    host_vars["christmas_metrics_dir"] = os.path.join(tmp_dir, "metrics")
    yield SimpleNamespace(platform=platform, redis=server, config=config_dir, backup_dir=backup_dir,
                          manifest=report["manifest"], set_id=report["set_id"], tmp_dir=tmp_dir,
                          scratch=host_vars["christmas_rehearsal_dir"], host_vars=host_vars,
                          incident_db=os.path.join(tmp_dir, "incidents", "incidents.sqlite"))
    scratch.stop_processes_in(host_vars["christmas_rehearsal_dir"])  # whatever a failed test left running


def _rehearse(env, **options):
    options.setdefault("scratch_dir", env.scratch)
    options.setdefault("production_ports", (env.platform.cluster.port, env.redis.port))
    return rehearsal.rehearse(env.manifest, **options, progress=_quiet)


def _scratch_processes(scratch):
    """Processes whose working directory or command line is in the scratch directory."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cwd = os.readlink("/proc/%s/cwd" % pid)
            with open("/proc/%s/cmdline" % pid, "rb") as handle:
                cmdline = handle.read()
        except OSError:
            continue
        if cwd.startswith(scratch) or scratch.encode() in cmdline:
            found.append((int(pid), cmdline))
    return found


def _incidents(path):
    with sqlite3.connect(path) as conn:
        conn.row_factory = sqlite3.Row
        rows = [dict(row) for row in conn.execute("SELECT * FROM christmas_incidents ORDER BY id")]
    for row in rows:
        row["verification"] = json.loads(row["verification"])
    return rows


def _reseal(manifest_path, change):
    with open(manifest_path, encoding="utf-8") as handle:
        manifest = json.load(handle)
    change(manifest)
    with open(manifest_path, "w", encoding="utf-8") as handle:
        json.dump(seal_signed(manifest), handle)


# ---------------------------------------------------------------- module_utils


def test_rehearsal_of_a_good_set_passes_records_proof_and_leaves_nothing_running(env):
    before = live_state(env)

    result = _rehearse(env)

    assert result["passed"] and result["error"] is None
    names = [check["name"] for check in result["checks"]]
    assert names == ["db: row counts", "db: market_data rows", "db: newest market_data", "redis: keys per db",
                     "config: checksums"]
    assert set(result["timings"]) == {"verify", "cleanup", "start", "restore", "validate", "teardown"}
    assert set(result["scratch_ports"].values()).isdisjoint({env.platform.cluster.port, env.redis.port})
    proof = read_proof(env.backup_dir, env.set_id)
    assert proof["proven"] and proof["rehearsals"][-1]["passed"] is True
    assert proof["rehearsals"][-1]["duration_seconds"] > 0
    assert is_proven(env.backup_dir, env.set_id)
    assert not os.path.lexists(env.scratch)
    assert _scratch_processes(env.scratch) == []
    assert live_state(env) == before
    assert not glob.glob(os.path.join(env.backup_dir, ".restore_*"))  # no restore journal beside the set


def test_a_set_with_a_flipped_byte_fails_before_any_scratch_server_starts(env):
    dump = os.path.join(env.backup_dir, "set_%s" % env.set_id, "redis.rdb")
    with open(dump, "r+b") as handle:
        handle.seek(100)
        byte = handle.read(1)
        handle.seek(100)
        handle.write(bytes([byte[0] ^ 0xFF]))

    with pytest.raises(RecoveryError) as caught:
        _rehearse(env)

    assert "failed verification" in str(caught.value) and "redis.rdb" in str(caught.value)
    assert not os.path.lexists(env.scratch)
    assert caught.value.details["timings"].keys() == {"verify"}
    last = read_proof(env.backup_dir, env.set_id)["rehearsals"][-1]
    assert last["passed"] is False and "redis.rdb" in last["error"]
    assert not is_proven(env.backup_dir, env.set_id)


def test_an_intact_set_of_a_database_that_had_lost_its_data_fails_validation_and_is_torn_down(
        platform, make_redis, config_dir, tmp_dir):
    platform.sql("DELETE FROM market_data")  # the application lost its market data before the nightly backup
    os.chmod(tmp_dir, 0o711)
    backup_dir = os.path.join(tmp_dir, "backups")
    report = _backup(platform, None, config_dir, backup_dir)
    scratch = os.path.join(tmp_dir, "rehearsal")
    queries = [{"name": "market data present", "sql": "SELECT count(*) FROM market_data", "min": 1}]

    with pytest.raises(RecoveryError) as caught:
        rehearsal.rehearse(report["manifest"], scratch_dir=scratch, queries=queries, progress=_quiet)

    assert "query: market data present: returned 0, less than the minimum 1" in str(caught.value)
    assert caught.value.details["failed_checks"] == ["query: market data present"]
    assert "teardown" in caught.value.details["timings"]
    assert not os.path.lexists(scratch) and _scratch_processes(scratch) == []
    assert not is_proven(backup_dir, report["set_id"])


def test_a_set_resealed_with_other_market_data_fails_its_newest_time_check(env):
    _reseal(env.manifest, lambda m: m["db"]["market_data"].update(newest="2026-12-24T18:00:00.000000Z"))

    with pytest.raises(RecoveryError) as caught:
        _rehearse(env)

    assert "db: newest market_data" in str(caught.value)
    assert caught.value.details["failed_checks"] == ["db: newest market_data"]
    assert not os.path.lexists(env.scratch) and _scratch_processes(env.scratch) == []
    assert not is_proven(env.backup_dir, env.set_id)


@pytest.mark.xdist_group("timescaledb")  # the stand-in is installed into the system extension directory
def test_a_timescaledb_set_rehearses_between_the_restore_hooks(timescaledb_cluster, tmp_dir):
    platform = seed_hypertable_platform(timescaledb_cluster(), scheduled=False)  # no launcher in the scratch cluster
    os.chmod(tmp_dir, 0o711)
    report = _backup(platform, None, None, os.path.join(tmp_dir, "backups"))
    scratch = os.path.join(tmp_dir, "rehearsal")
    steps = []

    result = rehearsal.rehearse(report["manifest"], scratch_dir=scratch, progress=steps.append)

    assert result["passed"] and result["components"]["db"]["state"].startswith("restored from set")
    assert "db: timescaledb objects" in [check["name"] for check in result["checks"]]
    assert any("scratch database" in step for step in steps)
    assert not os.path.lexists(scratch) and _scratch_processes(scratch) == []


@pytest.mark.xdist_group("timescaledb")
def test_a_set_whose_timescaledb_version_this_host_lacks_fails_naming_it(timescaledb_cluster, tmp_dir):
    platform = seed_hypertable_platform(timescaledb_cluster(), scheduled=False)  # no launcher in the scratch cluster
    os.chmod(tmp_dir, 0o711)
    report = _backup(platform, None, None, os.path.join(tmp_dir, "backups"))
    # The platform's TimescaleDB is newer than any this host has: as if the set came from the production host.
    _reseal(report["manifest"], lambda m: m["db"]["extensions"]["timescaledb"].update(version="2.99.0"))
    scratch = os.path.join(tmp_dir, "rehearsal")

    with pytest.raises(RecoveryError) as caught:
        rehearsal.rehearse(report["manifest"], scratch_dir=scratch, progress=_quiet)

    assert "the set was made with 2.99.0; install TimescaleDB 2.99.0 for PostgreSQL 15 first" in str(caught.value)
    assert caught.value.details["checks"] == [] and "teardown" in caught.value.details["timings"]
    assert not os.path.lexists(scratch) and _scratch_processes(scratch) == []
    assert "2.99.0" in read_proof(os.path.dirname(report["manifest"]), report["set_id"])["rehearsals"][-1]["error"]


def _leftover(env, pg_template):
    """What a killed rehearsal leaves when its servers outlive it: the directory with its marker, a cluster and a
    Redis server running from it (started detached, as if by another process)."""
    os.makedirs(env.scratch, 0o700)
    with open(os.path.join(env.scratch, scratch.MARKER), "w", encoding="utf-8") as handle:
        json.dump({"pid": 999999999}, handle)
    data, redis_dir = os.path.join(env.scratch, "pgdata"), os.path.join(env.scratch, "redis")
    os.mkdir(redis_dir, 0o700)
    subprocess.run(["cp", "-a", pg_template.data, data], check=True)
    subprocess.run(["chown", "-R", "postgres:postgres", env.scratch], check=True)
    subprocess.run(["runuser", "-u", "postgres", "--", os.path.join(PG_BIN, "pg_ctl"), "-D", data, "-l",
                    os.path.join(env.scratch, "postgresql.log"), "-w", "-o",
                    "-p %d -c listen_addresses=127.0.0.1 -c unix_socket_directories=" % free_port(), "start"],
                   check=True, capture_output=True)
    subprocess.run(["redis-server", "--port", "0", "--unixsocket", os.path.join(redis_dir, "s.sock"), "--dir",
                    redis_dir, "--daemonize", "yes", "--save", ""], check=True, capture_output=True)


def test_the_next_run_removes_a_killed_runs_scratch_dir_and_stops_its_servers(env, pg_template):
    _leftover(env, pg_template)
    running = _scratch_processes(env.scratch)
    assert any(b"postgres" in cmdline for _pid, cmdline in running)
    assert any(b"redis-server" in cmdline for _pid, cmdline in running)

    result = _rehearse(env)

    assert result["passed"] and result["leftover_removed"]
    assert not os.path.lexists(env.scratch)
    assert _scratch_processes(env.scratch) == []


def test_a_running_rehearsals_directory_is_refused_and_kept_while_check_mode_only_predicts(env):
    os.makedirs(env.scratch, 0o700)
    with open(os.path.join(env.scratch, scratch.MARKER), "w", encoding="utf-8") as handle:
        json.dump({"pid": os.getpid()}, handle)
    held = os.open(env.scratch, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        dry = _rehearse(env, check_mode=True)
        assert dry["changed"] and dry["would_remove_leftover"] and dry["passed"] is None

        with pytest.raises(RecoveryError) as caught:
            _rehearse(env)
    finally:
        os.close(held)

    assert str(caught.value) == "another rehearsal (pid %d) is running in %s" % (os.getpid(), env.scratch)
    assert os.listdir(env.scratch) == [scratch.MARKER]
    assert read_proof(env.backup_dir, env.set_id)["rehearsals"] == []  # no verdict on the set


def test_a_directory_that_is_no_rehearsals_is_refused_and_kept(env):
    os.makedirs(os.path.join(env.scratch, "precious"))

    with pytest.raises(RecoveryError) as caught:
        _rehearse(env)

    assert "is not a rehearsal's scratch directory" in str(caught.value)
    assert os.path.isdir(os.path.join(env.scratch, "precious"))


@pytest.mark.parametrize("which", ["scratch_db_port", "scratch_redis_port"])
def test_a_scratch_port_equal_to_a_production_port_is_refused_in_one_line(env, which):
    production = env.platform.cluster.port if which == "scratch_db_port" else env.redis.port

    with pytest.raises(RecoveryError) as caught:
        _rehearse(env, **{which: production})

    assert str(caught.value).startswith("scratch ") and "is a production port" in str(caught.value)
    assert read_proof(env.backup_dir, env.set_id)["rehearsals"] == []
    assert not os.path.lexists(env.scratch)


KILLED_RUN = """
import sys, time
sys.path.insert(0, sys.argv[1])
from ansible_collections.christmas.recovery.plugins.module_utils.platform import rehearsal, validation
validation.validate = lambda *args, **kwargs: time.sleep(600)  # held after the restore, until killed
rehearsal.rehearse(sys.argv[2], scratch_dir=sys.argv[3], progress=lambda message: print(message, flush=True))
"""


def test_a_killed_rehearsal_takes_its_servers_with_it_and_the_next_run_removes_its_dir(env):
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, os.path.join(ROOT, ".collections"), env.manifest,
                             env.scratch], stdout=subprocess.PIPE, text=True)
    watchdog = threading.Timer(120, proc.kill)
    watchdog.start()
    try:
        for line in proc.stdout:
            if line.startswith("restoring config tree"):
                break
        running = _scratch_processes(env.scratch)
    finally:
        proc.kill()
        proc.wait()
        watchdog.cancel()
    assert any(b"redis-server" in cmdline for _pid, cmdline in running), running
    assert any(b"postgres" in cmdline for _pid, cmdline in running), running

    deadline = time.monotonic() + 10
    while _scratch_processes(env.scratch) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _scratch_processes(env.scratch) == []
    assert os.path.isfile(os.path.join(env.scratch, scratch.MARKER))  # the directory is left to the next run

    result = _rehearse(env)

    assert result["passed"] and result["leftover_removed"]
    assert not os.path.lexists(env.scratch)


# ---------------------------------------------------------------- playbooks/rehearse.yml


def test_rehearse_playbook_proves_the_set_records_it_and_leaves_production_untouched(env, run_playbook):
    before = live_state(env)

    dry = run_playbook("rehearse", env.host_vars, check=True)
    assert "Would rehearse set %s" % env.set_id in dry.stdout
    assert not os.path.lexists(env.scratch) and not os.path.exists(env.incident_db)
    assert read_proof(env.backup_dir, env.set_id)["rehearsals"] == []

    run = run_playbook("rehearse", env.host_vars, {"manifest": "latest"})

    assert "Set %s passed its rehearsal" % env.set_id in run.stdout
    last = read_proof(env.backup_dir, env.set_id)["rehearsals"][-1]
    assert last["passed"] is True and last["duration_seconds"] > 0 and last["error"] is None
    [record] = _incidents(env.incident_db)
    assert (record["procedure"], record["status"], record["backup_set"]) == ("rehearsal", "passed", env.set_id)
    assert record["backup_manifest"] == env.manifest and record["duration_seconds"] == last["duration_seconds"]
    assert [check["name"] for check in record["verification"]] == [check["name"] for check in last["checks"]]
    assert all(check["ok"] for check in record["verification"]) and len(record["verification"]) == 5
    with open(record["markdown"], encoding="utf-8") as handle:
        assert handle.readline() == "# Incident %d: restore rehearsal passed\n" % record["id"]
    assert not os.path.lexists(env.scratch) and _scratch_processes(env.scratch) == []
    assert live_state(env) == before
    metrics = read_metrics(env.host_vars["christmas_metrics_dir"])
    assert value(metrics["christmas_recovery_rehearsal.prom"], "rehearsal_passed", kind="rehearsal") == 1
    assert value(metrics["christmas_recovery_rehearsal.prom"], "last_run_success", kind="rehearsal") == 1
    assert value(metrics["christmas_recovery_sets.prom"], "newest_proven_set_timestamp_seconds",
                 backup_dir=env.backup_dir) == calendar.timegm(time.strptime(env.set_id, "%Y%m%d_%H%M%S"))


def test_rehearse_playbook_records_a_corrupted_set_as_failed_and_fails(env, run_playbook):
    archive = os.path.join(env.backup_dir, "set_%s" % env.set_id, "config.tar")
    with open(archive, "r+b") as handle:
        handle.seek(700)
        byte = handle.read(1)
        handle.seek(700)
        handle.write(bytes([byte[0] ^ 0x01]))

    run = run_playbook("rehearse", env.host_vars, expect_ok=False)

    message = run.failure_message()
    assert message.startswith("rehearsal of set %s failed: backup set %s failed verification" % (
        env.set_id, env.set_id)) and "config.tar" in message
    [record] = _incidents(env.incident_db)
    assert (record["procedure"], record["status"], record["backup_set"]) == ("rehearsal", "failed", env.set_id)
    assert record["error"] == message
    assert not is_proven(env.backup_dir, env.set_id)
    assert not os.path.lexists(env.scratch)
    metrics = read_metrics(env.host_vars["christmas_metrics_dir"])
    assert value(metrics["christmas_recovery_rehearsal.prom"], "rehearsal_passed", kind="rehearsal") == 0
    assert value(metrics["christmas_recovery_rehearsal.prom"], "last_run_success", kind="rehearsal") == 0
    assert not any(name == "christmas_recovery_newest_proven_set_timestamp_seconds"
                   for name, _ in metrics["christmas_recovery_sets.prom"])


def test_rehearse_playbook_refuses_a_scratch_port_that_is_production_s(env, run_playbook):
    host_vars = dict(env.host_vars, christmas_rehearsal_redis_port=env.redis.port)

    run = run_playbook("rehearse", host_vars, expect_ok=False)

    assert run.failure_message() == "scratch Redis port %d is a production port (%s): choose another or 0 for a " \
        "free one" % (env.redis.port, ", ".join(str(p) for p in sorted({env.platform.cluster.port, env.redis.port})))
    assert not os.path.lexists(env.scratch)
    assert read_proof(env.backup_dir, env.set_id)["rehearsals"] == []


SITECUSTOMIZE = """
import os, secrets
_made = secrets.token_urlsafe


def _recorded(nbytes=None):
    token = _made(nbytes)
    with open(os.environ["CHRISTMAS_TEST_TOKENS"], "a", encoding="utf-8") as handle:
        handle.write(token + "\\n")
    return token


secrets.token_urlsafe = _recorded
"""


def test_the_scratch_password_is_in_no_argv_environment_or_verbose_output(env, run_playbook):
    """The module's tokens are written down by a sitecustomize (for the test only), then looked for everywhere."""
    site = os.path.join(env.tmp_dir, "site")
    os.mkdir(site)
    with open(os.path.join(site, "sitecustomize.py"), "w", encoding="utf-8") as handle:
        handle.write(SITECUSTOMIZE)
    tokens = os.path.join(env.tmp_dir, "tokens")
    sampler = ArgvSampler()
    sampler.start()
    try:
        run = run_playbook("rehearse", env.host_vars, verbosity=3,
                           env={"PYTHONPATH": site, "CHRISTMAS_TEST_TOKENS": tokens})
    finally:
        sampler.stop()

    with open(tokens, encoding="utf-8") as handle:
        passwords = [line for line in handle.read().splitlines() if len(line) == 32]  # token_urlsafe(24)
    assert passwords, "the module made no scratch password"
    argv, environ = b"\n".join(sampler.seen), b"\n".join(sampler.environ)
    # The scratch servers were sampled: each lives through the whole rehearsal (redis-server retitles itself at
    # start, so its name is what stays; the postmaster keeps its -D scratch data directory).
    assert sampler.rounds > 50 and b"redis-server" in argv
    assert b"\x00-D\x00" + os.path.join(os.path.abspath(env.scratch), "").encode() in argv
    for password in passwords:
        assert password.encode() not in argv and password.encode() not in environ
        assert password not in run.output
        for base, _dirs, names in os.walk(env.tmp_dir):
            for name in names:
                if name != "tokens":
                    with open(os.path.join(base, name), "rb") as handle:
                        assert password.encode() not in handle.read(), os.path.join(base, name)

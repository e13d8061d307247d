"""christmas_validate against real servers: a fresh set validates, and each kind of drift fails its own check."""

from __future__ import annotations

import base64
import datetime
import json
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest
from conftest import seal_signed, seed_redis

from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.db.connection import PgTarget
from ansible_collections.christmas.recovery.plugins.module_utils.platform.validation import require_ok, validate
from ansible_collections.christmas.recovery.plugins.module_utils.redis.redis_keys import RedisTarget
from ansible_collections.christmas.recovery.plugins.module_utils.sets.backup_set import make_backup_set

COMPONENT_CHECKS = ["db: row counts", "db: market_data rows", "db: newest market_data", "redis: keys per db",
                    "config: checksums"]
HEALTH_USER, HEALTH_PASSWORD, HEALTH_TOKEN = "monitor-bob", "pw-S3cret-771", "tok-Q9x-5521"


def _quiet(_message):
    pass


def _load(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


@pytest.fixture
def env(platform, make_redis, config_dir, tmp_dir):
    """A seeded platform, Redis and config tree, and a fresh backup set of all three. The database's sessions run in
    a time zone far from UTC, so the newest market_data time must not depend on it."""
    platform.cluster.sql("ALTER DATABASE christmas SET timezone TO 'Asia/Kolkata'")
    server = make_redis(password="redis-validate-pass")
    seed_redis(server)
    server.client(2).set("feature:flags", "on")  # a database whose keys have no TTL: none may go missing
    db = PgTarget(host="127.0.0.1", port=platform.cluster.port, password=platform.password, admin_user="postgres",
                  admin_password=platform.cluster.password)
    redis_target = RedisTarget("127.0.0.1", server.port, server.password)
    report = make_backup_set(os.path.join(tmp_dir, "backups"), db=db, redis_target=redis_target,
                             config_dir=config_dir, progress=_quiet)
    return SimpleNamespace(platform=platform, redis=server, config=config_dir, db=db, redis_target=redis_target,
                           manifest=report["manifest"], tmp_dir=tmp_dir)


def _validate(env, **options):
    return validate(env.manifest, db=env.db, redis_target=env.redis_target, config_dir=env.config, progress=_quiet,
                    **options)


def _by_name(report):
    return {check["name"]: check for check in report["checks"]}


def _failure_message(report):
    with pytest.raises(RecoveryError) as err:
        require_ok(report)
    assert err.value.details["failed_checks"] == report["failed"]
    assert err.value.details["checks"] == report["checks"]
    return str(err.value)


# ---------------------------------------------------------------- the manifest's market_data


def test_manifest_records_market_data_as_the_server_counts_it(env):
    recorded = _load(env.manifest)["db"]["market_data"]
    (rows, newest), = env.platform.sql("SELECT count(*), max(ts) FROM market_data")
    assert recorded["table"] == "public.market_data"
    assert recorded["rows"] == rows == 5000
    assert recorded["time_column"] == "ts"
    assert recorded["newest"].endswith("Z")
    assert datetime.datetime.fromisoformat(recorded["newest"].replace("Z", "+00:00")) == newest


def test_manifest_takes_the_hypertable_time_dimension_over_the_first_timestamp_column(platform, tmp_dir):
    """timescaledb_information.dimensions, as TimescaleDB has it, names the time column."""
    platform.sql("ALTER TABLE market_data ADD COLUMN received_at timestamp;"
                 "UPDATE market_data SET received_at = (ts AT TIME ZONE 'UTC') + interval '250 ms'")
    platform.sql("CREATE SCHEMA timescaledb_information;"
                 "CREATE TABLE timescaledb_information.dimensions (hypertable_schema name, hypertable_name name,"
                 " dimension_number int, column_name name, dimension_type text);"
                 "INSERT INTO timescaledb_information.dimensions VALUES ('public', 'market_data', 1,"
                 " 'received_at', 'Time'), ('public', 'market_data', 2, 'symbol', 'Space')")
    db = PgTarget(host="127.0.0.1", port=platform.cluster.port, password=platform.password)
    report = make_backup_set(os.path.join(tmp_dir, "backups"), db=db, progress=_quiet)

    recorded = _load(report["manifest"])["db"]["market_data"]
    (newest,), = platform.sql("SELECT max(received_at) FROM market_data")
    assert recorded["time_column"] == "received_at"
    assert recorded["newest"] == newest.isoformat(timespec="microseconds") == "2026-11-01T01:23:20.250000"
    checks = _by_name(validate(report["manifest"], components=("db",), db=db, progress=_quiet))
    assert checks["db: newest market_data"]["ok"], checks


def test_manifest_without_market_data_table_records_none_and_validates(platform, tmp_dir):
    platform.sql("DROP VIEW latest_prices; DROP TABLE market_data")
    db = PgTarget(host="127.0.0.1", port=platform.cluster.port, password=platform.password)
    report = make_backup_set(os.path.join(tmp_dir, "backups"), db=db, progress=_quiet)
    assert "market_data" not in _load(report["manifest"])["db"]
    result = validate(report["manifest"], components=("db",), db=db, progress=_quiet)
    assert [check["name"] for check in result["checks"]] == ["db: row counts"] and result["ok"]


# ---------------------------------------------------------------- each kind of drift


def test_a_fresh_backup_validates_ok_with_every_check(env):
    report = _validate(env)
    assert [check["name"] for check in report["checks"]] == COMPONENT_CHECKS
    assert report["ok"] and report["failed"] == [], report
    assert require_ok(report)["failed_checks"] == []
    checks = _by_name(report)
    assert checks["db: market_data rows"]["actual"] == 5000
    assert checks["db: newest market_data"]["actual"] == "2026-11-01T01:23:20.000000Z"
    assert checks["redis: keys per db"]["actual"] == {"0": 8, "2": 1, "3": 300}
    assert report["manifest"] == env.manifest and report["set_id"] in env.manifest


def test_a_deleted_row_fails_row_counts_and_market_data_rows(env):
    env.platform.sql("DELETE FROM market_data WHERE ts = (SELECT min(ts) FROM market_data)")
    assert env.platform.sql("SELECT count(*) FROM market_data") == [(4999,)]
    report = _validate(env)
    assert report["failed"] == ["db: row counts", "db: market_data rows"]
    message = _failure_message(report)
    assert message == ("validation failed: db: row counts: public.market_data: 4999 rows, expected 5000; "
                       "db: market_data rows: public.market_data: 4999 rows, expected 5000")


def test_a_newer_market_data_row_fails_the_newest_check(env):
    env.platform.sql("INSERT INTO market_data VALUES ('2026-12-24 18:00:00.5+00', 'SYM1', 1, 1)")
    checks = _by_name(_validate(env))
    newest = checks["db: newest market_data"]
    assert not newest["ok"]
    assert newest["actual"] == "2026-12-24T18:00:00.500000Z"
    assert newest["expected"] == "2026-11-01T01:23:20.000000Z"


def test_an_old_manifest_without_market_data_falls_back_to_its_row_count(env):
    data = _load(env.manifest)
    del data["db"]["market_data"]
    with open(env.manifest, "w", encoding="utf-8") as handle:
        json.dump(seal_signed(data), handle)
    env.platform.sql("DELETE FROM market_data WHERE symbol = 'SYM3'")
    report = _validate(env)
    assert [check["name"] for check in report["checks"]] == [
        "db: row counts", "db: market_data rows", "redis: keys per db", "config: checksums"]
    assert report["failed"] == ["db: row counts", "db: market_data rows"]


def test_a_deleted_redis_key_fails_keys_per_db(env):
    assert env.redis.client(2).delete("feature:flags") == 1
    report = _validate(env)
    assert report["failed"] == ["redis: keys per db"]
    assert "redis: keys per db: db 2: 0 keys, expected 1" in _failure_message(report)


def test_keys_with_a_ttl_may_be_gone_but_not_the_others(env):
    """db 0 holds 7 keys without a TTL and one with: 7 or 8 keys pass, 6 do not."""
    main = env.redis.client(0)
    main.delete("session:42")
    assert _validate(env)["ok"]
    main.delete("user:1")
    check = _by_name(_validate(env))["redis: keys per db"]
    assert not check["ok"] and check["detail"] == "db 0: 6 keys, expected 7 to 8"


def test_a_stray_redis_key_in_another_db_fails_keys_per_db(env):
    env.redis.client(5).set("stray", "1")
    check = _by_name(_validate(env))["redis: keys per db"]
    assert not check["ok"] and check["detail"] == "db 5: 1 key, expected 0"


def test_a_changed_config_file_fails_checksums(env):
    with open(os.path.join(env.config, "app.yml"), "a", encoding="utf-8") as handle:
        handle.write("# edited\n")
    report = _validate(env)
    assert report["failed"] == ["config: checksums"]
    assert _failure_message(report).startswith("validation failed: config: checksums: tree %s differs" % env.config)


def test_unreachable_servers_are_failed_checks_not_errors(env):
    env.redis.destroy()
    env.platform.cluster.stop()
    report = _validate(env)
    checks = _by_name(report)
    assert report["failed"] == COMPONENT_CHECKS[:4]
    assert checks["db: row counts"]["detail"].startswith("cannot connect to PostgreSQL postgres@127.0.0.1:")
    assert checks["redis: keys per db"]["detail"].startswith("Redis unreachable or refused at 127.0.0.1:")
    assert checks["config: checksums"]["ok"]


def test_services_must_all_be_running(env):
    services = {"api": {"running": True, "state": "running"}, "worker": {"running": False, "state": "exited (1)"}}
    check = _by_name(_validate(env, services=services))["services: up"]
    assert not check["ok"] and check["detail"] == "not running: worker: exited (1)"
    assert _by_name(_validate(env, services={"api": services["api"]}))["services: up"]["ok"]


# ---------------------------------------------------------------- user queries


def test_user_queries_pass_and_fail_and_cannot_write(env):
    queries = [
        {"name": "positions", "sql": "SELECT count(*) FROM positions", "expected": 17},
        {"name": "market rows", "sql": "SELECT count(*) FROM market_data", "min": 4000},
        {"name": "wrong count", "sql": "SELECT count(*) FROM positions", "expected": "18"},
        {"name": "too few", "sql": "SELECT count(*) FROM orders", "min": 701},
        {"name": "writes", "sql": "DELETE FROM positions RETURNING 1", "expected": 1},
        {"name": "who", "sql": "SELECT current_user", "expected": "christmas"},
    ]
    report = _validate(env, queries=queries)
    checks = _by_name(report)
    assert report["failed"] == ["query: wrong count", "query: too few", "query: writes"]
    assert checks["query: positions"]["actual"] == 17
    assert checks["query: too few"]["detail"] == "returned 700, less than the minimum 701"
    assert "read-only transaction" in checks["query: writes"]["detail"]
    assert env.platform.sql("SELECT count(*) FROM positions") == [(17,)]


def test_a_query_with_both_expected_and_min_is_refused_before_any_check(env):
    steps = []
    with pytest.raises(RecoveryError) as err:
        validate(env.manifest, db=env.db, redis_target=env.redis_target, config_dir=env.config,
                 queries=[{"name": "both", "sql": "SELECT 1", "expected": 1, "min": 0}], progress=steps.append)
    assert str(err.value) == "queries[0] (both): give exactly one of expected and min"
    assert steps == []


# ---------------------------------------------------------------- health URLs


@pytest.fixture
def http_service():
    """A local HTTP service: /ok answers 200, /fail 500, /auth 200 only with the right Basic credentials and token."""
    seen = []
    wanted = "Basic " + base64.b64encode(("%s:%s" % (HEALTH_USER, HEALTH_PASSWORD)).encode()).decode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server name
            seen.append((self.path, self.headers.get("Authorization")))
            if self.path.startswith("/auth"):
                good = self.headers.get("Authorization") == wanted and self.path.endswith("token=" + HEALTH_TOKEN)
                status = 200 if good else 401
            else:
                status = {"/ok": 200, "/fail": 500}.get(self.path, 404)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield SimpleNamespace(base="http://127.0.0.1:%d" % server.server_address[1], seen=seen)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_health_urls_pass_on_200_and_fail_with_the_status(env, http_service):
    ok_url, fail_url = http_service.base + "/ok", http_service.base + "/fail"
    report = _validate(env, components=(), health_urls=[ok_url, fail_url], health_timeout=1)
    checks = _by_name(report)
    assert checks["health: " + ok_url]["ok"] and checks["health: " + ok_url]["actual"] == 200
    assert not checks["health: " + fail_url]["ok"] and checks["health: " + fail_url]["actual"] == 500
    assert report["failed"] == ["health: " + fail_url]
    assert (("/fail", None)) in http_service.seen


def test_a_closed_port_fails_the_health_check_with_the_error(env):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        url = "http://127.0.0.1:%d/ok" % probe.getsockname()[1]
    check = _by_name(_validate(env, components=(), health_urls=[url], health_timeout=0))["health: " + url]
    assert not check["ok"] and "refused" in check["actual"].lower()


# ---------------------------------------------------------------- through ansible-playbook


def _module_args(env, **extra):
    args = {"manifest": env.manifest, "db_host": "127.0.0.1", "db_port": env.platform.cluster.port,
            "db_password": env.platform.password, "db_admin_user": "postgres",
            "db_admin_password": env.platform.cluster.password, "redis_host": "127.0.0.1",
            "redis_port": env.redis.port, "redis_password": env.redis.password, "config_dir": env.config}
    args.update(extra)
    return args


def _run_validate_playbook(run_playbook, env, args, expect_ok, check=False, verbosity=0):
    """A play that runs the module and, like a caller's rescue, records its result (success or failure) to a file."""
    result_path = os.path.join(env.tmp_dir, "validate-result.json")
    record = {"ansible.builtin.copy": {"dest": result_path, "mode": "0600"}, "check_mode": False}
    play = [{"name": "Validate the platform", "hosts": "christmas", "gather_facts": False, "tasks": [{
        "name": "Validate and record", "block": [
            {"name": "Validate", "christmas.recovery.christmas_validate": args, "register": "validation"},
            dict(record, name="Record the checks", **{"ansible.builtin.copy": dict(
                record["ansible.builtin.copy"], content="{{ validation | to_json }}")}),
        ], "rescue": [
            dict(record, name="Record the failed checks", **{"ansible.builtin.copy": dict(
                record["ansible.builtin.copy"], content="{{ ansible_failed_result | to_json }}")}),
            {"name": "Fail as validation did", "ansible.builtin.fail": {"msg": "{{ ansible_failed_result.msg }}"}},
        ]}]}]
    playbook = os.path.join(env.tmp_dir, "validate")
    with open(playbook + ".yml", "w", encoding="utf-8") as handle:
        json.dump(play, handle)
    run = run_playbook(playbook, {}, expect_ok=expect_ok, check=check, verbosity=verbosity)
    return run, _load(result_path)


def test_module_validates_a_fresh_set_through_ansible_playbook_also_in_check_mode(run_playbook, env):
    for check in (False, True):
        run, result = _run_validate_playbook(run_playbook, env, _module_args(env), expect_ok=True, check=check)
        assert result["ok"] is True and result["changed"] is False
        assert [c["name"] for c in result["checks"]] == COMPONENT_CHECKS
        assert result["set_id"] in env.manifest


def test_module_failure_names_the_checks_and_returns_them_to_the_rescue(run_playbook, env):
    os.unlink(os.path.join(env.config, "run.sh"))
    run, result = _run_validate_playbook(run_playbook, env, _module_args(env), expect_ok=False)
    assert result["msg"] == "validation failed: config: checksums: tree %s differs from the set's (files, modes or " \
        "links changed, added or removed)" % env.config
    assert result["failed"] is True and result["failed_checks"] == ["config: checksums"]
    assert [c["name"] for c in result["checks"]] == COMPONENT_CHECKS
    assert result["msg"] in run.stdout


def test_module_never_shows_health_url_credentials(run_playbook, env, http_service):
    url = "http://%s:%s@%s/auth?token=%s" % (HEALTH_USER, HEALTH_PASSWORD, http_service.base[7:], HEALTH_TOKEN)
    denied = "http://%s:wrong-%s@%s/auth?token=%s" % (HEALTH_USER, HEALTH_PASSWORD, http_service.base[7:],
                                                       HEALTH_TOKEN)
    run, result = _run_validate_playbook(run_playbook, env, _module_args(
        env, skip_db=True, skip_redis=True, health_urls=[url, denied], health_timeout=0), expect_ok=False,
        verbosity=3)
    shown = "health: %s/auth" % http_service.base
    assert [c["name"] for c in result["checks"]] == ["config: checksums", shown, shown]
    assert [c["actual"] for c in result["checks"][1:]] == [200, 401]
    assert ("/auth?token=" + HEALTH_TOKEN, "Basic " + base64.b64encode(
        ("%s:%s" % (HEALTH_USER, HEALTH_PASSWORD)).encode()).decode()) in http_service.seen
    text = run.output + json.dumps(result)
    for secret in (HEALTH_USER, HEALTH_PASSWORD, HEALTH_TOKEN):
        assert secret not in text


# ---------------------------------------------------------------- mode running: the probe of a database that went on


def test_running_mode_accepts_a_database_that_went_on_since_the_backup(env):
    env.platform.sql("INSERT INTO market_data VALUES ('2026-11-30 00:00:00+00', 'NEW', 1, 1);"
                     "DELETE FROM orders WHERE id % 2 = 0")
    assert not _validate(env, components=("db",))["ok"]  # exact: it differs from the set

    report = _validate(env, components=("db",), mode="running")

    assert report["ok"], report
    assert [check["name"] for check in report["checks"]] == ["db: tables of the set", "db: market_data rows",
                                                              "db: newest market_data"]


def test_running_mode_refuses_lost_market_data_and_missing_tables(env):
    env.platform.sql("DELETE FROM market_data WHERE ts > '2026-11-01 01:00:00+00'; DROP TABLE positions")

    report = _validate(env, components=("db",), mode="running")

    assert report["failed"] == ["db: tables of the set", "db: market_data rows", "db: newest market_data"]
    assert "public.positions" in _by_name(report)["db: tables of the set"]["detail"]


def test_connect_wait_rides_out_a_server_that_is_still_starting(env):
    env.platform.cluster.stop()
    starter = threading.Timer(1.5, env.platform.cluster.start)
    starter.start()
    try:
        report = validate(env.manifest, components=("db",), db=PgTarget(**dict(vars(env.db), connect_wait=30)),
                          progress=_quiet)
    finally:
        starter.join()
    assert report["ok"], report
    env.platform.cluster.stop()
    refused = validate(env.manifest, components=("db",), db=env.db, progress=_quiet)  # no wait: fails at once
    assert "Connection refused" in _by_name(refused)["db: row counts"]["detail"]


def test_connect_wait_rides_out_a_redis_that_is_not_listening_yet(env):
    env.redis.client().save()  # the keys come back from dump.rdb at the start
    env.redis.stop()
    starter = threading.Timer(1.5, env.redis.start)
    starter.start()
    try:
        waiting = RedisTarget("127.0.0.1", env.redis.port, env.redis.password, connect_wait=30)
        report = validate(env.manifest, components=("redis",), redis_target=waiting, progress=_quiet)
    finally:
        starter.join()
    assert report["ok"], report

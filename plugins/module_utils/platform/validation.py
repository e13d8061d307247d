# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Validation after a restore: the servers and the config tree compared with the backup set itself (never with the
restore's own report), plus the caller's service states, health URLs and SQL probes. Read-only throughout."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import http.client
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from array import array
from decimal import Decimal, InvalidOperation

from ansible_collections.christmas.recovery.plugins.module_utils.config import config_restore, config_tree
from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.db import connection, postgres, timescaledb
from ansible_collections.christmas.recovery.plugins.module_utils.redis import redis_keys, redis_rdb
from ansible_collections.christmas.recovery.plugins.module_utils.sets.manifest import (
    artifact_path,
    artifacts_of,
    check_artifact,
    load,
    resolve_manifest_path,
)

# Without psycopg2, connection.connect refuses before any of its errors could be raised.
PG_ERRORS = (connection.psycopg2.Error,) if connection.HAS_PSYCOPG2 else ()
COMPONENTS = ("db", "redis", "config")
ROW_COUNTS, MARKET_ROWS, NEWEST = "db: row counts", "db: market_data rows", "db: newest market_data"
TABLES = "db: tables of the set"
TIMESCALEDB_OBJECTS, TIMESCALEDB_SCHEDULER = "db: timescaledb objects", "db: timescaledb scheduler"
MODES = ("restored", "running")
REDIS_KEYS, CONFIG_CHECKSUMS, SERVICES_UP = "redis: keys per db", "config: checksums", "services: up"
HEALTH_TRY_TIMEOUT = 5
HEALTH_RETRY_INTERVAL = 1
MAX_NAMED = 5
QUERY_KEYS = {"name", "sql", "expected", "min"}


def validate(manifest_ref, backup_dir=None, components=COMPONENTS, db=None, redis_target=None, config_dir=None,
             queries=(), health_urls=(), health_timeout=30, services=None, mode="restored", progress=print):
    """Run every check that applies, in a fixed order, and return them all; raise only for bad input (a bad
    manifest, a damaged Redis artifact, malformed queries, services or URLs). Servers that cannot be reached are
    failed checks, not errors. ``mode`` "restored" expects the database exactly as in the set; "running" (a database
    that went on working since the backup) expects every table of the set readable and market_data not behind it.
    Without ``manifest_ref`` (after a restore to a point in time, which checked its components) only the services,
    health URLs and queries are checked."""
    if mode not in MODES:
        raise RecoveryError("unknown validation mode %s (known: %s)" % (mode, ", ".join(MODES)))
    unknown = sorted(set(components) - set(COMPONENTS))
    if unknown:
        raise RecoveryError("unknown component %s (known: %s)" % (", ".join(unknown), ", ".join(COMPONENTS)))
    queries = check_queries(queries)
    check_services(services)
    health_urls = check_health_urls(health_urls)
    if not isinstance(health_timeout, int) or isinstance(health_timeout, bool) or health_timeout < 0:
        raise RecoveryError("health_timeout must be 0 or more seconds, got %r" % (health_timeout,))
    path, manifest, set_root = _the_set(manifest_ref, backup_dir)
    chosen = [c for c in COMPONENTS if c in components and c in manifest["components"]]
    if ("db" in chosen or queries) and db is None:
        raise RecoveryError("validating the database needs its connection (db)")
    if "redis" in chosen and redis_target is None:
        raise RecoveryError("validating Redis needs its connection (redis_target)")
    if manifest_ref is not None and not (chosen or services is not None or health_urls or queries):
        raise RecoveryError("nothing to validate: set %s holds %s and every other check is off" % (
            manifest["set_id"], ", ".join(manifest["components"])))
    snapshot = _snapshot_keys(set_root, manifest) if "redis" in chosen else None

    checks = []
    if "db" in chosen:
        progress("validating database %s against set %s" % (db.describe(), manifest["set_id"]))
        checks += _database_checks(db, manifest["db"], at_least=mode == "running")
    if "redis" in chosen:
        progress("validating Redis at %s against set %s" % (redis_target.describe(), manifest["set_id"]))
        checks.append(_redis_check(redis_target, snapshot))
    if "config" in chosen:
        dest = config_dir or manifest["config"]["source_dir"]
        progress("validating config tree %s against set %s" % (dest, manifest["set_id"]))
        archive = artifact_path(set_root, artifacts_of(manifest, "config")[0])
        checks.append(_config_check(dest, manifest["config"]["tree_sha256"], archive, manifest["config"]))
    if services is not None:
        checks.append(_services_check(services))
    for url in health_urls:
        progress("checking %s" % redact_url(url))
        checks.append(_health_check(url, health_timeout))
    if queries:
        progress("running %d validation queries" % len(queries))
        checks += _query_checks(db, queries)
    failed = [check["name"] for check in checks if not check["ok"]]
    return {"ok": not failed, "checks": checks, "failed": failed, "set_id": manifest["set_id"], "manifest": path}


def _the_set(manifest_ref, backup_dir):
    """(manifest path, manifest, set directory); none after a restore to a point in time, which checked its
    components itself (the services, health URLs and queries are still checked)."""
    if manifest_ref is None:
        return None, {"set_id": None, "components": []}, None
    path = resolve_manifest_path(manifest_ref, backup_dir)
    return path, load(path), os.path.dirname(path)


def require_ok(report):
    """The report as a module returns it when every check passed; else a RecoveryError naming each failed check and
    carrying the report. Ansible reserves ``failed`` for its own flag, so the names travel as ``failed_checks``."""
    result = {key: value for key, value in report.items() if key != "failed"}
    result["failed_checks"] = report["failed"]
    if report["ok"]:
        return result
    raise RecoveryError("validation failed: %s" % "; ".join(
        "%s: %s" % (check["name"], check["detail"]) for check in report["checks"] if not check["ok"]), **result)


def check_result(name, ok, expected, actual, detail):
    return {"name": name, "ok": bool(ok), "expected": expected, "actual": actual, "detail": " ".join(detail.split())}


def _named(items):
    """At most MAX_NAMED items, then how many more."""
    text = ", ".join(items[:MAX_NAMED])
    return text + (" and %d more" % (len(items) - MAX_NAMED) if len(items) > MAX_NAMED else "")


# ---------------------------------------------------------------- input


def check_queries(queries):
    """Each query is {name, sql, expected or min}; returns them, or raises naming the first bad one."""
    if queries is None:
        return []
    if not isinstance(queries, (list, tuple)):
        raise RecoveryError("queries must be a list of {name, sql, expected or min}")
    names = set()
    for index, query in enumerate(queries):
        where = "queries[%d]" % index
        if not isinstance(query, dict):
            raise RecoveryError("%s is not a mapping of name, sql and expected or min" % where)
        name = query.get("name")
        if not isinstance(name, str) or not name.strip():
            raise RecoveryError("%s has no name" % where)
        where = "%s (%s)" % (where, name)
        if name in names:
            raise RecoveryError("%s: the name is used twice" % where)
        names.add(name)
        if not isinstance(query.get("sql"), str) or not query["sql"].strip():
            raise RecoveryError("%s has no sql" % where)
        extra = sorted(set(query) - QUERY_KEYS)
        if extra:
            raise RecoveryError("%s has unknown keys %s (known: expected, min, name, sql)" % (where, ", ".join(extra)))
        if (query.get("expected") is None) == (query.get("min") is None):
            raise RecoveryError("%s: give exactly one of expected and min" % where)
        if query.get("min") is not None and _number(query["min"]) is None:
            raise RecoveryError("%s: min %.40r is not a number" % (where, query["min"]))
    return list(queries)


def check_services(services):
    """``services`` is None or {name: {"running": bool, "state": str}}."""
    if services is None:
        return
    if not isinstance(services, dict):
        raise RecoveryError("services must map service names to {running, state}")
    for name, status in services.items():
        if not isinstance(status, dict) or not isinstance(status.get("running"), bool):
            raise RecoveryError("services[%s] must be a mapping with a boolean running" % name)
        if status.get("state") is not None and not isinstance(status["state"], str):
            raise RecoveryError("services[%s].state must be a string" % name)


def check_health_urls(urls):
    """Every URL must be http(s) with a host; a bad one is named without its credentials."""
    urls = list(urls or ())
    for index, url in enumerate(urls):
        try:
            parts = urllib.parse.urlsplit(url) if isinstance(url, str) else None
            valid = bool(parts and parts.scheme in ("http", "https") and parts.hostname)
            if valid:
                parts.port  # noqa: B018 - raises on a port that is not a number
        except ValueError:
            valid = False
        if not valid:
            raise RecoveryError("health_urls[%d] %s is not an http:// or https:// URL with a host" % (
                index, redact_url(url) if isinstance(url, str) else repr(url)[:40]))
    return urls


def redact_url(url):
    """The URL as shown: no user name or password, no query string, no fragment."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "(unparsable URL)"
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


def _url_secrets(url):
    """What a URL holds that must never be shown: its user info, password, query string and fragment."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return [url]
    userinfo = parts.netloc.rpartition("@")[0]
    return [s for s in (userinfo, parts.password, parts.query, parts.fragment) if s]


def _number(value):
    if isinstance(value, bool):
        return None
    try:
        number = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    return number if number.is_finite() else None


# ---------------------------------------------------------------- database


def _expected_market_rows(meta):
    market = meta.get("market_data")
    if market:
        return market["rows"]
    return meta["row_counts"].get("public.market_data")


def _database_checks(target, meta, at_least=False):
    """Row counts of every table, market_data's rows and newest time, TimescaleDB's objects, read in one snapshot;
    ``at_least``: tables present, market_data's rows and newest time not behind the set. Then, when the set has
    TimescaleDB jobs, that TimescaleDB's scheduler runs them in the database."""
    market = meta.get("market_data")
    expected_rows = _expected_market_rows(meta)
    tsdb = meta.get("timescaledb")
    expects_scheduler = timescaledb.has_scheduled_jobs(tsdb)
    planned = [(TABLES if at_least else ROW_COUNTS, meta["row_counts"])]
    if expected_rows is not None:
        planned.append((MARKET_ROWS, expected_rows))
    if market and market["time_column"]:
        planned.append((NEWEST, market["newest"]))
    if tsdb:
        planned.append((TIMESCALEDB_OBJECTS, tsdb))
    if expects_scheduler:
        planned.append((TIMESCALEDB_SCHEDULER, True))
    try:
        conn = connection.connect(target, autocommit=False)
    except RecoveryError as err:
        return [check_result(name, False, expected, None, str(err)) for name, expected in planned]
    try:
        conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
        with conn.cursor() as cur:
            cur.execute("SET TIME ZONE 'UTC'")  # as at backup time
        counts = postgres.count_rows(conn, meta["row_counts"])
        facts = postgres.market_data_facts(conn, market["time_column"] if market else None)
        tsdb_facts = timescaledb.facts(conn) if tsdb else None
        conn.rollback()
        scheduler = timescaledb.scheduler_running(conn, target.dbname) if expects_scheduler else None
    except PG_ERRORS as err:
        problem = str(connection.sql_error("reading database %s" % target.dbname, err))
        return [check_result(name, False, expected, None, problem) for name, expected in planned]
    finally:
        conn.close()
    checks = [_tables_check(meta["row_counts"], counts) if at_least else _row_counts_check(meta["row_counts"], counts)]
    if expected_rows is not None:
        checks.append(_market_rows_check(expected_rows, facts, target.dbname, at_least))
    if market and market["time_column"]:
        checks.append(_newest_check(market, facts, target.dbname, at_least))
    if tsdb:
        checks.append(_timescaledb_objects_check(tsdb, tsdb_facts))
    if scheduler is not None:
        checks.append(_scheduler_check(scheduler, target.dbname))
    return checks


def _timescaledb_objects_check(expected, actual):
    """Hypertables, continuous aggregates and jobs as in the set; chunk counts are left to the restore itself,
    since jobs that run after it may compress or drop chunks."""
    differences = timescaledb.differences(expected, actual, objects_only=True)
    detail = _named(differences) if differences else "%d hypertables, %d continuous aggregates, %d jobs, as in the " \
        "set" % (len(actual["hypertables"]), len(actual["continuous_aggregates"]), len(actual["jobs"]))
    return check_result(TIMESCALEDB_OBJECTS, not differences, expected, actual, detail)


def _scheduler_check(running, dbname):
    if running:
        detail = "TimescaleDB's scheduler runs the jobs of database %s" % dbname
    else:
        detail = ("no TimescaleDB scheduler in database %s after %d s, so its jobs do not run; "
                  "SELECT _timescaledb_functions.start_background_workers() in it starts one" % (
                      dbname, timescaledb.SCHEDULER_WAIT))
    return check_result(TIMESCALEDB_SCHEDULER, running, True, running, detail)


def _row_counts_check(expected, actual):
    differences = []
    for table in sorted(set(expected) | set(actual)):
        if table not in actual:
            differences.append("%s missing" % table)
        elif table not in expected:
            differences.append("%s: %d rows, not in the backup" % (table, actual[table]))
        elif actual[table] != expected[table]:
            differences.append("%s: %d rows, expected %d" % (table, actual[table], expected[table]))
    detail = _named(differences) if differences else "%d tables, %d rows, as in the set" % (
        len(actual), sum(actual.values()))
    return check_result(ROW_COUNTS, not differences, expected, actual, detail)


def _tables_check(expected, actual):
    missing = sorted(set(expected) - set(actual))
    detail = ("missing: " + _named(missing)) if missing else "the %d tables of the set are there and readable" % len(
        expected)
    return check_result(TABLES, not missing, sorted(expected), sorted(actual), detail)


def _market_rows_check(expected, facts, dbname, at_least=False):
    if facts is None:
        return check_result(MARKET_ROWS, False, expected, None, "no table market_data in database %s" % dbname)
    ok = facts["rows"] >= expected if at_least else facts["rows"] == expected
    detail = "%s: %d rows%s" % (facts["table"], facts["rows"], "" if ok else ", expected %s%d" % (
        "at least " if at_least else "", expected))
    return check_result(MARKET_ROWS, ok, expected, facts["rows"], detail)


def _newest_check(market, facts, dbname, at_least=False):
    expected, column = market["newest"], market["time_column"]
    if facts is None:
        return check_result(NEWEST, False, expected, None, "no table market_data in database %s" % dbname)
    if facts["time_column"] != column:
        return check_result(NEWEST, False, expected, None, "%s has no column %s" % (facts["table"], column))
    if at_least:
        ok = expected is None or (facts["newest"] is not None and facts["newest"] >= expected)
    else:
        ok = facts["newest"] == expected
    detail = "max(%s) of %s is %s%s" % (column, facts["table"], facts["newest"], "" if ok else ", expected %s%s" % (
        "at least " if at_least else "", expected))
    return check_result(NEWEST, ok, expected, facts["newest"], detail)


def _query_checks(db, queries):
    """Each query as the database's own user (never the admin), in a read-only transaction of its own."""
    target = dataclasses.replace(db, admin_user=None, admin_password=None)
    try:
        conn = connection.connect(target, autocommit=False)
    except RecoveryError as err:
        return [check_result("query: %s" % q["name"], False, _query_expectation(q), None, str(err)) for q in queries]
    try:
        conn.set_session(readonly=True)
        return [_query_check(conn, query) for query in queries]
    finally:
        conn.close()


def _query_expectation(query):
    return query["expected"] if query.get("expected") is not None else {"min": query["min"]}


def _query_check(conn, query):
    name, expectation = "query: %s" % query["name"], _query_expectation(query)
    try:
        with conn.cursor() as cur:
            cur.execute(query["sql"])
            row = cur.fetchone() if cur.description else None
    except PG_ERRORS as err:
        return check_result(name, False, expectation, None, str(connection.sql_error("the query failed", err)))
    finally:
        with contextlib.suppress(*PG_ERRORS):  # a lost connection is reported by the next query
            conn.rollback()
    if not row:
        return check_result(name, False, expectation, None, "the query returned no rows")
    value = row[0]
    actual = value if value is None or isinstance(value, (bool, int, float, str)) else str(value)
    if query.get("expected") is not None:
        ok = str(value) == str(query["expected"])
        return check_result(name, ok, expectation, actual, "returned %s%s" % (
            value, "" if ok else ", expected %s" % (query["expected"],)))
    number = _number(value)
    if number is None:
        return check_result(name, False, expectation, actual, "returned %.60s, not a number" % (value,))
    ok = number >= _number(query["min"])
    return check_result(name, ok, expectation, actual, "returned %s, %s %s" % (
        value, "at least" if ok else "less than the minimum", query["min"]))


# ---------------------------------------------------------------- Redis and config


def _snapshot_keys(set_root, manifest):
    """Per database of the set's own RDB: keys without a TTL, and the expiry times of the others."""
    artifact = artifacts_of(manifest, "redis")[0]
    problem = check_artifact(set_root, artifact)
    if problem:
        raise RecoveryError("backup set %s: %s: %s" % (manifest["set_id"], artifact["path"], problem))
    persistent, expiries = {}, {}
    for kind, item in redis_rdb.read_entries(artifact_path(set_root, artifact)):
        if kind != "key":
            continue
        db = str(item.db)
        if item.expire_ms is None:
            persistent[db] = persistent.get(db, 0) + 1
        else:
            expiries.setdefault(db, array("q")).append(item.expire_ms)
    return persistent, expiries


def _redis_check(target, snapshot):
    """Every database holds the set's keys still alive now; keys with a TTL may have expired since."""
    persistent, expiries = snapshot
    now = redis_rdb.now_ms()
    expected_max = {db: persistent.get(db, 0) + sum(1 for when in expiries.get(db, ()) if when > now)
                    for db in set(persistent) | set(expiries)}
    expected_max = {db: count for db, count in sorted(expected_max.items(), key=lambda item: int(item[0])) if count}
    try:
        actual = redis_keys.server_info(target)["keys_per_db"]
    except RecoveryError as err:
        return check_result(REDIS_KEYS, False, expected_max, None, str(err))
    actual = {db: count for db, count in sorted(actual.items(), key=lambda item: int(item[0])) if count}
    problems = []
    for db in sorted(set(expected_max) | set(actual), key=int):
        low, high, count = persistent.get(db, 0), expected_max.get(db, 0), actual.get(db, 0)
        if not low <= count <= high:
            problems.append("db %s: %d key%s, expected %s" % (db, count, "" if count == 1 else "s",
                                                                high if low == high else "%d to %d" % (low, high)))
    detail = _named(problems) if problems else "%d keys in %d databases, as in the set (%d with a TTL)" % (
        sum(actual.values()), len(actual), sum(len(e) for e in expiries.values()))
    return check_result(REDIS_KEYS, not problems, expected_max, actual, detail)


def _config_check(dest, expected, archive, metadata):
    """The tree as recorded, or as a restore leaves it by default (without set-ID, sticky and world-write bits)."""
    try:
        restored = config_restore.restored_tree_digest(archive, metadata)
    except (RecoveryError, OSError):  # the archive is judged by verification; the recorded digest still serves
        restored = expected
    try:
        actual = config_tree.current_tree_digest(dest)
    except OSError as err:
        return check_result(CONFIG_CHECKSUMS, False, expected, None, "cannot read %s: %s" % (
            err.filename or dest, err.strerror or err))
    if actual is None:
        return check_result(CONFIG_CHECKSUMS, False, expected, None, "config_dir %s is not a directory" % dest)
    ok = actual in (expected, restored)
    return check_result(CONFIG_CHECKSUMS, ok, expected, actual, "tree %s %s" % (dest, "matches the set's" if ok else (
        "differs from the set's (files, modes or links changed, added or removed)")))


# ---------------------------------------------------------------- services and health


def _services_check(services):
    states = {name: status.get("state") or ("running" if status["running"] else "not running")
              for name, status in sorted(services.items())}
    down = ["%s: %s" % (name, states[name]) for name, status in sorted(services.items()) if not status["running"]]
    detail = "not running: %s" % _named(down) if down else "%d services running" % len(services)
    return check_result(SERVICES_UP, not down, "running", states, detail)


def _health_request(url):
    """The request for ``url``: credentials from its user info go into a Basic header that no redirect carries."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    request = urllib.request.Request(urllib.parse.urlunsplit(parts._replace(netloc=netloc, fragment="")))
    if parts.username is not None:
        credentials = "%s:%s" % (urllib.parse.unquote(parts.username), urllib.parse.unquote(parts.password or ""))
        request.add_unredirected_header(
            "Authorization", "Basic " + base64.b64encode(credentials.encode("utf-8")).decode("ascii"))
    return request


def _scrub(text, secrets):
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "********")
    return text


def _get(opener, request, secrets):
    """The status code of one GET, or the one-line error."""
    try:
        with opener.open(request, timeout=HEALTH_TRY_TIMEOUT) as response:
            return response.status
    except urllib.error.HTTPError as err:
        err.close()
        return err.code
    except urllib.error.URLError as err:
        reason = err.reason
    except (OSError, ValueError, http.client.HTTPException) as err:  # timeouts, resets, malformed answers
        reason = err
    text = " ".join(str(reason).split()) or type(reason).__name__
    return _scrub(text, secrets)


def _health_check(url, timeout):
    """GET until a 2xx answer or ``timeout`` seconds have passed, a try every second."""
    name, secrets = "health: %s" % redact_url(url), _url_secrets(url)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # the service as seen from this host
    request = _health_request(url)
    deadline = time.monotonic() + timeout
    tries = 0
    while True:
        tries += 1
        actual = _get(opener, request, secrets)
        ok = isinstance(actual, int) and 200 <= actual < 300
        left = deadline - time.monotonic()
        if ok or left <= 0:
            break
        time.sleep(min(HEALTH_RETRY_INTERVAL, left))
    what = "HTTP %d" % actual if isinstance(actual, int) else actual
    detail = what if ok else "%s (%d %s in %d s)" % (what, tries, "try" if tries == 1 else "tries", timeout)
    return check_result(name, ok, "HTTP 2xx", actual, detail)

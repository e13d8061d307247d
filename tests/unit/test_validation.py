"""Pure parts of the validation: the manifest's market_data shape, input checks, URL redaction, the failure message,
and christmas_validate's documentation against its argument spec."""

from __future__ import annotations

import pytest
from faults.manifest_samples import valid_manifest

from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.platform.validation import (
    check_health_urls,
    check_queries,
    check_services,
    redact_url,
    require_ok,
)
from ansible_collections.christmas.recovery.plugins.module_utils.sets.manifest import check_schema

PATH = "/backups/manifest_20261124_030000.json"
MARKET_DATA = {"table": "public.market_data", "rows": 5000, "time_column": "ts",
               "newest": "2026-11-01T01:23:20.000000Z"}


def _one_line(err):
    message = str(err.value)
    assert message and "\n" not in message
    return message


def _with_market_data(market):
    data = valid_manifest()
    data["db"]["market_data"] = market
    return data


# ---------------------------------------------------------------- manifest: db.market_data


@pytest.mark.parametrize("market", [
    MARKET_DATA,
    dict(MARKET_DATA, time_column=None, newest=None),
    dict(MARKET_DATA, rows=0, newest=None),
])
def test_check_schema_accepts_market_data_of_the_recorded_shape(market):
    assert check_schema(_with_market_data(market), PATH) is None


def test_check_schema_accepts_an_old_manifest_without_market_data():
    assert "market_data" not in valid_manifest()["db"]
    assert check_schema(valid_manifest(), PATH) is None


@pytest.mark.parametrize("market, problem", [
    ([], "db.market_data is not an object"),
    ({k: v for k, v in MARKET_DATA.items() if k != "table"}, "db.market_data.table is missing or not a table name"),
    (dict(MARKET_DATA, table=""), "db.market_data.table is missing or not a table name"),
    (dict(MARKET_DATA, rows="5000"), "db.market_data.rows is missing or not a row count"),
    (dict(MARKET_DATA, rows=-1), "db.market_data.rows is missing or not a row count"),
    (dict(MARKET_DATA, rows=True), "db.market_data.rows is missing or not a row count"),
    ({k: v for k, v in MARKET_DATA.items() if k != "newest"}, "db.market_data.newest is missing or neither"),
    (dict(MARKET_DATA, time_column=7), "db.market_data.time_column is missing or neither a string nor null"),
    (dict(MARKET_DATA, time_column=None), "db.market_data.newest is set but time_column is null"),
])
def test_check_schema_names_a_malformed_market_data_in_one_line(market, problem):
    with pytest.raises(RecoveryError) as err:
        check_schema(_with_market_data(market), PATH)
    message = _one_line(err)
    assert message.startswith("manifest %s is invalid: " % PATH) and problem in message


# ---------------------------------------------------------------- input


@pytest.mark.parametrize("queries, problem", [
    ("SELECT 1", "queries must be a list of {name, sql, expected or min}"),
    (["SELECT 1"], "queries[0] is not a mapping of name, sql and expected or min"),
    ([{"sql": "SELECT 1", "expected": 1}], "queries[0] has no name"),
    ([{"name": "a", "expected": 1}], "queries[0] (a) has no sql"),
    ([{"name": "a", "sql": "SELECT 1", "expected": 1, "min": 0}],
     "queries[0] (a): give exactly one of expected and min"),
    ([{"name": "a", "sql": "SELECT 1"}], "queries[0] (a): give exactly one of expected and min"),
    ([{"name": "a", "sql": "SELECT 1", "min": "many"}], "queries[0] (a): min 'many' is not a number"),
    ([{"name": "a", "sql": "SELECT 1", "min": True}], "queries[0] (a): min True is not a number"),
    ([{"name": "a", "sql": "SELECT 1", "expect": 1}],
     "queries[0] (a) has unknown keys expect (known: expected, min, name, sql)"),
    ([{"name": "a", "sql": "SELECT 1", "min": 1}, {"name": "a", "sql": "SELECT 2", "min": 1}],
     "queries[1] (a): the name is used twice"),
])
def test_check_queries_names_the_bad_query_in_one_line(queries, problem):
    with pytest.raises(RecoveryError) as err:
        check_queries(queries)
    assert _one_line(err) == problem


def test_check_queries_accepts_expected_or_min():
    queries = [{"name": "a", "sql": "SELECT 1", "expected": 1}, {"name": "b", "sql": "SELECT 2", "min": "1.5"}]
    assert check_queries(queries) == queries
    assert check_queries(None) == []


@pytest.mark.parametrize("services, problem", [
    (["api"], "services must map service names to {running, state}"),
    ({"api": "running"}, "services[api] must be a mapping with a boolean running"),
    ({"api": {"running": "yes"}}, "services[api] must be a mapping with a boolean running"),
    ({"api": {"running": True, "state": 3}}, "services[api].state must be a string"),
])
def test_check_services_names_the_bad_entry(services, problem):
    with pytest.raises(RecoveryError) as err:
        check_services(services)
    assert _one_line(err) == problem


@pytest.mark.parametrize("url, shown", [
    ("http://user:pw@example.test:8080/health?token=abc#frag", "http://example.test:8080/health"),
    ("https://example.test/health", "https://example.test/health"),
    ("http://a:b@[::1]:81/x?y=z", "http://[::1]:81/x"),
    ("http://tok@host", "http://host"),
])
def test_redact_url_drops_user_info_query_and_fragment(url, shown):
    assert redact_url(url) == shown


@pytest.mark.parametrize("url", ["ftp://user:secret@host/x", "http:///path?token=secret", "not a url",
                                 "http://host:port/?token=secret"])
def test_check_health_urls_refuses_without_showing_secrets(url):
    with pytest.raises(RecoveryError) as err:
        check_health_urls([url])
    message = _one_line(err)
    assert message.startswith("health_urls[0] ") and "secret" not in message


def test_require_ok_names_every_failed_check_in_one_line():
    checks = [{"name": "db: row counts", "ok": True, "expected": {}, "actual": {}, "detail": "3 tables"},
              {"name": "config: checksums", "ok": False, "expected": "a", "actual": "b", "detail": "tree differs"},
              {"name": "health: http://h/x", "ok": False, "expected": "HTTP 2xx", "actual": 500, "detail": "HTTP 500"}]
    report = {"ok": False, "checks": checks, "failed": ["config: checksums", "health: http://h/x"], "set_id": "s",
              "manifest": "m"}
    with pytest.raises(RecoveryError) as err:
        require_ok(report)
    assert _one_line(err) == "validation failed: config: checksums: tree differs; health: http://h/x: HTTP 500"
    assert err.value.details == {"ok": False, "checks": checks, "failed_checks": report["failed"], "set_id": "s",
                                 "manifest": "m"}

"""Pure functions of the incident database: record normalization, date bounds, Markdown rendering, and the two
modules' documentation against their argument specs."""

from __future__ import annotations

import datetime

import pytest

from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.platform import incident_records, incidents

NOW = datetime.datetime(2026, 11, 26, 3, 4, 5, tzinfo=datetime.UTC)


def _normalize(**record):
    return incident_records.normalize_record(dict({"procedure": "db", "status": "recovered"}, **record), now=NOW)


def test_normalized_record_has_every_field_with_utc_times_and_defaults():
    record = _normalize(started_at="2026-11-26T03:00:00+01:00", operator="alice", error="")
    assert list(record) == list(incident_records.RECORD_FIELDS)
    assert record["started_at"] == "2026-11-26T02:00:00Z"
    assert record["finished_at"] == "2026-11-26T03:04:05Z"  # now
    assert record["duration_seconds"] == 3845.0  # finished - started
    assert (record["operator"], record["error"], record["commands"], record["verification"]) == ("alice", None, [], [])
    assert _normalize(started_at="2026-11-26 02:00:00")["started_at"] == "2026-11-26T02:00:00Z"  # naive is UTC
    assert _normalize(duration_seconds="12.3456")["duration_seconds"] == 12.346
    assert _normalize()["duration_seconds"] is None


def test_verification_checks_are_normalized_and_checked():
    checks = _normalize(verification=[{"name": "db: row counts", "ok": "yes", "expected": {"orders": 700}}])
    assert checks["verification"] == [{"name": "db: row counts", "ok": True, "expected": {"orders": 700},
                                       "actual": None, "detail": None}]


@pytest.mark.parametrize(("record", "message"), [
    ({"procedure": "db", "status": "x", "secret": 1}, "record: unknown key 'secret' (known: procedure, status,"),
    ({"procedure": "db"}, "record: status is required"),
    ({"procedure": "db", "status": ""}, "record: status is required"),
    ({"procedure": "db", "status": "x", "commands": "ls"}, "record: commands must be a list of strings, got str"),
    ({"procedure": "db", "status": "x", "components": ["db", 3]}, "record: components[1] must be a string, got int"),
    ({"procedure": "db", "status": "x", "operator": ["a"]}, "record: operator must be a string, got list"),
    ({"procedure": "db", "status": "x", "finished_at": "2026-13-01"}, "record: finished_at: '2026-13-01' is not an"),
    ({"procedure": "db", "status": "x", "started_at": "2026-11-26T04:00:00Z", "finished_at": "2026-11-26T03:00:00Z"},
     "record: finished_at 2026-11-26T03:00:00Z is before started_at 2026-11-26T04:00:00Z"),
    ({"procedure": "db", "status": "x", "duration_seconds": -1}, "record: duration_seconds must be a number >= 0"),
    ({"procedure": "db", "status": "x", "duration_seconds": True}, "record: duration_seconds must be a number"),
    ({"procedure": "db", "status": "x", "verification": [{"name": "a", "ok": True, "why": 1}]},
     "record: verification[0]: unknown key 'why'"),
    ({"procedure": "db", "status": "x", "verification": [{"ok": True}]}, "record: verification[0]: name is required"),
    ({"procedure": "db", "status": "x", "verification": [{"name": "a", "ok": "maybe"}]},
     "record: verification[0] (a): ok must be true or false, got 'maybe'"),
    ({"procedure": "db", "status": "x", "measurements": [1]}, "record: measurements must be a dict of numbers, got"),
    ({"procedure": "db", "status": "x", "measurements": {"rto_seconds": float("nan")}},
     "record: measurements[rto_seconds] must be a finite number, got nan"),
    ({"procedure": "db", "status": "x", "measurements": {"rto_seconds": "inf"}},
     "record: measurements[rto_seconds] must be a finite number, got 'inf'"),
    ({"procedure": "db", "status": "x", "measurements": {"rto_seconds": True}},
     "record: measurements[rto_seconds] must be a finite number, got True"),
    ({"procedure": "db", "status": "x", "measurements": {"rto_seconds": "fast"}},
     "record: measurements[rto_seconds] must be a finite number, got 'fast'"),
    ({"procedure": "db", "status": "x", "measurements": {"": 1}}, "record: measurements: '' is not a name"),
    ("db", "record must be a dict, got str"),
])
def test_bad_records_fail_in_one_line_naming_the_problem(record, message):
    with pytest.raises(RecoveryError) as caught:
        incident_records.normalize_record(record, now=NOW)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_measurements_are_finite_numbers_by_name_and_default_to_empty():
    assert _normalize()["measurements"] == {}
    record = _normalize(measurements={"rto_seconds": 41.25, "target_rto_seconds": 300, "rpo_seconds": "0",
                                      "detection_seconds": "2.5"})
    assert record["measurements"] == {"detection_seconds": 2.5, "rpo_seconds": 0, "rto_seconds": 41.25,
                                      "target_rto_seconds": 300}
    assert list(record)[-1] == "measurements"


def test_markdown_shows_the_measurements_as_a_table():
    lines = incident_records.render_markdown(_normalize(measurements={"rto_seconds": 312.5, "sets": 3}), 7).splitlines()
    assert "| measurement | value |" in lines
    assert "| rto_seconds | 5 min 12 s (312.5 s) |" in lines and "| sets | 3 |" in lines
    assert "Measurements:" not in incident_records.render_markdown(_normalize(), 8)


@pytest.mark.parametrize(("pattern", "like"), [
    ("drill_*", "drill\\_%"), ("rehearsal*", "rehearsal%"), ("db", "db"), ("50%\\x", "50\\%\\\\x"),
])
def test_procedure_patterns_become_escaped_like_patterns(pattern, like):
    assert incidents.procedure_pattern(pattern) == like


def test_a_date_until_includes_that_whole_day_and_a_time_until_is_inclusive():
    lower, upper, inclusive = incident_records.time_bounds("2026-11-01", "2026-11-30")
    assert (lower.isoformat(), upper.isoformat(), inclusive) == (
        "2026-11-01T00:00:00+00:00", "2026-12-01T00:00:00+00:00", False)
    _lower, upper, inclusive = incident_records.time_bounds(None, "2026-11-30T12:00:00+01:00")
    assert (upper.isoformat(), inclusive) == ("2026-11-30T11:00:00+00:00", True)
    assert incident_records.time_bounds("2026-11-30", "2026-11-30")[2] is False  # one day is a valid range


@pytest.mark.parametrize(("since", "until", "message"), [
    ("26.11.2026", None, "since: '26.11.2026' is not an ISO 8601 date or date-time"),
    (None, "tomorrow", "until: 'tomorrow' is not an ISO 8601 date or date-time"),
    ("2026-12-01", "2026-11-30", "since 2026-12-01 is after until 2026-11-30"),
])
def test_bad_dates_fail_in_one_line(since, until, message):
    with pytest.raises(RecoveryError, match="^" + message):
        incident_records.time_bounds(since, until)


def test_markdown_keeps_values_in_their_place():
    record = _normalize(commands=["echo ```", "psql -c 'select 1'"], incident_symptoms="<b>x</b>\n# y",
                        verification=[{"name": "a|b", "ok": False, "expected": "1\n2", "actual": None}])
    lines = incident_records.render_markdown(record, 7).splitlines()
    assert lines[0] == "# Incident 7: db restore recovered"
    assert lines.index("````text") < lines.index("echo ```") < lines.index("````")
    assert "- Symptoms: &lt;b&gt;x&lt;/b&gt;" in lines and "  # y" in lines and "# y" not in lines
    assert "| a\\|b | **NO** | 1<br>2 |  |" in lines
    assert lines[-1] == "- none recorded"  # no follow-up given


def test_markdown_titles_a_rehearsal_as_such():
    record = _normalize(procedure="rehearsal", status="passed")
    assert incident_records.render_markdown(record, 8).splitlines()[0] == "# Incident 8: restore rehearsal passed"


def test_markdown_name_uses_the_start_or_else_the_finish():
    assert (incident_records.markdown_name(_normalize(started_at="2026-11-20T01:02:03Z"), 4)
            == "incident_20261120_010203_4.md")
    assert incident_records.markdown_name(_normalize(), 12) == "incident_20261126_030405_12.md"


def test_summary_line_is_one_line_with_long_symptoms_shortened():
    record = dict(_normalize(incident_symptoms="x\n" * 200, duration_seconds=2), id=1, markdown="/r.md")
    line = incidents.summary_line(record)
    assert "\n" not in line and line.endswith("...  /r.md") and "  2s  " in line


@pytest.mark.parametrize(("options", "message"), [
    ({"backend": "mysql"}, "backend must be sqlite or postgresql, got 'mysql'"),
    ({"backend": "postgresql"}, "pg_dbname is required with backend postgresql"),
    ({"backend": "postgresql", "pg_dbname": "ops", "pg_table": "a.b.c"}, "pg_table must be a table name or"),
    ({"backend": "postgresql", "pg_dbname": "ops", "pg_table": "x" * 64}, "pg_table must be a table name or"),
])
def test_bad_store_options_fail_in_one_line(options, message):
    with pytest.raises(RecoveryError, match="^" + message):
        incidents.open_store(**options)


def test_postgresql_needs_a_markdown_dir_and_limit_must_be_positive():
    store = incidents.open_store("postgresql", pg_dbname="ops")
    with pytest.raises(RecoveryError, match="^markdown_dir is required with backend postgresql$"):
        incidents.plan_incident(store, {"procedure": "db", "status": "failed"})
    with pytest.raises(RecoveryError, match="^limit must be a whole number >= 1, got 0$"):
        incidents.find_incidents(store, limit=0)

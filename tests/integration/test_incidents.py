"""The incident database: christmas_incident writes a row and a Markdown report, christmas_incident_info and
playbooks/incidents.yml find them again. Real SQLite files and a real PostgreSQL cluster; every assertion reads the
database or the file system directly."""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import stat
import subprocess
import sys
import textwrap

import pytest
from conftest import ROOT, assert_no_warnings, connection_vars

MODULES = "ansible_collections.christmas.recovery.plugins.modules."

FAILED_DB = {
    "procedure": "db", "status": "failed", "started_at": "2026-11-20T03:00:00Z", "finished_at": "2026-11-20T03:04:00Z",
    "operator": "alice", "host": "trade1", "incident_type": "database_corruption",
    "incident_symptoms": "orders table returns I/O errors", "incident_impact": "trading halted",
    "backup_set": "20261120_020000", "components": ["db"],
    "commands": ["ansible-playbook playbooks/restore_db.yml -e manifest=latest"],
    "verification": [{"name": "db: row counts", "ok": False, "expected": 700, "actual": 0, "detail": "orders"}],
    "error": "pg_restore failed (exit 1): out of disk | retry", "remaining_problems": "disk nearly full",
}
RECOVERED_DB = {
    "procedure": "db", "status": "recovered", "started_at": "2026-11-21T10:00:00+01:00", "duration_seconds": 312.5,
    "incident_type": "Database_Corruption", "incident_symptoms": "orders table returns I/O errors again",
    "commands": ["df -h /var/lib/postgresql", "ansible-playbook playbooks/restore_db.yml -e manifest=latest"],
    "followup_prevention": "alert at 80 % disk", "followup_monitoring": "disk usage panel",
}
REDIS_RESTART = {
    "procedure": "redis", "status": "healed_by_restart", "started_at": "2026-11-25T23:59:59Z",
    "incident_type": "redis_down", "incident_symptoms": "quotes stale", "components": ["redis"],
}


def run_module(tmp_dir, name, args, check=False, expect_ok=True):
    """Run a module the way Ansible does on the host (arguments in a file, not argv); return its JSON result."""
    args_path = os.path.join(tmp_dir, "args-%s.json" % secrets.token_hex(4))
    with open(args_path, "w", encoding="utf-8") as handle:
        json.dump({"ANSIBLE_MODULE_ARGS": dict(args, _ansible_check_mode=check)}, handle)
    proc = subprocess.run([sys.executable, "-m", MODULES + name, args_path], capture_output=True, text=True,
                          check=False, cwd=tmp_dir,
                          env=dict(os.environ, PYTHONPATH=os.path.join(ROOT, ".collections")))
    os.unlink(args_path)
    result = json.loads(proc.stdout)
    assert bool(result.get("failed")) != expect_ok, result
    return result


def sqlite_rows(path, query="SELECT * FROM christmas_incidents ORDER BY id"):
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in conn.execute(query)]
    finally:
        conn.close()


def mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def record(tmp_dir, db, data, **options):
    return run_module(tmp_dir, "christmas_incident", dict({"db": db, "record": data}, **options))


def printed_lines(stdout):
    """The strings of the one debug message the playbook prints."""
    lines = stdout.splitlines()
    start = lines.index('    "msg": [')
    end = lines.index("    ]", start)
    return [json.loads(line.strip().rstrip(",")) for line in lines[start + 1:end]]


# ---------------------------------------------------------------- SQLite


def test_check_mode_writes_nothing_then_the_record_becomes_a_row_and_a_private_report(tmp_dir):
    db = os.path.join(tmp_dir, "state", "incidents.sqlite")

    planned = run_module(tmp_dir, "christmas_incident", {"db": db, "record": FAILED_DB}, check=True)
    assert planned["changed"] is True and planned["id"] is None and planned["markdown"] is None
    assert planned["record"]["error"] == FAILED_DB["error"]
    assert not os.path.exists(os.path.dirname(db))

    result = record(tmp_dir, db, FAILED_DB)
    assert result["changed"] is True
    rows = sqlite_rows(db)
    assert len(rows) == 1
    row = rows[0]
    assert row["id"] == result["id"]
    assert (row["procedure"], row["status"], row["operator"], row["host"]) == ("db", "failed", "alice", "trade1")
    assert (row["started_at"], row["finished_at"], row["duration_seconds"]) == (
        "2026-11-20T03:00:00Z", "2026-11-20T03:04:00Z", 240.0)
    assert row["error"] == FAILED_DB["error"]
    assert json.loads(row["commands"]) == FAILED_DB["commands"]
    assert json.loads(row["components"]) == ["db"]
    assert json.loads(row["verification"]) == FAILED_DB["verification"]
    assert row["markdown"] == os.path.join(os.path.dirname(db), "incident_20261120_030000_%d.md" % row["id"])

    assert (mode(os.path.dirname(db)), mode(db), mode(row["markdown"])) == (0o700, 0o600, 0o600)
    assert sorted(os.listdir(os.path.dirname(db))) == sorted(["incidents.sqlite", os.path.basename(row["markdown"])])
    with open(row["markdown"], encoding="utf-8") as handle:
        report = handle.read()
    headings = [line for line in report.splitlines() if line.startswith("#")]
    assert headings == ["# Incident %d: db restore failed" % row["id"], "## When/who", "## Failure",
                        "## What was done", "## Result", "## Follow-up"]
    for expected in ("- Operator: alice", "- Symptoms: orders table returns I/O errors",
                     "- Backup used: 20261120_020000", "- Time taken: 4 min 00 s (240.0 s)",
                     "ansible-playbook playbooks/restore_db.yml -e manifest=latest",
                     "- Error: pg_restore failed (exit 1): out of disk | retry",
                     "| check | ok | expected | actual |", "| db: row counts | **NO** | 700 | 0 |",
                     "- Remaining problems: disk nearly full"):
        assert expected in report.splitlines(), expected


def test_table_cells_escape_pipes_and_newlines(tmp_dir):
    db = os.path.join(tmp_dir, "incidents.sqlite")
    check = {"name": "query: a|b", "ok": True, "expected": "x\ny", "actual": {"k": "v|w"}}
    result = record(tmp_dir, db, {"procedure": "db", "status": "recovered", "verification": [check],
                                  "incident_symptoms": "line one\n## not a heading"})
    with open(result["markdown"], encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    assert '| query: a\\|b | yes | x<br>y | {"k": "v\\|w"} |' in lines
    assert "## not a heading" not in lines and "  ## not a heading" in lines


def test_unknown_record_key_fails_in_one_line_and_writes_nothing(tmp_dir):
    db = os.path.join(tmp_dir, "state", "incidents.sqlite")
    result = run_module(tmp_dir, "christmas_incident", {"db": db, "record": dict(FAILED_DB, passwd="x")},
                        expect_ok=False)
    assert "unknown key 'passwd'" in result["msg"] and "\n" not in result["msg"]
    assert not os.path.exists(os.path.dirname(db))
    missing = run_module(tmp_dir, "christmas_incident", {"db": db, "record": {"procedure": "db"}}, expect_ok=False)
    assert missing["msg"] == "record: status is required"
    bad_time = run_module(tmp_dir, "christmas_incident",
                          {"db": db, "record": dict(FAILED_DB, started_at="yesterday")}, expect_ok=False)
    assert "started_at" in bad_time["msg"] and "'yesterday'" in bad_time["msg"]
    assert not os.path.exists(os.path.dirname(db))


def test_unwritable_markdown_dir_fails_in_one_line_and_leaves_no_row(tmp_dir):
    db = os.path.join(tmp_dir, "incidents.sqlite")
    blocker = os.path.join(tmp_dir, "not-a-dir")
    with open(blocker, "w", encoding="utf-8") as handle:
        handle.write("x")
    result = run_module(tmp_dir, "christmas_incident", {"db": db, "record": FAILED_DB, "markdown_dir": blocker},
                        expect_ok=False)
    assert "\n" not in result["msg"] and blocker in result["msg"]
    assert sqlite_rows(db) == []


def test_searches_by_type_text_dates_and_status_newest_first(tmp_dir):
    db = os.path.join(tmp_dir, "incidents.sqlite")
    ids = {name: record(tmp_dir, db, data)["id"]
           for name, data in (("failed", FAILED_DB), ("recovered", RECOVERED_DB), ("redis", REDIS_RESTART))}
    assert len(sqlite_rows(db)) == 3

    def found(**filters):
        result = run_module(tmp_dir, "christmas_incident_info", dict({"db": db}, **filters), check=True)
        assert result["changed"] is False and result["count"] == len(result["incidents"])
        return [incident["id"] for incident in result["incidents"]]

    assert found() == [ids["redis"], ids["recovered"], ids["failed"]]
    assert found(incident_type="database_corruption") == [ids["recovered"], ids["failed"]]
    assert found(text="OUT OF DISK") == [ids["failed"]]  # the error
    assert found(text="df -h") == [ids["recovered"]]  # a command
    assert found(text="80 %") == [ids["recovered"]]  # a follow-up
    assert found(text="no such words") == []
    assert found(since="2026-11-21", until="2026-11-21") == [ids["recovered"]]  # 09:00Z, that whole day
    assert found(until="2026-11-25T23:59:58Z") == [ids["recovered"], ids["failed"]]
    assert found(since="2026-11-21T09:00:01+00:00") == [ids["redis"]]
    assert found(status="healed_by_restart") == [ids["redis"]]
    assert found(status="failed", incident_type="redis_down") == []
    assert found(limit=2) == [ids["redis"], ids["recovered"]]

    listed = run_module(tmp_dir, "christmas_incident_info", {"db": db, "status": "recovered"})
    incident = listed["incidents"][0]
    assert incident["markdown"] == sqlite_rows(db)[ids["recovered"] - 1]["markdown"]
    assert (incident["started_at"], incident["duration_seconds"]) == ("2026-11-21T09:00:00Z", 312.5)
    assert listed["lines"] == ["2026-11-21 09:00:00Z  Database_Corruption  recovered  312.5s  orders table returns "
                               "I/O errors again  %s" % incident["markdown"]]

    bad = run_module(tmp_dir, "christmas_incident_info", {"db": db, "since": "2026-02-30"}, expect_ok=False)
    assert bad["msg"].startswith("since: '2026-02-30' is not an ISO 8601 date") and "\n" not in bad["msg"]


def test_missing_sqlite_file_is_an_empty_list_and_stays_missing(tmp_dir):
    db = os.path.join(tmp_dir, "nowhere", "incidents.sqlite")
    result = run_module(tmp_dir, "christmas_incident_info", {"db": db, "text": "anything"})
    assert (result["incidents"], result["count"], result["changed"]) == ([], 0, False)
    assert not os.path.exists(os.path.dirname(db))


def test_two_writers_at_once_both_get_their_rows(tmp_dir):
    db = os.path.join(tmp_dir, "incidents.sqlite")
    script = textwrap.dedent("""
        import sys
        from ansible_collections.christmas.recovery.plugins.module_utils.platform.incidents import (
            SqliteStore, record_incident)
        for n in range(25):
            record_incident(SqliteStore(sys.argv[1]), {"procedure": "db", "status": "recovered",
                                                       "operator": sys.argv[2], "incident_symptoms": str(n)})
    """)
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, ".collections"))
    writers = [subprocess.Popen([sys.executable, "-c", script, db, name], env=env, stderr=subprocess.PIPE, text=True)
               for name in ("alice", "bob")]
    errors = [writer.communicate()[1] for writer in writers]
    assert [writer.returncode for writer in writers] == [0, 0], errors
    rows = sqlite_rows(db)
    assert sorted((row["operator"], int(row["incident_symptoms"])) for row in rows) == sorted(
        (name, n) for name in ("alice", "bob") for n in range(25))
    assert len({row["markdown"] for row in rows}) == 50
    assert all(os.path.isfile(row["markdown"]) for row in rows)


def test_incidents_playbook_prints_one_line_per_incident(run_playbook, tmp_dir):
    db = os.path.join(tmp_dir, "incidents.sqlite")
    first, second = record(tmp_dir, db, FAILED_DB), record(tmp_dir, db, RECOVERED_DB)
    record(tmp_dir, db, REDIS_RESTART)

    result = run_playbook("incidents", {"christmas_incident_db": db},
                          {"type": "database_corruption", "since": "2026-11-01", "limit": 5})
    assert (result.changed, result.failed) == (0, 0)
    assert printed_lines(result.stdout) == [
        "2026-11-21 09:00:00Z  Database_Corruption  recovered  312.5s  orders table returns I/O errors again  "
        + second["markdown"],
        "2026-11-20 03:00:00Z  database_corruption  failed  240s  orders table returns I/O errors  "
        + first["markdown"]]

    drill = record(tmp_dir, db, DRILL)
    drills = run_playbook("incidents", {"christmas_incident_db": db}, {"procedure": "DRILL_*"})
    assert printed_lines(drills.stdout) == ["2026-11-24 10:00:00Z  drill  passed  41.5s  -  " + drill["markdown"]]

    nothing = run_playbook("incidents", {"christmas_incident_db": os.path.join(tmp_dir, "none.sqlite")},
                           {"text": "x"})
    assert printed_lines(nothing.stdout) == ["no incident matches"]
    assert not os.path.exists(os.path.join(tmp_dir, "none.sqlite"))


# ---------------------------------------------------------------- PostgreSQL


@pytest.fixture
def incident_pg(make_cluster):
    """A cluster with an ``operations`` database owned by a password login ``recorder``."""
    cluster = make_cluster()
    password = "pw-" + secrets.token_urlsafe(16)
    cluster.sql("CREATE ROLE recorder LOGIN PASSWORD '%s'" % password)
    cluster.sql("CREATE DATABASE operations OWNER recorder")
    return cluster, password


def _pg_options(cluster, password, **extra):
    return dict({"backend": "postgresql", "pg_host": "127.0.0.1", "pg_port": cluster.port,
                 "pg_dbname": "operations", "pg_user": "recorder", "pg_password": password}, **extra)


def _table_exists(cluster, name):
    return cluster.sql("SELECT to_regclass('%s') IS NOT NULL" % name, dbname="operations")[0][0]


def test_postgresql_check_mode_creates_nothing_then_rows_are_searchable(incident_pg, tmp_dir):
    cluster, password = incident_pg
    reports = os.path.join(tmp_dir, "reports")
    options = _pg_options(cluster, password, pg_table="ops.Incidents")
    cluster.sql("CREATE SCHEMA ops AUTHORIZATION recorder", dbname="operations")

    empty = run_module(tmp_dir, "christmas_incident_info", options, check=True)
    assert empty["incidents"] == []
    planned = run_module(tmp_dir, "christmas_incident", dict(options, markdown_dir=reports, record=FAILED_DB),
                         check=True)
    assert planned["id"] is None and planned["markdown"] is None
    assert not _table_exists(cluster, 'ops."Incidents"') and not os.path.exists(reports)

    first = run_module(tmp_dir, "christmas_incident", dict(options, markdown_dir=reports, record=FAILED_DB))
    second = run_module(tmp_dir, "christmas_incident", dict(options, markdown_dir=reports, record=RECOVERED_DB))
    rows = cluster.sql('SELECT id, status, started_at AT TIME ZONE \'UTC\', duration_seconds, '
                       'jsonb_typeof(commands), verification -> 0 ->> \'expected\', markdown '
                       'FROM ops."Incidents" ORDER BY id', dbname="operations")
    assert [row[:2] for row in rows] == [(first["id"], "failed"), (second["id"], "recovered")]
    assert [str(row[2]) for row in rows] == ["2026-11-20 03:00:00", "2026-11-21 09:00:00"]
    assert [row[3] for row in rows] == [240.0, 312.5]
    assert rows[0][4:] == ("array", "700", first["markdown"])
    assert os.path.dirname(first["markdown"]) == reports and mode(reports) == 0o700
    assert mode(first["markdown"]) == mode(second["markdown"]) == 0o600

    def found(**filters):
        result = run_module(tmp_dir, "christmas_incident_info", dict(options, **filters))
        return [incident["id"] for incident in result["incidents"]]

    assert found() == [second["id"], first["id"]]
    assert found(incident_type="DATABASE_CORRUPTION", limit=1) == [second["id"]]
    assert found(text="Out Of Disk") == [first["id"]]
    assert found(text="df -h") == [second["id"]]
    assert found(since="2026-11-21", until="2026-11-21") == [second["id"]]
    assert found(until="2026-11-20T03:00:00Z") == [first["id"]]
    assert found(status="failed") == [first["id"]]
    assert found(status="planned") == []


def test_postgresql_password_stays_out_of_output_argv_and_records(incident_pg, tmp_dir):
    cluster, password = incident_pg
    reports = os.path.join(tmp_dir, "reports")
    argv_log = os.path.join(tmp_dir, "argv.log")
    shim = os.path.join(tmp_dir, "python-shim")
    with open(shim, "w", encoding="utf-8") as handle:
        handle.write('#!/bin/sh\nprintf "%%s\\n" "$0" "$@" >> %s\ncat /proc/$PPID/cmdline >> %s\nexec %s "$@"\n'
                     % (argv_log, argv_log, sys.executable))
    os.chmod(shim, 0o700)
    playbook = os.path.join(tmp_dir, "record.yml")
    with open(playbook, "w", encoding="utf-8") as handle:
        json.dump([{"hosts": "christmas", "gather_facts": False, "tasks": [
            {"name": "Record", "christmas.recovery.christmas_incident": dict(
                _pg_options(cluster, "{{ pw }}"), markdown_dir=reports, record=dict(FAILED_DB, operator="{{ who }}"))},
            {"name": "List", "christmas.recovery.christmas_incident_info": dict(
                _pg_options(cluster, "{{ pw }}"), status="failed"), "register": "found"},
            {"name": "Show", "ansible.builtin.debug": {"var": "found"}},
            {"name": "Bad password", "christmas.recovery.christmas_incident_info": dict(
                _pg_options(cluster, "{{ pw }}-wrong")), "ignore_errors": True}]}], handle)
    inventory = os.path.join(tmp_dir, "inventory.json")
    with open(inventory, "w", encoding="utf-8") as handle:
        json.dump({"christmas": {"hosts": {"platform": {
            "ansible_connection": "local", "ansible_python_interpreter": shim, "pw": password, "who": "bob"}}}}, handle)
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-vvv", "-i", inventory,
                           playbook], capture_output=True, text=True, cwd=ROOT, check=False,
                          env=dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_NOCOLOR="1"))
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert_no_warnings(output)
    assert "ok=4" in output and "ignored=1" in output
    assert "password authentication failed" in output

    rows = cluster.sql("SELECT operator, markdown, row_to_json(t)::text FROM christmas_incidents t",
                       dbname="operations")
    assert [row[0] for row in rows] == ["bob"]
    with open(rows[0][1], encoding="utf-8") as handle:
        report = handle.read()
    with open(argv_log, encoding="utf-8") as handle:
        argv = handle.read()
    assert argv.count(shim) >= 3  # every module went through the shim
    for text in (output, argv, report, rows[0][2]):
        assert password not in text


def test_a_restore_play_records_into_postgresql_and_incidents_finds_it(incident_pg, run_playbook, config_dir,
                                                                       tmp_dir):
    """The role's own record and search with the postgresql backend: Markdown beside christmas_incident_db's
    directory, the row in the chosen table, the password nowhere in the output."""
    cluster, password = incident_pg
    host_vars = dict(connection_vars(config=config_dir, backup_dir=os.path.join(tmp_dir, "backups")),
                     christmas_incident_backend="postgresql", christmas_incident_pg_host="127.0.0.1",
                     christmas_incident_pg_port=cluster.port, christmas_incident_pg_dbname="operations",
                     christmas_incident_pg_user="recorder", christmas_incident_pg_password=password,
                     christmas_incident_db=os.path.join(tmp_dir, "records", "unused.sqlite"))
    run_playbook("backup", host_vars, {"skip_db": True, "skip_redis": True})
    with open(os.path.join(config_dir, "app.yml"), "w", encoding="utf-8") as handle:
        handle.write("damaged\n")

    restore = run_playbook("restore_config", host_vars, {"incident_type": "configuration",
                                                         "incident_symptoms": "api reads a damaged app.yml"})
    found = run_playbook("incidents", host_vars, {"type": "configuration"})

    (status, symptoms, markdown), = cluster.sql(
        "SELECT status, incident_symptoms, markdown FROM christmas_incidents", dbname="operations")
    assert (status, symptoms) == ("recovered", "api reads a damaged app.yml")
    assert os.path.dirname(markdown) == os.path.join(tmp_dir, "records") and os.path.isfile(markdown)
    assert not os.path.exists(os.path.join(tmp_dir, "records", "unused.sqlite"))
    assert markdown in found.stdout and "api reads a damaged app.yml" in found.stdout
    assert password not in restore.output + found.output


# ---------------------------------------------------------------- measurements, procedures, older tables

DRILL = {
    "procedure": "drill_db_stop", "status": "passed", "started_at": "2026-11-24T10:00:00Z", "incident_type": "drill",
    "duration_seconds": 41.5,
    "measurements": {"detection_seconds": 2.4, "rto_seconds": 41.5, "rpo_seconds": 0, "target_rto_seconds": 300},
}
REHEARSAL = {"procedure": "Rehearsal_full", "status": "passed", "started_at": "2026-11-23T10:00:00Z",
             "measurements": {"rto_seconds": "95.5"}}
# The table as the first release created it, before measurements existed.
OLD_SQLITE_TABLE = """CREATE TABLE christmas_incidents (id INTEGER PRIMARY KEY AUTOINCREMENT,
    "procedure" TEXT NOT NULL, "status" TEXT NOT NULL, "started_at" TEXT, "finished_at" TEXT NOT NULL,
    "duration_seconds" REAL, "operator" TEXT, "host" TEXT, "incident_type" TEXT, "incident_symptoms" TEXT,
    "incident_impact" TEXT, "backup_set" TEXT, "backup_manifest" TEXT, "error" TEXT, "remaining_problems" TEXT,
    "followup_prevention" TEXT, "followup_monitoring" TEXT, "followup_config_changes" TEXT,
    "components" TEXT NOT NULL DEFAULT '[]', "commands" TEXT NOT NULL DEFAULT '[]',
    "verification" TEXT NOT NULL DEFAULT '[]', "markdown" TEXT)"""
OLD_ROW = ("INSERT INTO christmas_incidents (procedure, status, started_at, finished_at, commands) VALUES "
           "('db', 'recovered', '2026-11-01T03:00:00Z', '2026-11-01T03:05:00Z', '[\"restore_db.yml\"]')")


def test_measurements_are_stored_read_back_rendered_and_found_by_procedure(tmp_dir):
    db = os.path.join(tmp_dir, "incidents.sqlite")
    drill, rehearsal, restore = (record(tmp_dir, db, data) for data in (DRILL, REHEARSAL, RECOVERED_DB))

    stored = {row["id"]: json.loads(row["measurements"]) for row in sqlite_rows(db)}
    assert stored == {drill["id"]: DRILL["measurements"], rehearsal["id"]: {"rto_seconds": 95.5},
                      restore["id"]: {}}
    with open(drill["markdown"], encoding="utf-8") as handle:
        report = handle.read().splitlines()
    assert "| rto_seconds | 41.5 s |" in report and "| target_rto_seconds | 5 min 00 s (300 s) |" in report

    def found(**filters):
        result = run_module(tmp_dir, "christmas_incident_info", dict({"db": db}, **filters))
        return [(incident["id"], incident["measurements"]) for incident in result["incidents"]]

    assert found(procedure=["drill_*", "rehearsal*"]) == [(drill["id"], DRILL["measurements"]),
                                                         (rehearsal["id"], {"rto_seconds": 95.5})]
    assert found(procedure=["drill_db_stop"]) == [(drill["id"], DRILL["measurements"])]
    assert found(procedure=["drill"]) == []  # whole value
    assert found(procedure=["drill?db_stop"]) == []  # only * is a wildcard, _ is itself
    assert found(procedure=["db"], text="df -h") == [(restore["id"], {})]


def test_an_older_sqlite_table_stays_readable_and_gains_the_column_on_the_next_record(tmp_dir):
    db = os.path.join(tmp_dir, "incidents.sqlite")
    conn = sqlite3.connect(db)
    with conn:
        conn.execute(OLD_SQLITE_TABLE)
        conn.execute(OLD_ROW)
    conn.close()

    before = run_module(tmp_dir, "christmas_incident_info", {"db": db})["incidents"]
    assert [(i["procedure"], i["commands"], i["measurements"]) for i in before] == [("db", ["restore_db.yml"], {})]
    assert "measurements" not in sqlite_rows(db)[0]  # reading changes nothing

    new = record(tmp_dir, db, DRILL)
    rows = sqlite_rows(db)
    assert [json.loads(row["measurements"]) for row in rows] == [{}, DRILL["measurements"]]
    after = run_module(tmp_dir, "christmas_incident_info", {"db": db})["incidents"]
    assert [(i["id"], i["measurements"]) for i in after] == [(new["id"], DRILL["measurements"]), (1, {})]


def test_an_older_postgresql_table_stays_readable_and_gains_the_column_on_the_next_record(incident_pg, tmp_dir):
    cluster, password = incident_pg
    options = _pg_options(cluster, password)
    first = run_module(tmp_dir, "christmas_incident", dict(options, markdown_dir=tmp_dir, record=FAILED_DB))
    cluster.sql("ALTER TABLE christmas_incidents DROP COLUMN measurements", dbname="operations")  # as made before

    before = run_module(tmp_dir, "christmas_incident_info", options)["incidents"]
    assert [(i["id"], i["error"], i["measurements"]) for i in before] == [(first["id"], FAILED_DB["error"], {})]

    drill = run_module(tmp_dir, "christmas_incident", dict(options, markdown_dir=tmp_dir, record=DRILL))
    rows = cluster.sql("SELECT id, jsonb_typeof(measurements), measurements::text FROM christmas_incidents "
                       "ORDER BY id", dbname="operations")
    assert [row[:2] for row in rows] == [(first["id"], "object"), (drill["id"], "object")]
    assert json.loads(rows[1][2]) == DRILL["measurements"] and json.loads(rows[0][2]) == {}
    found = run_module(tmp_dir, "christmas_incident_info", dict(options, procedure=["DRILL_*"]))["incidents"]
    assert [(i["id"], i["measurements"]) for i in found] == [(drill["id"], DRILL["measurements"])]

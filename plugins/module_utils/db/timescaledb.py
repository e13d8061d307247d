# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""TimescaleDB: what a set records of it, whether a target can take it, the catalog-first load, its background
workers around the swap. Every function takes an open psycopg2 connection; nothing here runs without the extension."""

from __future__ import annotations

import os
import re
import time

from ansible_collections.christmas.recovery.plugins.module_utils.core import commands
from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.db.connection import fetch

try:
    import psycopg2
    from psycopg2 import sql
except ImportError:  # reported by the modules with missing_required_lib
    pass

EXTENSION = "timescaledb"
# TimescaleDB's own schemas: its catalog, its functions and the chunks of every hypertable. A user never reads them
# directly, and current versions refuse some of their tables when they are (an internal compressed hypertable).
INTERNAL_SCHEMAS = ("_timescaledb_cache", "_timescaledb_catalog", "_timescaledb_config", "_timescaledb_debug",
                    "_timescaledb_functions", "_timescaledb_internal", "timescaledb_experimental",
                    "timescaledb_information")
# The catalog whose tables reference each other: loaded by one job, in the dump's (dependency) order.
CATALOG_SCHEMAS = ("_timescaledb_catalog", "_timescaledb_config")
# Where the worker functions live: _timescaledb_functions since 2.12, _timescaledb_internal before.
FUNCTION_SCHEMAS = ("_timescaledb_functions", "_timescaledb_internal")
SCHEDULER = "TimescaleDB Background Worker Scheduler"
LAUNCHER = "TimescaleDB Background Worker Launcher"
SCHEDULER_WAIT = 30


def _qualified(schema, name):
    return "%s.%s" % (schema, name)


# ---------------------------------------------------------------- what a set records

def user_hypertables(conn):
    """The hypertables a user created (not the internal compressed or materialization ones), as (schema, name)."""
    return [(schema, name) for schema, name in fetch(conn, """
        SELECT hypertable_schema::text, hypertable_name::text FROM timescaledb_information.hypertables
        ORDER BY 1, 2""") if schema not in INTERNAL_SCHEMAS]


def chunk_tables(conn):
    """Every chunk of a user hypertable, wherever its schema: its rows are counted through the hypertable."""
    return {(schema, name) for schema, name in fetch(conn, """
        SELECT chunk_schema::text, chunk_name::text FROM timescaledb_information.chunks""")}


def facts(conn):
    """Hypertables with their chunks and compressed chunks, continuous aggregates and jobs: recorded in the set,
    compared after every restore (in the scratch database, workers stopped) and rehearsal."""
    hypertables = {}
    for schema, name, chunks, compressed in fetch(conn, """
            SELECT h.hypertable_schema::text, h.hypertable_name::text, count(c.chunk_name),
                   count(c.chunk_name) FILTER (WHERE c.is_compressed)
            FROM timescaledb_information.hypertables h
            LEFT JOIN timescaledb_information.chunks c
              ON c.hypertable_schema = h.hypertable_schema AND c.hypertable_name = h.hypertable_name
            GROUP BY 1, 2 ORDER BY 1, 2"""):
        if schema not in INTERNAL_SCHEMAS:
            hypertables[_qualified(schema, name)] = {"chunks": chunks, "compressed_chunks": compressed}
    aggregates = {_qualified(schema, name): {"hypertable": _qualified(ht_schema, ht_name)}
                  for schema, name, ht_schema, ht_name in fetch(conn, """
                      SELECT view_schema::text, view_name::text, hypertable_schema::text, hypertable_name::text
                      FROM timescaledb_information.continuous_aggregates ORDER BY 1, 2""")}
    jobs = {str(job_id): {"proc": _qualified(proc_schema, proc_name), "scheduled": scheduled,
                          "hypertable": _qualified(ht_schema, ht_name) if ht_name else None}
            for job_id, proc_schema, proc_name, scheduled, ht_schema, ht_name in fetch(conn, """
                SELECT job_id, proc_schema::text, proc_name::text, scheduled, hypertable_schema::text,
                       hypertable_name::text
                FROM timescaledb_information.jobs ORDER BY 1""")}
    return {"hypertables": hypertables, "continuous_aggregates": aggregates, "jobs": jobs}


def differences(expected, actual, objects_only=False):
    """What differs between two ``facts``, one phrase each; ``objects_only`` leaves chunk counts out (jobs that run
    after a restore may compress or drop chunks)."""
    found = []
    for kind, label in (("hypertables", "hypertable"), ("continuous_aggregates", "continuous aggregate"),
                        ("jobs", "job")):
        want, have = expected.get(kind, {}), actual.get(kind, {})
        found += ["%s %s missing" % (label, name) for name in sorted(set(want) - set(have))]
        found += ["%s %s not in the set" % (label, name) for name in sorted(set(have) - set(want))]
        for name in sorted(set(want) & set(have)):
            for field in sorted(want[name]):
                if objects_only and field in ("chunks", "compressed_chunks"):
                    continue
                if want[name][field] != have[name].get(field):
                    found.append("%s %s: %s %s, expected %s" % (
                        label, name, field.replace("_", " "), have[name].get(field), want[name][field]))
    return found


def has_scheduled_jobs(recorded):
    return any(job["scheduled"] for job in (recorded or {}).get("jobs", {}).values())


# ---------------------------------------------------------------- can this target take the set

def _preloaded(conn):
    """Whether the server preloads TimescaleDB: its setting, or (a login that may not read it) its launcher."""
    try:
        value = fetch(conn, "SELECT current_setting('shared_preload_libraries')")[0][0]
    except psycopg2.errors.InsufficientPrivilege:
        conn.rollback()
        return bool(fetch(conn, "SELECT 1 FROM pg_stat_activity WHERE backend_type = %s", (LAUNCHER,)))
    return EXTENSION in [item.strip().strip('"') for item in value.split(",")]


def target_problem(conn, version, where):
    """Why the server of ``conn`` cannot take a set made with TimescaleDB ``version``, in one line, or None:
    TimescaleDB must be preloaded (else CREATE EXTENSION ends the session) and that exact version installable."""
    available = sorted(row[0] for row in fetch(
        conn, "SELECT version FROM pg_available_extension_versions WHERE name = %s", (EXTENSION,)))
    major = fetch(conn, "SELECT current_setting('server_version_num')::int / 10000")[0][0]
    if version not in available:
        return "%s has TimescaleDB %s, the set was made with %s; install TimescaleDB %s for PostgreSQL %d first" % (
            where, "/".join(available) or "not installed", version, version, major)
    if not _preloaded(conn):
        return ("%s does not preload TimescaleDB: add timescaledb to shared_preload_libraries and restart PostgreSQL"
                " first" % where)
    return None


# ---------------------------------------------------------------- the load

TOC_ENTRY_RE = re.compile(r"^\s*(\d+);")
CATALOG_DATA_RE = re.compile(r"^\s*\d+;\s+\d+\s+\d+\s+(?:TABLE DATA|SEQUENCE SET)\s+(%s)\s" % "|".join(CATALOG_SCHEMAS))


def split_restore_list(toc, pre_data):
    """pg_restore list files for a catalog-first load: (the schema and TimescaleDB's catalog data in the dump's
    order, for one job; everything else, for parallel jobs). ``toc`` and ``pre_data`` are ``pg_restore --list``
    outputs of the whole dump and of its pre-data section."""
    first_ids = {match.group(1) for match in map(TOC_ENTRY_RE.match, pre_data.splitlines()) if match}
    first, rest = [], []
    for line in toc.splitlines():
        match = TOC_ENTRY_RE.match(line)
        if match:
            (first if match.group(1) in first_ids or CATALOG_DATA_RE.match(line) else rest).append(line)
    return "\n".join(first) + "\n", "\n".join(rest) + "\n"


def write_restore_lists(pg_restore, dump_dir, work_dir):
    """The two list files of ``split_restore_list`` in ``work_dir``; returns their paths."""
    toc = commands.run([pg_restore, "--list", dump_dir], "pg_restore --list %s" % dump_dir)
    pre_data = commands.run([pg_restore, "--list", "--section=pre-data", dump_dir],
                            "pg_restore --list --section=pre-data %s" % dump_dir)
    catalog_text, rest_text = split_restore_list(toc, pre_data)
    catalog, rest = os.path.join(work_dir, "catalog.list"), os.path.join(work_dir, "rest.list")
    for path, text in ((catalog, catalog_text), (rest, rest_text)):
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
    return catalog, rest


# ---------------------------------------------------------------- background workers

def _workers_call(conn, action):
    """``_timescaledb_functions.<action>_background_workers()`` (the older schema on older versions)."""
    schema = fetch(conn, """
        SELECT n.nspname::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE p.proname = %s AND n.nspname = ANY(%s) ORDER BY array_position(%s, n.nspname::text) LIMIT 1""",
                    ("%s_background_workers" % action, list(FUNCTION_SCHEMAS), list(FUNCTION_SCHEMAS)))
    if not schema:
        raise RecoveryError("TimescaleDB in database %s has no %s_background_workers()" % (
            conn.info.dbname, action))
    fetch(conn, sql.SQL("SELECT {}()").format(sql.Identifier(schema[0][0], "%s_background_workers" % action)))


def post_restore_stopped(conn):
    """``timescaledb_post_restore()``, then the workers it started stopped again: no job may change the scratch
    database before it is checked and swapped in, and the swap would kill its scheduler (TimescaleDB's launcher
    then leaves the database without one until PostgreSQL restarts)."""
    fetch(conn, sql.SQL("SELECT {}()").format(sql.Identifier("timescaledb_post_restore")))
    _workers_call(conn, "stop")


def start_workers(conn):
    _workers_call(conn, "start")


def scheduler_running(conn, dbname, wait=SCHEDULER_WAIT):
    """Whether TimescaleDB's scheduler has a session in ``dbname``, waiting up to ``wait`` seconds for it."""
    deadline = time.monotonic() + wait
    while True:
        fetch(conn, "SELECT pg_stat_clear_snapshot()")  # activity is read once per transaction otherwise
        if fetch(conn, """SELECT 1 FROM pg_stat_activity WHERE datname = %s
                           AND (backend_type = %s OR application_name = %s)""", (dbname, SCHEDULER, SCHEDULER)):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)

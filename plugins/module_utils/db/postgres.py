# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""PostgreSQL: the client programs, what a backup records of a database (tables, row counts, facts), and the
parallel dump at one snapshot."""

from __future__ import annotations

import glob
import json
import os
import re

from ansible_collections.christmas.recovery.plugins.module_utils.core import commands
from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.core.fsutil import (
    HashingWriter,
    tree_bytes,
)
from ansible_collections.christmas.recovery.plugins.module_utils.db import timescaledb
from ansible_collections.christmas.recovery.plugins.module_utils.db.connection import (
    connect,
    execute,
    fetch,
    one,
    sql_error,
)
from ansible_collections.christmas.recovery.plugins.module_utils.db.db_globals import GLOBALS_FILE, collect_globals

try:
    import psycopg2
    from psycopg2 import sql
except ImportError:  # reported by the modules with missing_required_lib
    pass

DUMP_DIR = "db.dump"
LOCK_NOT_AVAILABLE = "55P03"  # lock_timeout expired
TIMESCALEDB = timescaledb.EXTENSION
# gzip level 1: at pg_dump's own level 6 gzip is slower than the disk and the database; -1 keeps pg_dump's level.
DEFAULT_COMPRESS_LEVEL = 1
DEFAULT_LOCK_TIMEOUT = 60  # seconds a dump waits for a table someone holds ACCESS EXCLUSIVE
# Only ACCESS EXCLUSIVE conflicts with the ACCESS SHARE locks a dump takes on every table.
BLOCKERS_QUERY = """
SELECT format('%I.%I', n.nspname, c.relname), a.pid, a.usename, a.application_name, a.state,
       to_char(a.xact_start AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
JOIN pg_class c ON c.oid = l.relation JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE l.locktype = 'relation' AND l.mode = 'AccessExclusiveLock' AND l.granted
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) AND a.pid <> pg_backend_pid()
ORDER BY 1, 2
"""


def major_of(version_num):
    return int(version_num) // 10000


def find_pg_program(name, target, server_major=None):
    """Prefer the client binaries of the server's major version, then the newest installed, then PATH."""
    dirs = [target.bin_dir] if target.bin_dir else []
    installed = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(d.split("/")[-2]), reverse=True)
    if server_major:
        dirs += [d for d in installed if d.split("/")[-2] == str(server_major)]
    dirs += installed
    return commands.find_program(name, dirs)


def tool_major(program):
    out = commands.run([program, "--version"], "%s --version" % os.path.basename(program))
    match = re.search(r"(\d+)(?:\.\d+)?", out)
    return int(match.group(1)), out.strip()


# ---------------------------------------------------------------- what the backup records

TABLES_QUERY = """
SELECT n.nspname, c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%%'
  AND n.nspname NOT LIKE 'pg\\_temp\\_%%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                  AND d.deptype = 'e')
ORDER BY 1, 2
"""


def count_rows(conn, recorded=None):
    """Exact row count of every table a user sees: a hypertable through its own name (its chunks, compressed ones
    included), every other table ONLY itself (inherited rows count once); TimescaleDB's internals never. Counts
    ``recorded`` by an older version, which counted each chunk, are matched by counting as it did."""
    legacy = any(name.split(".", 1)[0] in timescaledb.INTERNAL_SCHEMAS for name in recorded or ())
    tsdb = not legacy and one(conn, "SELECT to_regclass('timescaledb_information.hypertables') IS NOT NULL")
    hypertables = set(timescaledb.user_hypertables(conn)) if tsdb else set()
    chunks = timescaledb.chunk_tables(conn) if tsdb else set()
    counts = {}
    for schema, table in fetch(conn, TABLES_QUERY):
        if (schema, table) in chunks or (not legacy and schema in timescaledb.INTERNAL_SCHEMAS):
            continue
        only = sql.SQL("") if (schema, table) in hypertables else sql.SQL("ONLY ")
        query = sql.SQL("SELECT count(*) FROM {}{}.{}").format(only, sql.Identifier(schema), sql.Identifier(table))
        counts["%s.%s" % (schema, table)] = one(conn, query)
    return counts


MARKET_DATA_TABLE_QUERY = """
SELECT c.oid, n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = to_regclass('market_data') AND c.relkind IN ('r', 'p')
"""

HYPERTABLE_TIME_QUERY = """
SELECT a.attname::text, format_type(a.atttypid, NULL)
FROM timescaledb_information.dimensions d JOIN pg_attribute a ON a.attrelid = %(oid)s AND a.attname = d.column_name
WHERE d.hypertable_schema = %(schema)s AND d.hypertable_name = %(table)s AND d.dimension_type = 'Time'
  AND NOT a.attisdropped
ORDER BY d.dimension_number LIMIT 1
"""

TIME_COLUMN_QUERY = """
SELECT attname::text, format_type(atttypid, NULL) FROM pg_attribute
WHERE attrelid = %(oid)s AND attnum > 0 AND NOT attisdropped
  AND (%(name)s::text IS NULL AND atttypid IN ('timestamptz'::regtype, 'timestamp'::regtype, 'date'::regtype)
       OR attname = %(name)s)
ORDER BY attnum LIMIT 1
"""

# max(column) as text that reads the same whatever the session's TimeZone and DateStyle: UTC ISO 8601.
ISO_FORMATS = {
    "timestamp with time zone": "to_char({0} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    "timestamp without time zone": "to_char({0}, 'YYYY-MM-DD\"T\"HH24:MI:SS.US')",
    "date": "to_char({0}, 'YYYY-MM-DD')",
}


def market_data_facts(conn, time_column=None):
    """The platform's ``market_data`` table as the manifest records it, or None when there is none: its rows
    (``count(*)`` without ONLY: a hypertable's rows live in its chunks), its time column (the hypertable's time
    dimension, else the first timestamp or date column; ``time_column`` names it instead) and the newest time in it."""
    found = fetch(conn, MARKET_DATA_TABLE_QUERY)
    if not found:
        return None
    oid, schema, table = found[0]
    relation = sql.Identifier(schema, table)
    rows = one(conn, sql.SQL("SELECT count(*) FROM {}").format(relation))
    facts = {"table": "%s.%s" % (schema, table), "rows": rows, "time_column": None, "newest": None}
    column = None
    if time_column is None and one(conn, "SELECT to_regclass('timescaledb_information.dimensions') IS NOT NULL"):
        column = (fetch(conn, HYPERTABLE_TIME_QUERY, {"oid": oid, "schema": schema, "table": table}) or [None])[0]
    if column is None:
        column = (fetch(conn, TIME_COLUMN_QUERY, {"oid": oid, "name": time_column}) or [None])[0]
    if column:
        name, type_name = column
        newest = sql.SQL("max({})").format(sql.Identifier(name))
        text = sql.SQL(ISO_FORMATS.get(type_name, "{0}::text")).format(newest)
        if type_name in ISO_FORMATS:  # to_char cannot spell infinity
            text = sql.SQL("CASE WHEN isfinite({0}) THEN {1} ELSE {0}::text END").format(newest, text)
        facts.update(time_column=name, newest=one(conn, sql.SQL("SELECT {} FROM {}").format(text, relation)))
    return facts


SNAPSHOT_QUERY = """
SELECT pg_export_snapshot(), to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
       pg_is_in_recovery(),
       (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text,
       (SELECT timeline_id FROM pg_control_checkpoint()),
       current_setting('server_version'), current_setting('server_version_num')::int,
       host(inet_server_addr()), (SELECT system_identifier FROM pg_control_system())::text
"""


def server_facts(conn):
    version, version_num, superuser = fetch(conn, """
        SELECT current_setting('server_version'), current_setting('server_version_num')::int,
               (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)""")[0]
    return {"version": version, "version_num": version_num, "superuser": superuser}


def installed_extensions(conn):
    return {name: {"version": version, "schema": schema} for name, version, schema in fetch(conn, """
        SELECT e.extname, e.extversion, n.nspname FROM pg_extension e
        JOIN pg_namespace n ON n.oid = e.extnamespace ORDER BY 1""")}


def _lock_wait_error(target, lock_timeout):
    """The one line a dump that gave up waiting for a table lock fails with: who holds it, on what, since when."""
    try:
        conn = connect(target)
        try:
            blockers = fetch(conn, BLOCKERS_QUERY)
        finally:
            conn.close()
    except (psycopg2.Error, RecoveryError):
        blockers = []
    if not blockers:
        return RecoveryError("pg_dump waited %d s for a table lock in database %s; the session holding it has "
                             "ended: retry" % (lock_timeout, target.dbname))
    held = "; ".join("%s held by pid %s (user %s, application %s, state %s, since %s)" % (
        relation, pid, user, application or "-", state or "unknown", since or "unknown")
        for relation, pid, user, application, state, since in blockers)
    return RecoveryError("pg_dump waited %d s for a lock on %s: end that session or retry" % (lock_timeout, held))


def _stop_dump(proc, err, target, lock_timeout):
    """pg_dump goes when this session fails; a lock timeout of this session is told like pg_dump's own."""
    proc.kill()
    proc.wait()
    if getattr(err, "pgcode", None) == LOCK_NOT_AVAILABLE:
        raise _lock_wait_error(target, lock_timeout) from None


def _finish_dump(proc, target, dump_dir, lock_timeout, progress):
    try:
        commands.finish(proc, "pg_dump of %s" % target.dbname, heartbeat=lambda: progress(
            "pg_dump: %d MiB written" % (tree_bytes(dump_dir) // 2**20)))
    except RecoveryError as err:
        if "statement timeout" in str(err) or "could not obtain lock" in str(err):
            raise _lock_wait_error(target, lock_timeout) from None
        raise


def dump_database(target, set_dir, jobs=2, compress_level=DEFAULT_COMPRESS_LEVEL, progress=print,
                  lock_timeout=DEFAULT_LOCK_TIMEOUT):
    """pg_dump -Fd -j at an exported snapshot; row counts and globals are read in that same snapshot. Neither the
    dump nor this session waits longer than ``lock_timeout`` seconds for a table lock."""
    conn = connect(target, autocommit=False)
    try:
        conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
        facts = server_facts(conn)
        if target.admin_user and not facts["superuser"]:
            raise RecoveryError("christmas_db_admin_user %s is not a superuser on %s:%s" % (
                target.admin_user, target.host, target.port))
        (snapshot, snapshot_time, in_recovery, lsn, timeline, version, version_num, address,
         system_identifier) = fetch(conn, SNAPSHOT_QUERY)[0]
        execute(conn, "SELECT set_config('lock_timeout', %s, true)", ("%ds" % lock_timeout,))
        pg_dump = find_pg_program("pg_dump", target, major_of(version_num))
        dump_major, dump_version = tool_major(pg_dump)
        if dump_major < major_of(version_num):
            raise RecoveryError("%s (%d) is older than the server (%s); install the matching client" % (
                pg_dump, dump_major, version))
        dump_dir = os.path.join(set_dir, DUMP_DIR)
        argv = [pg_dump, "--format=directory", "--jobs=%d" % jobs, "--snapshot=%s" % snapshot, "--no-password",
                "--lock-wait-timeout=%ds" % lock_timeout, "--file=%s" % dump_dir] + (
                    ["--compress=%d" % compress_level] if compress_level >= 0 else [])
        progress("dumping database %s with %d jobs" % (target.dbname, jobs))
        with target.libpq_env() as (env, fds):
            proc = commands.start(argv, env=env, pass_fds=fds)
            try:
                extensions = installed_extensions(conn)
                row_counts = count_rows(conn)
                tsdb_facts = timescaledb.facts(conn) if TIMESCALEDB in extensions else None
                globals_data = collect_globals(conn, with_passwords=bool(target.admin_user))
                execute(conn, "SET LOCAL TIME ZONE 'UTC'")  # the newest market_data time is read in UTC
                market_data = market_data_facts(conn)
            except BaseException as err:
                _stop_dump(proc, err, target, lock_timeout)
                raise
            _finish_dump(proc, target, dump_dir, lock_timeout, progress)
        conn.rollback()
    except psycopg2.Error as err:
        raise sql_error("reading database %s" % target.dbname, err) from None
    finally:
        conn.close()
    writer = HashingWriter(os.path.join(set_dir, GLOBALS_FILE))
    try:
        writer.write(json.dumps(globals_data, indent=1, sort_keys=True).encode("utf-8"))
        size, digest = writer.commit()
    except BaseException:
        writer.abort()
        raise
    roles = globals_data["roles"]
    metadata = {
        "name": target.dbname,
        "server_version": version,
        "server_version_num": version_num,
        "pg_dump_version": dump_version,
        "pg_dump_major": dump_major,
        "dump_format": "directory",
        "jobs": jobs,
        "extensions": extensions,
        "row_counts": row_counts,
        "snapshot_time": snapshot_time,
        "snapshot_lsn": lsn,
        "timeline": timeline,
        "from_standby": in_recovery,
        "node": {"name": target.node, "address": address, "system_identifier": system_identifier},
        "size_bytes": globals_data["database"]["size_bytes"],
        "owner": globals_data["database"]["owner"],
        "roles": [role["name"] for role in roles],
        "roles_with_passwords": globals_data["passwords_included"],
    }
    if market_data is not None:
        metadata["market_data"] = market_data
    if tsdb_facts is not None:
        metadata["timescaledb"] = tsdb_facts
    return metadata, {GLOBALS_FILE: (size, digest)}


# ---------------------------------------------------------------- restore



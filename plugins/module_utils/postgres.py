# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""PostgreSQL: parallel dump at one snapshot, the globals a new host needs, verified restore with a swap."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass

from ansible_collections.christmas.recovery.plugins.module_utils import commands, timescaledb
from ansible_collections.christmas.recovery.plugins.module_utils.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.fsutil import (
    HashingWriter,
    require_free_space,
    tree_bytes,
)

try:
    import psycopg2
    from psycopg2 import sql
    from psycopg2.extensions import ISOLATION_LEVEL_AUTOCOMMIT
    HAS_PSYCOPG2 = True
except ImportError:  # reported by the modules with missing_required_lib
    HAS_PSYCOPG2 = False

DUMP_DIR = "db.dump"
GLOBALS_FILE = "db_globals.json"
MARKER_SETTING = "christmas_recovery.restored_set"
TIMESCALEDB = timescaledb.EXTENSION
# gzip level 1: at pg_dump's own level 6 gzip is slower than the disk and the database; -1 keeps pg_dump's level.
DEFAULT_COMPRESS_LEVEL = 1


@dataclass
class PgTarget:
    """Where a database lives and who talks to it; the admin (a superuser) is used when given."""

    host: str = "localhost"
    port: int = 5432
    dbname: str = "christmas"
    user: str = "christmas"
    password: str = None
    admin_user: str = None
    admin_password: str = None
    maintenance_db: str = "postgres"
    bin_dir: str = None
    connect_wait: float = 0
    node: str = None  # which member of an HA pair this is, recorded in the manifest

    @property
    def login(self):
        if self.admin_user:
            return self.admin_user, self.admin_password
        return self.user, self.password

    def describe(self):
        return "%s@%s:%s/%s" % (self.login[0], self.host, self.port, self.dbname)

    @contextlib.contextmanager
    def libpq_env(self, dbname=None):
        """Yield (environment, file descriptors) for a child process. The password is in an anonymous in-memory
        0600 file passed as PGPASSFILE: in neither argv nor environ, never on disk, gone when the processes are."""
        user, password = self.login
        env = {"PGHOST": self.host, "PGPORT": str(self.port), "PGUSER": user, "PGDATABASE": dbname or self.dbname,
               "PGAPPNAME": "christmas.recovery", "PGCONNECT_TIMEOUT": "10", "PGPASSWORD": None}
        if password is None:
            yield env, ()
            return
        fd = os.memfd_create("pgpass")
        try:
            os.fchmod(fd, 0o600)  # libpq ignores a password file that others could read
            escaped = password.replace("\\", "\\\\").replace(":", "\\:")
            os.write(fd, ("*:*:*:*:%s\n" % escaped).encode("utf-8"))
            yield dict(env, PGPASSFILE="/proc/self/fd/%d" % fd), (fd,)
        finally:
            os.close(fd)


# A server that is starting, restarting or not yet listening: worth waiting for (connect_wait), unlike a wrong
# password or a missing database.
STARTING_RE = re.compile(r"Connection refused|starting up|shutting down|not yet accepting|server closed the connection"
                         r"|Connection reset|No such file or directory|could not receive data")


def connect(target, dbname=None, autocommit=True):
    """A connection; while the server is still starting, retried for up to ``target.connect_wait`` seconds."""
    if not HAS_PSYCOPG2:
        raise RecoveryError("psycopg2 is required on this host (pip install psycopg2-binary)")
    user, password = target.login
    deadline = time.monotonic() + target.connect_wait
    while True:
        try:
            conn = psycopg2.connect(
                host=target.host, port=target.port, user=user, password=password, dbname=dbname or target.dbname,
                connect_timeout=10, application_name="christmas.recovery",
            )
            break
        except psycopg2.Error as err:
            first = (str(err).strip().splitlines() or ["unknown error"])[0]
            if STARTING_RE.search(str(err)) and time.monotonic() < deadline:
                time.sleep(0.5)
                continue
            raise RecoveryError("cannot connect to PostgreSQL %s@%s:%s/%s: %s" % (
                user, target.host, target.port, dbname or target.dbname, first)) from None
    if autocommit:
        conn.set_isolation_level(ISOLATION_LEVEL_AUTOCOMMIT)
    return conn


@contextlib.contextmanager
def session(target, dbname=None):
    """A connection for a few statements, closed however they end."""
    conn = connect(target, dbname=dbname)
    try:
        yield conn
    finally:
        conn.close()


def _fetch(conn, query, params=None):
    with conn.cursor() as cur:
        cur.execute(query, params)
        return cur.fetchall()


def _execute(conn, query, params=None):
    with conn.cursor() as cur:
        cur.execute(query, params)


def _one(conn, query, params=None):
    return _fetch(conn, query, params)[0][0]


def sql_error(what, err):
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return RecoveryError("%s: %s" % (what, first))


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
    tsdb = not legacy and _one(conn, "SELECT to_regclass('timescaledb_information.hypertables') IS NOT NULL")
    hypertables = set(timescaledb.user_hypertables(conn)) if tsdb else set()
    chunks = timescaledb.chunk_tables(conn) if tsdb else set()
    counts = {}
    for schema, table in _fetch(conn, TABLES_QUERY):
        if (schema, table) in chunks or (not legacy and schema in timescaledb.INTERNAL_SCHEMAS):
            continue
        only = sql.SQL("") if (schema, table) in hypertables else sql.SQL("ONLY ")
        query = sql.SQL("SELECT count(*) FROM {}{}.{}").format(only, sql.Identifier(schema), sql.Identifier(table))
        counts["%s.%s" % (schema, table)] = _one(conn, query)
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
    found = _fetch(conn, MARKET_DATA_TABLE_QUERY)
    if not found:
        return None
    oid, schema, table = found[0]
    relation = sql.Identifier(schema, table)
    rows = _one(conn, sql.SQL("SELECT count(*) FROM {}").format(relation))
    facts = {"table": "%s.%s" % (schema, table), "rows": rows, "time_column": None, "newest": None}
    column = None
    if time_column is None and _one(conn, "SELECT to_regclass('timescaledb_information.dimensions') IS NOT NULL"):
        column = (_fetch(conn, HYPERTABLE_TIME_QUERY, {"oid": oid, "schema": schema, "table": table}) or [None])[0]
    if column is None:
        column = (_fetch(conn, TIME_COLUMN_QUERY, {"oid": oid, "name": time_column}) or [None])[0]
    if column:
        name, type_name = column
        newest = sql.SQL("max({})").format(sql.Identifier(name))
        text = sql.SQL(ISO_FORMATS.get(type_name, "{0}::text")).format(newest)
        if type_name in ISO_FORMATS:  # to_char cannot spell infinity
            text = sql.SQL("CASE WHEN isfinite({0}) THEN {1} ELSE {0}::text END").format(newest, text)
        facts.update(time_column=name, newest=_one(conn, sql.SQL("SELECT {} FROM {}").format(text, relation)))
    return facts


ROLES_QUERY = """
WITH RECURSIVE db AS (SELECT oid, datdba, datacl FROM pg_database WHERE datname = current_database()),
user_ns AS (SELECT oid, nspowner, nspacl FROM pg_namespace
            WHERE nspname NOT IN ('pg_catalog', 'information_schema') AND nspname NOT LIKE 'pg\\_toast%%'),
base(oid) AS (
  SELECT datdba FROM db
  UNION SELECT nspowner FROM user_ns
  UNION SELECT (aclexplode(nspacl)).grantee FROM user_ns WHERE nspacl IS NOT NULL
  UNION SELECT relowner FROM pg_class WHERE relnamespace IN (SELECT oid FROM user_ns)
  UNION SELECT (aclexplode(relacl)).grantee FROM pg_class
        WHERE relacl IS NOT NULL AND relnamespace IN (SELECT oid FROM user_ns)
  UNION SELECT proowner FROM pg_proc WHERE pronamespace IN (SELECT oid FROM user_ns)
  UNION SELECT (aclexplode(datacl)).grantee FROM db WHERE datacl IS NOT NULL
  UNION SELECT defaclrole FROM pg_default_acl
  UNION SELECT (aclexplode(defaclacl)).grantee FROM pg_default_acl
  UNION SELECT setrole FROM pg_db_role_setting WHERE setdatabase = (SELECT oid FROM db)
),
closure(oid) AS (
  SELECT oid FROM base WHERE oid >= 16384
  UNION
  SELECT CASE WHEN m.member = c.oid THEN m.roleid ELSE m.member END
  FROM pg_auth_members m JOIN closure c ON c.oid IN (m.member, m.roleid)
  WHERE m.roleid >= 16384 AND m.member >= 16384
)
SELECT r.rolname, r.rolsuper, r.rolinherit, r.rolcreaterole, r.rolcreatedb, r.rolcanlogin, r.rolreplication,
       r.rolbypassrls, r.rolconnlimit, r.rolvaliduntil::text
FROM pg_roles r WHERE r.oid IN (SELECT oid FROM closure) ORDER BY r.rolname
"""

MEMBERSHIP_QUERY = """
SELECT g.rolname, m.rolname, am.admin_option
FROM pg_auth_members am JOIN pg_roles g ON g.oid = am.roleid JOIN pg_roles m ON m.oid = am.member
WHERE m.rolname = ANY(%(names)s) AND (g.rolname = ANY(%(names)s) OR g.oid < 16384)
ORDER BY 1, 2
"""

DATABASE_QUERY = """
SELECT pg_get_userbyid(d.datdba), pg_encoding_to_char(d.encoding), d.datcollate, d.datctype, d.datconnlimit,
       COALESCE((SELECT json_agg(json_build_array(a.grantee::regrole::text, a.privilege_type, a.is_grantable))
                 FROM aclexplode(d.datacl) a WHERE a.grantee <> 0), '[]'::json),
       COALESCE((SELECT json_agg(a.privilege_type) FROM aclexplode(d.datacl) a WHERE a.grantee = 0), '[]'::json),
       d.datacl IS NULL, pg_database_size(d.oid)
FROM pg_database d WHERE d.datname = current_database()
"""

SETTINGS_QUERY = """
SELECT COALESCE(r.rolname, ''), s.setdatabase <> 0, s.setconfig
FROM pg_db_role_setting s LEFT JOIN pg_roles r ON r.oid = s.setrole
WHERE (s.setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())
       AND (s.setrole = 0 OR r.rolname = ANY(%(names)s)))
   OR (s.setdatabase = 0 AND r.rolname = ANY(%(names)s))
ORDER BY 1, 2
"""


def collect_globals(conn, with_passwords):
    """Roles the database needs (owner, grantees, their memberships), the database's own ACL and settings."""
    passwords = {}
    if with_passwords:
        passwords = dict(_fetch(conn, "SELECT rolname, rolpassword FROM pg_authid WHERE rolpassword IS NOT NULL"))
    roles = [{
        "name": row[0], "superuser": row[1], "inherit": row[2], "createrole": row[3], "createdb": row[4],
        "login": row[5], "replication": row[6], "bypassrls": row[7], "connection_limit": row[8],
        "valid_until": row[9], "password_hash": passwords.get(row[0]),
    } for row in _fetch(conn, ROLES_QUERY)]
    names = [role["name"] for role in roles]
    memberships = [{"role": g, "member": m, "admin_option": a}
                   for g, m, a in _fetch(conn, MEMBERSHIP_QUERY, {"names": names})]
    settings = [{"role": role, "in_database": in_db, "setting": item}
                for role, in_db, config in _fetch(conn, SETTINGS_QUERY, {"names": names})
                for item in config or [] if not item.startswith(MARKER_SETTING + "=")]
    owner, encoding, collate, ctype, connlimit, acl, public_privs, default_acl, size = _fetch(conn, DATABASE_QUERY)[0]
    return {
        "roles": roles,
        "memberships": memberships,
        "passwords_included": bool(with_passwords),
        "database": {
            "name": _one(conn, "SELECT current_database()"), "owner": owner, "encoding": encoding,
            "collate": collate, "ctype": ctype, "connection_limit": connlimit, "default_acl": default_acl,
            "acl": acl, "public_privileges": public_privs, "settings": settings, "size_bytes": size,
        },
    }


SNAPSHOT_QUERY = """
SELECT pg_export_snapshot(), to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
       pg_is_in_recovery(),
       (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text,
       (SELECT timeline_id FROM pg_control_checkpoint()),
       current_setting('server_version'), current_setting('server_version_num')::int,
       host(inet_server_addr()), (SELECT system_identifier FROM pg_control_system())::text
"""


def server_facts(conn):
    version, version_num, superuser = _fetch(conn, """
        SELECT current_setting('server_version'), current_setting('server_version_num')::int,
               (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)""")[0]
    return {"version": version, "version_num": version_num, "superuser": superuser}


def installed_extensions(conn):
    return {name: {"version": version, "schema": schema} for name, version, schema in _fetch(conn, """
        SELECT e.extname, e.extversion, n.nspname FROM pg_extension e
        JOIN pg_namespace n ON n.oid = e.extnamespace ORDER BY 1""")}


def dump_database(target, set_dir, jobs=2, compress_level=DEFAULT_COMPRESS_LEVEL, progress=print):
    """pg_dump -Fd -j at an exported snapshot; row counts and globals are read in that same snapshot."""
    conn = connect(target, autocommit=False)
    try:
        conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
        facts = server_facts(conn)
        if target.admin_user and not facts["superuser"]:
            raise RecoveryError("christmas_db_admin_user %s is not a superuser on %s:%s" % (
                target.admin_user, target.host, target.port))
        (snapshot, snapshot_time, in_recovery, lsn, timeline, version, version_num, address,
         system_identifier) = _fetch(conn, SNAPSHOT_QUERY)[0]
        pg_dump = find_pg_program("pg_dump", target, major_of(version_num))
        dump_major, dump_version = tool_major(pg_dump)
        if dump_major < major_of(version_num):
            raise RecoveryError("%s (%d) is older than the server (%s); install the matching client" % (
                pg_dump, dump_major, version))
        dump_dir = os.path.join(set_dir, DUMP_DIR)
        argv = [pg_dump, "--format=directory", "--jobs=%d" % jobs, "--snapshot=%s" % snapshot, "--no-password",
                "--file=%s" % dump_dir]
        if compress_level >= 0:
            argv.append("--compress=%d" % compress_level)
        progress("dumping database %s with %d jobs" % (target.dbname, jobs))
        with target.libpq_env() as (env, fds):
            proc = commands.start(argv, env=env, pass_fds=fds)
            try:
                extensions = installed_extensions(conn)
                row_counts = count_rows(conn)
                tsdb_facts = timescaledb.facts(conn) if TIMESCALEDB in extensions else None
                globals_data = collect_globals(conn, with_passwords=bool(target.admin_user))
                _execute(conn, "SET LOCAL TIME ZONE 'UTC'")  # the newest market_data time is read in UTC
                market_data = market_data_facts(conn)
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            commands.finish(proc, "pg_dump of %s" % target.dbname, heartbeat=lambda: progress(
                "pg_dump: %d MiB written" % (tree_bytes(dump_dir) // 2**20)))
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


def load_globals(path):
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        data["roles"], data["memberships"], data["database"]["owner"]  # noqa: B018 - shape check
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise RecoveryError("db globals %s are unreadable: %s" % (path, err)) from None
    return data


def check_dump_readable(target, dump_dir):
    """Deep check of a directory-format dump: pg_restore must list its table of contents."""
    pg_restore = find_pg_program("pg_restore", target)
    commands.run([pg_restore, "--list", dump_dir], "pg_restore --list %s" % dump_dir)


def _database_exists(conn, name):
    return bool(_fetch(conn, "SELECT 1 FROM pg_database WHERE datname = %s", (name,)))


def _marker(conn, name):
    rows = _fetch(conn, """
        SELECT item FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase,
             unnest(s.setconfig) item
        WHERE d.datname = %s AND s.setrole = 0 AND item LIKE %s""", (name, MARKER_SETTING + "=%"))
    return rows[0][0].split("=", 1)[1] if rows else None


def _side_name(dbname, tag, set_id):
    suffix = "__%s_%s" % (tag, set_id)
    return dbname.encode("utf-8")[: 63 - len(suffix)].decode("utf-8", "ignore") + suffix


def preflight_restore(target, manifest, backup_dir):
    """Everything that can refuse a restore, checked before anything changes; returns what was found."""
    meta = manifest["db"]
    conn = connect(target, dbname=target.maintenance_db)
    try:
        facts = server_facts(conn)
        restore_version = _check_versions(target, facts, meta)
        db_exists = _database_exists(conn, target.dbname)
        _check_extensions(conn, target, meta, db_exists)
        missing_roles = _check_rights(conn, target, meta)
        disk = _check_disk(conn, target, facts, meta)
        already = bool(db_exists and _marker(conn, target.dbname) == manifest["set_id"]
                       and _counts_match(target, meta["row_counts"]))
    except psycopg2.Error as err:
        raise sql_error("preflight on %s" % target.describe(), err) from None
    finally:
        conn.close()
    return {
        "target_version": facts["version"], "pg_restore": restore_version, "database_exists": db_exists,
        "roles_missing": missing_roles, "disk": disk, "already_restored": already,
    }


def _check_versions(target, facts, meta):
    """The target may not be an older major than the source, nor pg_restore older than the pg_dump used."""
    if major_of(facts["version_num"]) < major_of(meta["server_version_num"]):
        raise RecoveryError("target PostgreSQL %s at %s:%s is older than the backup's %s; restore onto %d or newer" % (
            facts["version"], target.host, target.port, meta["server_version"],
            major_of(meta["server_version_num"])))
    restore_major, restore_version = tool_major(find_pg_program("pg_restore", target, major_of(facts["version_num"])))
    if restore_major < meta["pg_dump_major"]:
        raise RecoveryError("%s is older than the pg_dump (%d) that wrote the backup" % (
            restore_version, meta["pg_dump_major"]))
    return restore_version


def _check_extensions(conn, target, meta, db_exists):
    """Every extension must be available; TimescaleDB preloaded and at the set's exact version, also in an existing
    database."""
    available = {row[0] for row in _fetch(conn, "SELECT name FROM pg_available_extensions")}
    for name in sorted(meta["extensions"]):
        if name not in available:
            raise RecoveryError("extension %s (in the backup) is not installed on the target %s:%s" % (
                name, target.host, target.port))
    tsdb = meta["extensions"].get(TIMESCALEDB)
    if not tsdb:
        return
    problem = timescaledb.target_problem(conn, tsdb["version"], "target %s:%s" % (target.host, target.port))
    if problem:
        raise RecoveryError(problem)
    installed = _installed_version(target, TIMESCALEDB) if db_exists else None
    if installed and installed != tsdb["version"]:
        raise RecoveryError("database %s has TimescaleDB %s, the backup was made with %s" % (
            target.dbname, installed, tsdb["version"]))


def _check_rights(conn, target, meta):
    """The login must create databases, and roles when some are missing; returns the missing roles."""
    existing = {row[0] for row in _fetch(conn, "SELECT rolname FROM pg_roles")}
    missing = [name for name in meta["roles"] if name not in existing]
    superuser, createdb, createrole = _fetch(
        conn, "SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = current_user")[0]
    if not (superuser or createdb):
        raise RecoveryError("%s may not create databases on %s:%s; give christmas_db_admin_user" % (
            target.login[0], target.host, target.port))
    if missing and not (superuser or createrole):
        raise RecoveryError("roles %s are missing on the target and %s may not create roles" % (
            ", ".join(missing), target.login[0]))
    return missing


def _check_disk(conn, target, facts, meta):
    """Room for a second copy of the database, when its data directory is visible from here."""
    if facts["superuser"]:
        data_dir = _one(conn, "SELECT current_setting('data_directory')")
        if os.path.isdir(data_dir):
            free = require_free_space(data_dir, int(meta["size_bytes"] * 1.1), "database %s" % target.dbname)
            return "%d MiB free, about %d MiB needed" % (free // 2**20, meta["size_bytes"] // 2**20)
    return "not checked: data directory not visible from this host"


def _installed_version(target, extension):
    with session(target) as conn:
        rows = _fetch(conn, "SELECT extversion FROM pg_extension WHERE extname = %s", (extension,))
    return rows[0][0] if rows else None


def _database_size(target, name):
    with session(target, target.maintenance_db) as conn:
        return _one(conn, "SELECT pg_database_size(%s)", (name,))


def _counts_match(target, expected, dbname=None):
    with session(target, dbname) as conn:
        return count_rows(conn, expected) == expected


def _role_clause(role):
    flags = [
        "SUPERUSER" if role["superuser"] else "NOSUPERUSER", "INHERIT" if role["inherit"] else "NOINHERIT",
        "CREATEROLE" if role["createrole"] else "NOCREATEROLE", "CREATEDB" if role["createdb"] else "NOCREATEDB",
        "LOGIN" if role["login"] else "NOLOGIN", "REPLICATION" if role["replication"] else "NOREPLICATION",
        "BYPASSRLS" if role["bypassrls"] else "NOBYPASSRLS",
    ]
    parts = [sql.SQL(" ".join(flags)), sql.SQL("CONNECTION LIMIT {}").format(sql.Literal(role["connection_limit"]))]
    if role["valid_until"]:
        parts.append(sql.SQL("VALID UNTIL {}").format(sql.Literal(role["valid_until"])))
    if role["password_hash"]:
        parts.append(sql.SQL("PASSWORD {}").format(sql.Literal(role["password_hash"])))
    return sql.SQL(" ").join(parts)


LIST_SETTINGS = {"search_path", "temp_tablespaces", "session_preload_libraries", "local_preload_libraries"}


def _set_clause(item):
    name, value = item.split("=", 1)
    if name in LIST_SETTINGS and re.match(r'^[\w$", .-]*$', value):
        return sql.SQL("SET {} TO {}").format(sql.Identifier(name), sql.SQL(value))
    return sql.SQL("SET {} TO {}").format(sql.Identifier(name), sql.Literal(value))


def create_missing_roles(conn, globals_data):
    """Create the roles the target lacks, with their attributes, role settings and memberships; touch no other."""
    existing = {row[0] for row in _fetch(conn, "SELECT rolname FROM pg_roles")}
    created = []
    with conn.cursor() as cur:
        for role in globals_data["roles"]:
            if role["name"] in existing:
                continue
            try:
                cur.execute(sql.SQL("CREATE ROLE {} WITH ").format(sql.Identifier(role["name"])) + _role_clause(role))
                for setting in globals_data["database"]["settings"]:
                    if setting["role"] == role["name"] and not setting["in_database"]:
                        cur.execute(sql.SQL("ALTER ROLE {} ").format(sql.Identifier(role["name"]))
                                    + _set_clause(setting["setting"]))
            except psycopg2.Error as err:
                raise sql_error("creating role %s" % role["name"], err) from None
            created.append(role)
        names = {role["name"] for role in created}
        for grant in globals_data["memberships"]:
            if grant["role"] in names or grant["member"] in names:
                statement = sql.SQL("GRANT {} TO {}").format(sql.Identifier(grant["role"]),
                                                              sql.Identifier(grant["member"]))
                if grant["admin_option"]:
                    statement += sql.SQL(" WITH ADMIN OPTION")
                try:
                    cur.execute(statement)
                except psycopg2.Error as err:
                    raise sql_error("granting %s to %s" % (grant["role"], grant["member"]), err) from None
    return created


def _terminate(conn, name):
    _execute(conn, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s"
                   " AND pid <> pg_backend_pid()", (name,))


def _rename(conn, old, new):
    """Rename a database, pushing out its sessions (retrying while they reconnect)."""
    statement = sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(old), sql.Identifier(new))
    for attempt in range(20):
        _terminate(conn, old)
        try:
            with conn.cursor() as cur:
                cur.execute(statement)
            return
        except psycopg2.errors.ObjectInUse:
            if attempt == 19:
                raise
            time.sleep(0.25)


def _drop(conn, name):
    with conn.cursor() as cur:
        cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _apply_database_properties(conn, name, database, set_id):
    ident = sql.Identifier(name)
    statements = [sql.SQL("ALTER DATABASE {} CONNECTION LIMIT {}").format(
        ident, sql.Literal(database["connection_limit"]))]
    if not database["default_acl"]:
        statements.append(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(ident))
        for privilege in database["public_privileges"]:
            statements.append(sql.SQL("GRANT {} ON DATABASE {} TO PUBLIC").format(sql.SQL(privilege), ident))
        for grantee, privilege, grantable in database["acl"]:
            statement = sql.SQL("GRANT {} ON DATABASE {} TO {}").format(
                sql.SQL(privilege), ident, sql.Identifier(grantee.strip('"')))
            statements.append(statement + sql.SQL(" WITH GRANT OPTION") if grantable else statement)
    for setting in database["settings"]:
        if setting["in_database"] and setting["role"] == "":
            statements.append(sql.SQL("ALTER DATABASE {} ").format(ident) + _set_clause(setting["setting"]))
        elif setting["in_database"]:
            statements.append(sql.SQL("ALTER ROLE {} IN DATABASE {} ").format(sql.Identifier(setting["role"]), ident)
                              + _set_clause(setting["setting"]))
    statements.append(sql.SQL("ALTER DATABASE {} SET {} TO {}").format(
        ident, sql.SQL(MARKER_SETTING), sql.Literal(set_id)))
    with conn.cursor() as cur:
        for statement in statements:
            cur.execute(statement)


def _create_scratch_database(conn, name, database):
    _drop(conn, name)
    with conn.cursor() as cur:
        cur.execute(sql.SQL("CREATE DATABASE {} OWNER {} TEMPLATE template0 ENCODING {} LC_COLLATE {} LC_CTYPE {}")
                    .format(sql.Identifier(name), sql.Identifier(database["owner"]), sql.Literal(database["encoding"]),
                            sql.Literal(database["collate"]), sql.Literal(database["ctype"])))


def restore_database(target, manifest, backup_dir, dump_dir, globals_path, jobs=2, force=False, check_mode=False,
                     progress=print):
    """Load the dump into a scratch database, check its row counts, then swap it in for the target database.

    The existing database stays untouched until the new one is loaded and matches the manifest.
    """
    preflight = preflight_restore(target, manifest, backup_dir)
    result = {"database": target.dbname, "preflight": preflight, "roles_created": [], "roles_need_password": []}
    if preflight["already_restored"] and not force:
        result.update(changed=False, state="already restored from set %s (row counts match)" % manifest["set_id"])
        return result
    if check_mode:
        result.update(changed=True, state="would restore %s from set %s" % (target.dbname, manifest["set_id"]))
        return result
    globals_data = load_globals(globals_path)
    scratch = _side_name(target.dbname, "restore", manifest["set_id"])
    admin = connect(target, dbname=target.maintenance_db)
    result["changed"] = True
    try:
        progress("creating missing roles and scratch database %s" % scratch)
        created = create_missing_roles(admin, globals_data)
        result["roles_created"] = [role["name"] for role in created]
        result["roles_need_password"] = [r["name"] for r in created if r["login"] and not r["password_hash"]]
        _create_scratch_database(admin, scratch, globals_data["database"])
        try:
            result["row_counts_checked"] = _load_scratch(target, scratch, manifest["db"], dump_dir, jobs, result,
                                                         progress)
            progress("swapping scratch database %s in for %s" % (scratch, target.dbname))
            # ACL, settings and the set marker belong to the database itself, so they follow it through the rename.
            _apply_database_properties(admin, scratch, globals_data["database"], manifest["set_id"])
            _swap_in(admin, target.dbname, scratch, manifest["set_id"])
        except (RecoveryError, psycopg2.Error) as err:
            _drop(admin, scratch)
            raise RecoveryError("%s; database %s left as it was, scratch database dropped" % (
                str(sql_error("restore", err)) if isinstance(err, psycopg2.Error) else err, target.dbname)) from None
        except BaseException:
            _drop(admin, scratch)
            raise
        if TIMESCALEDB in manifest["db"]["extensions"]:
            _start_timescaledb_workers(target, result)
        result["state"] = "restored from set %s" % manifest["set_id"]
    except psycopg2.Error as err:
        raise sql_error("preparing the restore of %s (nothing replaced)" % target.dbname, err) from None
    finally:
        admin.close()
    return result


def _load_scratch(target, scratch, meta, dump_dir, jobs, result, progress):
    """pg_restore into the scratch database, bracketed by the TimescaleDB hooks; return the tables checked."""
    tsdb = meta["extensions"].get(TIMESCALEDB)
    pg_restore = find_pg_program("pg_restore", target, major_of(meta["server_version_num"]))
    if not tsdb:
        _pg_restore(target, scratch, pg_restore, [dump_dir], jobs, progress)
    else:
        with session(target, scratch) as conn:
            _execute(conn, sql.SQL("CREATE EXTENSION IF NOT EXISTS {} WITH SCHEMA {} VERSION {}").format(
                sql.Identifier(TIMESCALEDB), sql.Identifier(tsdb["schema"]), sql.Literal(tsdb["version"])))
            _execute(conn, sql.SQL("SELECT {}()").format(sql.Identifier("timescaledb_pre_restore")))
        result["timescaledb"] = ["pre_restore"]
        try:
            # TimescaleDB's catalog tables reference each other: parallel jobs would load them out of order.
            with tempfile.TemporaryDirectory(prefix="christmas-restore-lists-") as lists:
                catalog, rest = timescaledb.write_restore_lists(pg_restore, dump_dir, lists)
                _pg_restore(target, scratch, pg_restore, ["--use-list=%s" % catalog, dump_dir], 1, progress,
                            "the schema and TimescaleDB's catalog of ")
                _pg_restore(target, scratch, pg_restore, ["--use-list=%s" % rest, dump_dir], jobs, progress,
                            "the rest of ")
        finally:
            with session(target, scratch) as conn:
                timescaledb.post_restore_stopped(conn)
            result["timescaledb"] += ["post_restore", "workers_stopped"]
    with session(target, scratch) as conn:
        restored_counts = count_rows(conn, meta["row_counts"])
        restored_facts = timescaledb.facts(conn) if tsdb and "timescaledb" in meta else None
    if restored_counts != meta["row_counts"]:
        differing = sorted(name for name in set(restored_counts) | set(meta["row_counts"])
                           if restored_counts.get(name) != meta["row_counts"].get(name))
        raise RecoveryError("restored row counts differ from the manifest for %s" % ", ".join(differing[:10]))
    if restored_facts is not None:
        differences = timescaledb.differences(meta["timescaledb"], restored_facts)
        if differences:
            raise RecoveryError("restored TimescaleDB objects differ from the manifest: %s" % "; ".join(
                differences[:10]))
    return len(restored_counts)


def _pg_restore(target, scratch, pg_restore, args, jobs, progress, part=""):
    progress("loading %s%s into scratch database %s with %d jobs" % (part, args[-1], scratch, jobs))
    with target.libpq_env(scratch) as (env, fds):
        proc = commands.start([pg_restore, "--jobs=%d" % jobs, "--exit-on-error", "--no-password",
                               "--dbname=%s" % scratch] + args, env=env, pass_fds=fds)
        commands.finish(proc, "pg_restore into %s" % scratch, heartbeat=lambda: progress(
            "pg_restore: %s holds %d MiB" % (scratch, _database_size(target, scratch) // 2**20)))


def _start_timescaledb_workers(target, result):
    """The swapped-in database's jobs run again (stopped in the scratch database so the swap could not kill them)."""
    try:
        with session(target) as conn:
            timescaledb.start_workers(conn)
    except (RecoveryError, psycopg2.Error) as err:
        raise RecoveryError("database %s is restored but TimescaleDB's background workers did not start (%s); run "
                            "SELECT _timescaledb_functions.start_background_workers() in it" % (
                                target.dbname, str(err).strip().splitlines()[0])) from None
    result["timescaledb"].append("workers_started")


def _allow_connections(conn, name, allowed):
    _execute(conn, sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
        sql.Identifier(name), sql.SQL("true" if allowed else "false")))


def _swap_in(conn, dbname, scratch, set_id):
    """Rename the old database aside and the scratch one into its place; on failure the old one is put back."""
    replaced = _side_name(dbname, "replaced", set_id)
    moved = False
    if _database_exists(conn, dbname):
        _drop(conn, replaced)
        _allow_connections(conn, dbname, False)
        try:
            _rename(conn, dbname, replaced)
        except BaseException:
            _allow_connections(conn, dbname, True)
            raise
        moved = True
    try:
        _rename(conn, scratch, dbname)
    except BaseException:
        if moved:
            _rename(conn, replaced, dbname)
            _allow_connections(conn, dbname, True)
        raise
    _drop(conn, replaced)  # also what a restore killed between the two renames left

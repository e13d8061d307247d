# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The incident database: every recovery as a row (SQLite or PostgreSQL) and a Markdown report, searchable later so a
similar failure is fixed faster."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import sqlite3
import urllib.parse

from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.core.fsutil import (
    FILE_MODE,
    make_private_dir,
    remove_quietly,
)
from ansible_collections.christmas.recovery.plugins.module_utils.db import connection
from ansible_collections.christmas.recovery.plugins.module_utils.platform.incident_records import (
    DICT_FIELDS,
    JSON_FIELDS,
    LIST_FIELDS,
    RECORD_FIELDS,
    REQUIRED_FIELDS,
    TIME_FIELDS,
    check_limit,
    format_time,
    normalize_record,
    time_bounds,
    write_markdown,
)

DEFAULT_DB = "/var/lib/christmas/incidents.sqlite"
DEFAULT_TABLE = "christmas_incidents"
SQLITE_TABLE = "christmas_incidents"
BUSY_TIMEOUT_SECONDS = 30
# Columns searched by ``text`` (commands too, element by element).
SEARCHED_FIELDS = ("incident_symptoms", "incident_impact", "error", "remaining_problems", "followup_prevention",
                   "followup_monitoring", "followup_config_changes")
COLUMNS = RECORD_FIELDS + ("markdown",)
# Columns added after the first release: a table without them gets them on the next insert, and reads without them.
MIGRATED_COLUMNS = DICT_FIELDS
WHEN = "COALESCE(started_at, finished_at)"


# ---------------------------------------------------------------- the record


def _to_row(record):
    return [json.dumps(record[key], ensure_ascii=False) if key in JSON_FIELDS else record[key]
            for key in RECORD_FIELDS]


def _from_row(names, row):
    """A stored row as a record; a column a table made before it existed reads as its empty value."""
    record = {name: row[index] for index, name in enumerate(names)}
    for key in LIST_FIELDS:
        value = record.get(key)
        record[key] = json.loads(value) if isinstance(value, str) else (value or [])
    for key in DICT_FIELDS:
        value = record.get(key)
        record[key] = json.loads(value) if isinstance(value, str) else (value or {})
    for key in TIME_FIELDS:
        if isinstance(record[key], datetime.datetime):
            record[key] = format_time(record[key])
    return record


class SqliteStore:
    """One SQLite file (0600, in a 0700 directory); a busy timeout lets two plays write one after the other."""

    def __init__(self, path):
        self.path = os.path.abspath(path)

    def describe(self):
        return "SQLite %s" % self.path

    @property
    def default_markdown_dir(self):
        return os.path.dirname(self.path)

    def _fail(self, err):
        return RecoveryError("incident database %s: %s" % (self.path, err))

    def _open(self, create):
        if os.path.isdir(self.path):
            raise RecoveryError("incident database %s is a directory" % self.path)
        if create:
            try:
                make_private_dir(os.path.dirname(self.path))
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
                os.fchmod(fd, FILE_MODE)
                os.close(fd)
            except FileExistsError:
                pass
            except OSError as err:
                raise self._fail(err.strerror or err) from None
            uri = "file:%s" % urllib.parse.quote(self.path)
        else:
            uri = "file:%s?mode=ro" % urllib.parse.quote(self.path)
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
        except sqlite3.Error as err:
            raise self._fail(err) from None
        conn.create_function("christmas_contains", 2, _contains, deterministic=True)
        return conn

    @staticmethod
    def _kind(key):
        return ("TEXT NOT NULL DEFAULT '[]'" if key in LIST_FIELDS
                else "TEXT NOT NULL DEFAULT '{}'" if key in DICT_FIELDS
                else "REAL" if key == "duration_seconds"
                else "TEXT NOT NULL" if key in REQUIRED_FIELDS + ("finished_at",) else "TEXT")

    @staticmethod
    def _columns(conn):
        return {row[1] for row in conn.execute("PRAGMA table_info(%s)" % SQLITE_TABLE)}

    def _create_table(self, conn):
        """The table, created when missing; a table made by an older version gets the columns added since."""
        columns = ", ".join('"%s" %s' % (key, self._kind(key)) for key in COLUMNS)
        conn.execute("CREATE TABLE IF NOT EXISTS %s (id INTEGER PRIMARY KEY AUTOINCREMENT, %s)"
                     % (SQLITE_TABLE, columns))
        for key in MIGRATED_COLUMNS:
            if key not in self._columns(conn):
                conn.execute('ALTER TABLE %s ADD COLUMN "%s" %s' % (SQLITE_TABLE, key, self._kind(key)))

    def insert(self, record, write_report):
        """Insert ``record``; ``write_report(id)`` runs inside the transaction and returns the report's path, so a
        failed report leaves no row."""
        conn = self._open(create=True)
        path = None
        try:
            self._create_table(conn)
            conn.execute("BEGIN IMMEDIATE")
            cursor = conn.execute('INSERT INTO %s (%s) VALUES (%s)' % (
                SQLITE_TABLE, ", ".join('"%s"' % key for key in RECORD_FIELDS), ", ".join("?" * len(RECORD_FIELDS))),
                _to_row(record))
            incident_id = cursor.lastrowid
            path = write_report(incident_id)
            conn.execute("UPDATE %s SET markdown = ? WHERE id = ?" % SQLITE_TABLE, (path, incident_id))
            conn.execute("COMMIT")
        except sqlite3.Error as err:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            if path:
                remove_quietly(path)
            raise self._fail(err) from None
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        finally:
            conn.close()
        return incident_id, path

    def select(self, filters, limit):
        if not os.path.exists(self.path):
            return []
        conn = self._open(create=False)
        try:
            if not conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                                (SQLITE_TABLE,)).fetchall():
                return []
            where, params = _where(filters, "sqlite")
            present = self._columns(conn)
            cursor = conn.execute('SELECT id, %s FROM %s%s ORDER BY %s DESC, id DESC LIMIT ?' % (
                ", ".join('"%s"' % key if key in present else 'NULL AS "%s"' % key for key in COLUMNS),
                SQLITE_TABLE, where, WHEN), params + [limit])
            names = [column[0] for column in cursor.description]
            return [_from_row(names, row) for row in cursor.fetchall()]
        except sqlite3.Error as err:
            raise self._fail(err) from None
        finally:
            conn.close()


def _contains(haystack, needle):
    return haystack is not None and needle.casefold() in haystack.casefold()


def table_identifier(name):
    """``table`` or ``schema.table`` as psycopg2 identifier parts."""
    parts = (name or "").split(".")
    if not 1 <= len(parts) <= 2 or not all(parts) or any(len(part.encode()) > 63 for part in parts):
        raise RecoveryError("pg_table must be a table name or schema.table (at most 63 bytes each), got %r" % name)
    return parts


class PostgresStore:
    """A table (``christmas_incidents`` by default) in a PostgreSQL database."""

    def __init__(self, host="localhost", port=5432, dbname=None, user=None, password=None, table=DEFAULT_TABLE):
        self.target = connection.PgTarget(host=host, port=port, dbname=dbname, user=user, password=password)
        self.table_parts = table_identifier(table)
        self.table = ".".join(self.table_parts)
        self.default_markdown_dir = None

    def describe(self):
        return "PostgreSQL %s@%s:%s/%s table %s" % (self.target.user, self.target.host, self.target.port,
                                                    self.target.dbname, self.table)

    def _connect(self):
        conn = connection.connect(self.target, autocommit=False)
        with conn.cursor() as cur:
            cur.execute("SET TIME ZONE 'UTC'")
        return conn

    def _identifier(self):
        return connection.sql.Identifier(*self.table_parts)

    def _create_table(self, cur):
        sql = connection.sql
        kinds = {key: "jsonb NOT NULL DEFAULT '[]'" if key in LIST_FIELDS
                 else "jsonb NOT NULL DEFAULT '{}'" if key in DICT_FIELDS
                 else "timestamptz" if key in TIME_FIELDS
                 else "double precision" if key == "duration_seconds" else "text" for key in COLUMNS}
        for key in REQUIRED_FIELDS + ("finished_at",):
            kinds[key] += " NOT NULL"
        # The kinds hold braces ('{}' defaults): appended as SQL, never formatted.
        columns = sql.SQL(", ").join(sql.SQL("{} ").format(sql.Identifier(key)) + sql.SQL(kinds[key])
                                     for key in COLUMNS)
        # Two plays creating (or extending) the table at once would collide: one at a time.
        cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", ("christmas.recovery incidents " + self.table,))
        cur.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, {})")
                    .format(self._identifier(), columns))
        present = self._columns(cur)
        for key in MIGRATED_COLUMNS:
            if key not in present:  # a table made by an older version
                cur.execute(sql.SQL("ALTER TABLE {} ADD COLUMN {} ").format(self._identifier(), sql.Identifier(key))
                            + sql.SQL(kinds[key]))

    def _columns(self, cur):
        cur.execute("SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
                    "AND NOT attisdropped", (self._identifier().as_string(cur),))
        return {name for (name,) in cur.fetchall()}

    def insert(self, record, write_report):
        sql = connection.sql
        conn = self._connect()
        path = None
        try:
            with conn.cursor() as cur:
                self._create_table(cur)
                row = _to_row(record)
                cur.execute(sql.SQL("INSERT INTO {} ({}) VALUES ({}) RETURNING id").format(
                    self._identifier(), sql.SQL(", ").join(map(sql.Identifier, RECORD_FIELDS)),
                    sql.SQL(", ").join(sql.SQL("%s::jsonb" if key in JSON_FIELDS else "%s")
                                       for key in RECORD_FIELDS)), row)
                incident_id = cur.fetchone()[0]
                path = write_report(incident_id)
                cur.execute(sql.SQL("UPDATE {} SET markdown = %s WHERE id = %s").format(self._identifier()),
                            (path, incident_id))
            conn.commit()
        except connection.psycopg2.Error as err:
            with contextlib.suppress(connection.psycopg2.Error):
                conn.rollback()
            if path:
                remove_quietly(path)
            raise connection.sql_error("incident database %s" % self.describe(), err) from None
        finally:
            conn.close()
        return incident_id, path

    def select(self, filters, limit):
        sql = connection.sql
        conn = self._connect()
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT to_regclass(%s)", (self._identifier().as_string(conn),))
                if cur.fetchone()[0] is None:
                    return []
                where, params = _where(filters, "postgresql")
                present = self._columns(cur)
                cur.execute(sql.SQL("SELECT id, {} FROM {}{} ORDER BY {} DESC, id DESC LIMIT %s").format(
                    sql.SQL(", ").join(sql.Identifier(key) if key in present
                                       else sql.SQL("NULL AS {}").format(sql.Identifier(key)) for key in COLUMNS),
                    self._identifier(), sql.SQL(where), sql.SQL(WHEN)), params + [limit])
                names = [column[0] for column in cur.description]
                return [_from_row(names, row) for row in cur.fetchall()]
        except connection.psycopg2.Error as err:
            raise connection.sql_error("incident database %s" % self.describe(), err) from None
        finally:
            conn.rollback()
            conn.close()


# How each backend says "parameter", "contains (case-insensitive)", "a command contains", and how it takes a time.
DIALECTS = {
    "sqlite": {"param": "?", "contains": "christmas_contains(%s, ?)",
               "in_commands": "EXISTS (SELECT 1 FROM json_each(commands) WHERE christmas_contains(value, ?))",
               "time": format_time},
    "postgresql": {"param": "%s", "contains": "strpos(lower(%s), lower(%%s)) > 0",
                   "in_commands": "EXISTS (SELECT 1 FROM jsonb_array_elements_text(commands) AS c(value) "
                                  "WHERE strpos(lower(c.value), lower(%s)) > 0)",
                   "time": lambda moment: moment},
}


def _where(filters, dialect):
    """The WHERE clause (with a leading space, or empty) and its parameters for ``filters`` in ``dialect``."""
    words = DIALECTS[dialect]
    clauses, params = [], []
    if filters.get("incident_type"):
        clauses.append("lower(incident_type) = lower(%s)" % words["param"])
        params.append(filters["incident_type"])
    if filters.get("status"):
        clauses.append("status = %s" % words["param"])
        params.append(filters["status"])
    if filters.get("procedure"):
        like = "lower(procedure) LIKE lower(%s) ESCAPE '\\'" % words["param"]
        clauses.append("(%s)" % " OR ".join([like] * len(filters["procedure"])))
        params += [procedure_pattern(pattern) for pattern in filters["procedure"]]
    if filters.get("text"):
        searched = [words["contains"] % key for key in SEARCHED_FIELDS] + [words["in_commands"]]
        clauses.append("(%s)" % " OR ".join(searched))
        params += [filters["text"]] * len(searched)
    lower, upper, inclusive = time_bounds(filters.get("since"), filters.get("until"))
    if lower:
        clauses.append("%s >= %s" % (WHEN, words["param"]))
        params.append(words["time"](lower))
    if upper:
        clauses.append("%s %s %s" % (WHEN, "<=" if inclusive else "<", words["param"]))
        params.append(words["time"](upper))
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def procedure_pattern(pattern):
    """A procedure name where ``*`` stands for any run of characters, as a LIKE pattern (escape ``\\``)."""
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%")


def _procedures(procedure):
    """None, one name or a list of names (each may hold ``*``) as a list of non-empty names."""
    if procedure in (None, "", []):
        return []
    names = [procedure] if isinstance(procedure, str) else procedure
    if not isinstance(names, (list, tuple)) or not all(isinstance(name, str) and name.strip() for name in names):
        raise RecoveryError("procedure must be a name or a list of names (* matches anything), got %r" % (procedure,))
    return [name.strip() for name in names]


def open_store(backend="sqlite", db=DEFAULT_DB, pg_host="localhost", pg_port=5432, pg_dbname=None, pg_user=None,
               pg_password=None, pg_table=DEFAULT_TABLE):
    if backend == "sqlite":
        if not db:
            raise RecoveryError("db (the SQLite file) is required with backend sqlite")
        return SqliteStore(db)
    if backend == "postgresql":
        if not pg_dbname:
            raise RecoveryError("pg_dbname is required with backend postgresql")
        return PostgresStore(pg_host, pg_port, pg_dbname, pg_user, pg_password, pg_table or DEFAULT_TABLE)
    raise RecoveryError("backend must be sqlite or postgresql, got %r" % backend)


# ---------------------------------------------------------------- the interface


def _markdown_dir(store, markdown_dir):
    markdown_dir = markdown_dir or store.default_markdown_dir
    if not markdown_dir:
        raise RecoveryError("markdown_dir is required with backend postgresql")
    return markdown_dir


def plan_incident(store, record, markdown_dir=None):
    """Check mode: what record_incident would write, without touching the store or the disk (id and path unknown)."""
    _markdown_dir(store, markdown_dir)
    return {"id": None, "markdown": None, "record": normalize_record(record)}


def record_incident(store, record, markdown_dir=None):
    """Insert ``record`` and write its Markdown report; returns {"id", "markdown", "record" (normalized)}."""
    normalized = normalize_record(record)
    markdown_dir = _markdown_dir(store, markdown_dir)
    incident_id, path = store.insert(normalized, lambda new_id: write_markdown(markdown_dir, normalized, new_id))
    return {"id": incident_id, "markdown": path, "record": normalized}


def find_incidents(store, incident_type=None, text=None, since=None, until=None, status=None, limit=20,
                   procedure=None):
    """Records (with id and markdown path) matching every filter given, newest first; ``procedure`` is a name or a
    list of names, any of which may match, ``*`` standing for any run of characters (``drill_*``)."""
    check_limit(limit)
    filters = {"incident_type": incident_type, "text": text, "since": since, "until": until, "status": status,
               "procedure": _procedures(procedure)}
    time_bounds(since, until)  # bad dates fail before the store is opened
    return store.select(filters, limit)


def summary_line(incident):
    """One line for an operator: date, type, status, duration, symptoms, report."""
    when = (incident["started_at"] or incident["finished_at"]).replace("T", " ")
    duration = "-" if incident["duration_seconds"] is None else "%gs" % incident["duration_seconds"]
    symptoms = " ".join((incident["incident_symptoms"] or incident["error"] or "-").split())
    if len(symptoms) > 120:
        symptoms = symptoms[:117] + "..."
    return "%s  %s  %s  %s  %s  %s" % (when, incident["incident_type"] or incident["procedure"], incident["status"],
                                       duration, symptoms, incident["markdown"] or "-")


# ---------------------------------------------------------------- module options


def store_argument_spec():
    """Options naming the incident database, shared by christmas_incident and christmas_incident_info."""
    return {
        "backend": {"type": "str", "default": "sqlite", "choices": ["sqlite", "postgresql"]},
        "db": {"type": "path", "default": DEFAULT_DB},
        "pg_host": {"type": "str", "default": "localhost"},
        "pg_port": {"type": "int", "default": 5432},
        "pg_dbname": {"type": "str"},
        "pg_user": {"type": "str"},
        "pg_password": {"type": "str", "no_log": True},
        "pg_table": {"type": "str", "default": DEFAULT_TABLE},
    }


def store_from_params(params):
    return open_store(params["backend"], params["db"], params["pg_host"], params["pg_port"], params["pg_dbname"],
                      params["pg_user"], params["pg_password"], params["pg_table"])

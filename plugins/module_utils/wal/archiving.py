# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""WAL archiving into a pgBackRest repository: which server settings must change (and whether that takes a restart
or a reload), applying them with ALTER SYSTEM, and archiving now (a commit of our own, a WAL switch, a wait until
the archiver has the segment).

The functions take a DB-API connection (psycopg2 or psycopg) of a superuser in autocommit mode and run plain SQL."""

from __future__ import annotations

import datetime
import time

from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError

RESTART_SETTINGS = ("wal_level", "archive_mode")
RELOAD_SETTINGS = ("archive_command", "archive_timeout")
WAL_LEVELS_OK = ("replica", "logical")
ARCHIVE_MODES_OK = ("on", "always")
MARKER_PREFIX = "christmas.recovery"
POLL = 0.2


def _rows(conn, statement):
    with conn.cursor() as cur:
        cur.execute(statement)
        return cur.fetchall() if cur.description else []


def _require_autocommit(conn):
    if not getattr(conn, "autocommit", False):
        raise RecoveryError("the PostgreSQL connection must be in autocommit mode (ALTER SYSTEM and the archive "
                            "marker cannot run inside a transaction block)")


def sql_literal(value):
    """A string literal for ALTER SYSTEM, which takes no bind parameters (standard_conforming_strings is on)."""
    if "\x00" in value:
        raise RecoveryError("a setting value holds a NUL byte")
    return "'%s'" % value.replace("'", "''")


def read_settings(conn):
    """{name: (running value, value in the config files or None)} of the archiving settings. The files' value
    tells a change waiting for its restart; pg_settings shows archive_command as "(disabled)" while archive_mode is
    off, the files show the real one."""
    names = RESTART_SETTINGS + RELOAD_SETTINGS
    running = dict(_rows(conn, "SELECT name, setting FROM pg_settings WHERE name IN (%s)"
                         % ", ".join(sql_literal(name) for name in names)))
    configured = {}
    for name, setting in _rows(conn, "SELECT name, setting FROM pg_file_settings WHERE error IS NULL AND name IN "
                                     "(%s) ORDER BY seqno" % ", ".join(sql_literal(name) for name in names)):
        configured[name] = setting  # the last line wins, as in the server
    return {name: (running.get(name), configured.get(name)) for name in names}


def wanted_value(name, current, repository, archive_timeout):
    """The value ``name`` must have, or None when ``current`` will do."""
    if name == "wal_level":
        return None if current in WAL_LEVELS_OK else "replica"
    if name == "archive_mode":
        return None if current in ARCHIVE_MODES_OK else "on"
    if name == "archive_command":
        return None if current == repository.archive_command() else repository.archive_command()
    return None if str(current) == str(int(archive_timeout)) else str(int(archive_timeout))


def archiving_plan(conn, repository, take_over=False, archive_timeout=60):
    """What must change for the server to archive into ``repository``: {"changes": {name: {"from", "to"}},
    "restart_needed", "reload_needed", "changed"}. wal_level and archive_mode take a restart, archive_command and
    archive_timeout a reload. A change already in the config files but waiting for its restart is not planned
    again, yet still asks for the restart. Touches nothing. An archive_command of another tool is refused unless
    ``take_over``: two archivers of one cluster would each hold half of its WAL."""
    settings = read_settings(conn)
    changes, restart = {}, False
    for name, (running, configured) in settings.items():
        effective = configured if configured is not None else running
        if name == "archive_command":
            effective = running if running not in (None, "(disabled)") else configured or ""
            if effective and effective != repository.archive_command() and not take_over:
                raise RecoveryError("archive_command is already set to %r, which does not archive into pgBackRest "
                                    "repository %s: another tool archives this cluster's WAL; take it over "
                                    "explicitly (take_over) or stop that tool first" % (effective, repository.path))
        wanted = wanted_value(name, effective, repository, archive_timeout)
        if wanted is not None:
            changes[name] = {"from": effective, "to": wanted}
        if name in RESTART_SETTINGS and wanted_value(name, running, repository, archive_timeout) is not None:
            restart = True
    reload_needed = any(name in RELOAD_SETTINGS for name in changes)
    return {"changes": changes, "restart_needed": restart, "reload_needed": reload_needed,
            "changed": bool(changes)}


def apply_archiving(conn, plan):
    """ALTER SYSTEM for every planned change, then pg_reload_conf(); the restart (when the plan needs one) is the
    caller's (PgCtlServer.restart). Returns the plan."""
    _require_autocommit(conn)
    for name, change in plan["changes"].items():
        _rows(conn, "ALTER SYSTEM SET %s = %s" % (name, sql_literal(change["to"])))
    if plan["changes"]:
        _rows(conn, "SELECT pg_reload_conf()")
    return plan


def _segment_reached(archived, segment):
    """pg_stat_archiver's last_archived_wal may also be a .history or .backup file: compare segment names."""
    return bool(archived) and len(archived) >= 24 and archived[:24] >= segment


def archive_now(conn, repository, timeout=60):
    """Make every commit so far restorable: write a commit of our own (a transactional logical message, it touches
    no table, so that even an idle database has a commit after every point), switch WAL and wait until the archiver
    reports that segment archived. Returns {"segment", "time", "lsn", "seconds"}: ``time`` is taken inside the
    marker transaction, so a restore to it is reachable and holds every commit made before it. Fails naming the
    WAL when the archiver reports a failure, or at ``timeout``."""
    _require_autocommit(conn)
    started = time.monotonic()
    command = _rows(conn, "SELECT setting FROM pg_settings WHERE name = 'archive_command'")[0][0]
    if command != repository.archive_command():
        raise RecoveryError("this server does not archive into pgBackRest repository %s (archive_command is %r): "
                            "set up archiving first" % (repository.path, command))
    _rows(conn, "SELECT pg_stat_clear_snapshot()")
    failed_before = _rows(conn, "SELECT failed_count FROM pg_stat_archiver")[0][0]
    lsn, stamp = _rows(conn, "SELECT pg_logical_emit_message(true, %s, 'archive ' || clock_timestamp()), "
                             "clock_timestamp()" % sql_literal(MARKER_PREFIX))[0]
    segment = _rows(conn, "SELECT pg_walfile_name(pg_switch_wal())")[0][0]
    deadline = started + timeout
    while True:
        _rows(conn, "SELECT pg_stat_clear_snapshot()")
        archived, failed, failed_count, archived_at, failed_at = _rows(
            conn, "SELECT last_archived_wal, last_failed_wal, failed_count, last_archived_time, last_failed_time "
                  "FROM pg_stat_archiver")[0]
        if _segment_reached(archived, segment):
            return {"segment": segment, "time": _utc(stamp), "lsn": str(lsn),
                    "seconds": round(time.monotonic() - started, 3)}
        if failed_count > failed_before and (archived_at is None or failed_at >= archived_at):
            raise RecoveryError("archiving WAL failed: the archiver's last failure is %s (%d failures); see the "
                                "server log and %s" % (failed, failed_count, repository.config_dir))
        if time.monotonic() > deadline:
            raise RecoveryError("WAL segment %s not archived after %d s (last archived: %s)" % (
                segment, timeout, archived or "none"))
        time.sleep(POLL)


def _utc(value):
    return value.astimezone(datetime.UTC)

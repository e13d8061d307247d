# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Restoring a database: every check before anything changes, the load into a scratch database, its row counts,
then the swap."""

from __future__ import annotations

import os
import tempfile
import time

from ansible_collections.christmas.recovery.plugins.module_utils.core import commands
from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.core.fsutil import require_free_space
from ansible_collections.christmas.recovery.plugins.module_utils.db import timescaledb
from ansible_collections.christmas.recovery.plugins.module_utils.db.connection import (
    connect,
    execute,
    fetch,
    one,
    session,
    sql_error,
)
from ansible_collections.christmas.recovery.plugins.module_utils.db.db_globals import (
    MARKER_QUERY,
    MARKER_SETTING,
    apply_database_properties,
    create_missing_roles,
    load_globals,
    marker_value,
)
from ansible_collections.christmas.recovery.plugins.module_utils.db.postgres import (
    TIMESCALEDB,
    count_rows,
    find_pg_program,
    major_of,
    server_facts,
    tool_major,
)

try:
    import psycopg2
    from psycopg2 import sql
except ImportError:  # reported by the modules with missing_required_lib
    pass


def check_dump_readable(target, dump_dir):
    """Deep check of a directory-format dump: pg_restore must list its table of contents."""
    pg_restore = find_pg_program("pg_restore", target)
    commands.run([pg_restore, "--list", dump_dir], "pg_restore --list %s" % dump_dir)


def _database_exists(conn, name):
    return bool(fetch(conn, "SELECT 1 FROM pg_database WHERE datname = %s", (name,)))


def _marker(conn, name):
    return marker_value(fetch(conn, MARKER_QUERY, (name, MARKER_SETTING + "=%")))


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
    available = {row[0] for row in fetch(conn, "SELECT name FROM pg_available_extensions")}
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
    existing = {row[0] for row in fetch(conn, "SELECT rolname FROM pg_roles")}
    missing = [name for name in meta["roles"] if name not in existing]
    superuser, createdb, createrole = fetch(
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
        data_dir = one(conn, "SELECT current_setting('data_directory')")
        if os.path.isdir(data_dir):
            free = require_free_space(data_dir, int(meta["size_bytes"] * 1.1), "database %s" % target.dbname)
            return "%d MiB free, about %d MiB needed" % (free // 2**20, meta["size_bytes"] // 2**20)
    return "not checked: data directory not visible from this host"


def _installed_version(target, extension):
    with session(target) as conn:
        rows = fetch(conn, "SELECT extversion FROM pg_extension WHERE extname = %s", (extension,))
    return rows[0][0] if rows else None


def _database_size(target, name):
    with session(target, target.maintenance_db) as conn:
        return one(conn, "SELECT pg_database_size(%s)", (name,))


def _counts_match(target, expected, dbname=None):
    with session(target, dbname) as conn:
        return count_rows(conn, expected) == expected


def _terminate(conn, name):
    execute(conn, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s"
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
    globals_data = load_globals(globals_path)  # parsed against its schema before any check or change, dry runs too
    preflight = preflight_restore(target, manifest, backup_dir)
    result = {"database": target.dbname, "preflight": preflight, "roles_created": [], "roles_need_password": []}
    if preflight["already_restored"] and not force:
        result.update(changed=False, state="already restored from set %s (row counts match)" % manifest["set_id"])
        return result
    if check_mode:
        result.update(changed=True, state="would restore %s from set %s" % (target.dbname, manifest["set_id"]))
        return result
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
            apply_database_properties(admin, scratch, globals_data["database"], manifest["set_id"])
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
            execute(conn, sql.SQL("CREATE EXTENSION IF NOT EXISTS {} WITH SCHEMA {} VERSION {}").format(
                sql.Identifier(TIMESCALEDB), sql.Identifier(tsdb["schema"]), sql.Literal(tsdb["version"])))
            execute(conn, sql.SQL("SELECT {}()").format(sql.Identifier("timescaledb_pre_restore")))
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
    execute(conn, sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
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

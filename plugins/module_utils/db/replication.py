# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Streaming replication of PostgreSQL 15: what a server is (primary, standby, down), a primary made ready to be
replicated, a hot standby checked and rebuilt from its primary with pg_basebackup, promotion and fencing."""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import socket
import time

from ansible_collections.christmas.recovery.plugins.module_utils.core import commands
from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.db import connection, postgres
from ansible_collections.christmas.recovery.plugins.module_utils.db.replication_conf import (
    check_slot_name,
    conninfo,
    parse_conninfo,
    password_matches,
    read_auto_conf,
    rebuild_stamp,
    same_host,
    scram_verifier,
    set_auto_conf,
    setting_satisfied,
    settings_to_change,
    standby_problem,
    wanted_settings,
)

try:
    import psycopg2
    from psycopg2 import sql
    from psycopg2.extras import PhysicalReplicationConnection
except ImportError:  # reported by the module with missing_required_lib
    pass


# Seconds a standby that answers and is in recovery gets to (re)connect its wal receiver before it is judged.
HEALTH_GRACE = 5.0


# ---------------------------------------------------------------- pure helpers


INFO_QUERY = """
SELECT pg_is_in_recovery(), (SELECT system_identifier FROM pg_control_system())::text,
       (SELECT timeline_id FROM pg_control_checkpoint()),
       CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END::text,
       CASE WHEN pg_is_in_recovery() THEN NULL
            ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END,
       current_setting('server_version')
"""

RECEIVER_QUERY = """
SELECT status, sender_host, sender_port, slot_name, latest_end_lsn::text, received_tli,
       pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::bigint
FROM pg_stat_wal_receiver
"""

REPLICAS_QUERY = """
SELECT application_name, client_addr::text, state, sync_state, sent_lsn::text, replay_lsn::text,
       pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint, extract(epoch FROM replay_lag)::float8
FROM pg_stat_replication ORDER BY application_name, client_addr
"""

# A primary holding none of these is a cluster as the package made it, not a second primary.
USER_DATABASES_QUERY = "SELECT count(*) FROM pg_database WHERE datname NOT IN ('postgres', 'template0', 'template1')"
SLOTS_QUERY = """
SELECT slot_name::text, active, restart_lsn::text FROM pg_replication_slots WHERE slot_type = 'physical'
ORDER BY slot_name
"""


def is_no_answer(err):
    """A RecoveryError from connect() that means the server is not there (down, starting, stopping)."""
    return bool(connection.STARTING_RE.search(str(err)) or re.search(r"timeout expired|could not connect", str(err)))


def server_info(target):
    """What the local server is; ``role: down`` (with ``error``) when it does not answer."""
    try:
        conn = connection.connect(target, dbname="postgres")
    except RecoveryError as err:
        if is_no_answer(err):
            return {"role": "down", "in_recovery": None, "error": str(err)}
        raise
    try:
        return read_info(conn)
    except psycopg2.Error as err:
        raise connection.sql_error("reading replication state of %s:%s" % (target.host, target.port), err) from None
    finally:
        conn.close()


def read_info(conn):
    in_recovery, system_identifier, checkpoint_tli, lsn, wal_tli, version = connection.fetch(conn, INFO_QUERY)[0]
    info = {"role": "standby" if in_recovery else "primary", "in_recovery": in_recovery,
            "system_identifier": system_identifier, "lsn": lsn, "server_version": version,
            # A promoted server's control file keeps the old timeline until its next checkpoint; its WAL does not.
            "timeline": wal_tli if wal_tli is not None else checkpoint_tli}
    if in_recovery:
        rows = connection.fetch(conn, RECEIVER_QUERY)
        info["wal_receiver"] = None
        info["replay_lag_bytes"] = None
        if rows:
            status, host, port, slot, latest_end, _tli, lag = rows[0]
            info["wal_receiver"] = {"status": status, "sender_host": host, "sender_port": port, "slot_name": slot,
                                    "latest_end_lsn": latest_end}
            info["replay_lag_bytes"] = lag
    else:
        info["replicas"] = [
            {"application_name": name, "client_addr": addr, "state": state, "sync_state": sync, "sent_lsn": sent,
             "replay_lsn": replay, "lag_bytes": lag, "replay_lag_seconds": lag_seconds}
            for name, addr, state, sync, sent, replay, lag, lag_seconds in connection.fetch(conn, REPLICAS_QUERY)]
        info["slots"] = [{"slot_name": name, "active": active, "restart_lsn": restart}
                         for name, active, restart in connection.fetch(conn, SLOTS_QUERY)]
        info["user_databases"] = connection.one(conn, USER_DATABASES_QUERY)
    return info


# ---------------------------------------------------------------- state: primary

SETTINGS_QUERY = """
SELECT s.name, s.setting, s.source, s.context, s.boot_val, s.pending_restart,
       (SELECT f.setting FROM pg_file_settings f
        WHERE f.name = s.name AND (f.error IS NULL OR f.error = 'setting could not be applied')
        ORDER BY f.seqno DESC LIMIT 1)
FROM pg_settings s WHERE s.name = ANY(%(names)s)
"""


def _settings(conn, names):
    return {name: {"setting": setting, "source": source, "context": context, "boot_val": boot_val,
                   "pending_restart": pending, "file_value": file_value}
            for name, setting, source, context, boot_val, pending, file_value
            in connection.fetch(conn, SETTINGS_QUERY, {"names": list(names)})}


def ensure_primary(target, replication_user, replication_password, slots, drop_other_slots=False,
                   max_wal_senders=10, max_replication_slots=10, listen_addresses="*", check_mode=False,
                   progress=print):
    """ALTER SYSTEM what differs, the replication role, the slots; ``restart_required`` from pending_restart."""
    for slot in slots:
        check_slot_name(slot)
    with connection.session(target, "postgres") as conn:
        try:
            return _ensure_primary(conn, replication_user, replication_password, slots, drop_other_slots,
                                   wanted_settings(max_wal_senders, max_replication_slots, listen_addresses),
                                   check_mode, progress)
        except psycopg2.Error as err:
            raise connection.sql_error("preparing %s:%s for replication" % (target.host, target.port), err) from None


def _ensure_primary(conn, user, password, slots, drop_other_slots, wanted, check_mode, progress):
    if connection.one(conn, "SELECT pg_is_in_recovery()"):
        raise RecoveryError("the server is in recovery (a standby); state primary needs a primary")
    if not connection.one(conn, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"):
        raise RecoveryError("%s is not a superuser; state primary needs one" % connection.one(
            conn, "SELECT current_user"))
    result = {"changed": False, "settings_changed": [], "role_changed": False, "slots_created": [],
              "slots_dropped": [], "slots_pending": [], "restart_required": False}
    current = _settings(conn, wanted)
    changes = settings_to_change(wanted, current)
    for name in changes:
        progress("ALTER SYSTEM SET %s = %s" % (name, wanted[name]))
        if not check_mode:
            connection.execute(conn, sql.SQL("ALTER SYSTEM SET {} = {}").format(
                sql.Identifier(name), sql.Literal(wanted[name])))
    result["settings_changed"] = changes
    if changes and not check_mode:
        connection.execute(conn, "SELECT pg_reload_conf()")
        current = _wait_reloaded(conn, wanted, changes)
    result["restart_required"] = any(current[name]["pending_restart"] for name in wanted) or (
        check_mode and any(current[name]["context"] == "postmaster" for name in changes))
    result["role_changed"] = _ensure_role(conn, user, password, check_mode, progress)
    if current["wal_level"]["setting"] == "minimal" or current["max_replication_slots"]["setting"] == "0":
        # The server cannot hold slots before its restart: the next run after it creates them.
        existing = [name for (name,) in connection.fetch(conn, "SELECT slot_name::text FROM pg_replication_slots")]
        result["slots_pending"] = [slot for slot in slots if slot not in existing]
        progress("slots %s wait for the restart" % ", ".join(result["slots_pending"]))
    else:
        result["slots_created"], result["slots_dropped"] = _ensure_slots(conn, slots, drop_other_slots, check_mode,
                                                                         progress)
    result["changed"] = bool(changes or result["role_changed"] or result["slots_created"] or result["slots_dropped"])
    return result


def _wait_reloaded(conn, wanted, changes, timeout=10.0):
    """pg_reload_conf() only signals the postmaster: wait until each change is applied or pending a restart."""
    deadline = time.monotonic() + timeout
    while True:
        current = _settings(conn, wanted)
        if all(current[name]["pending_restart"] or setting_satisfied(name, wanted[name], current[name]["setting"])
               for name in changes) or time.monotonic() > deadline:
            return current
        time.sleep(0.1)


def _ensure_role(conn, user, password, check_mode, progress):
    rows = connection.fetch(conn, "SELECT rolsuper, rolcanlogin, rolreplication, rolpassword FROM pg_authid "
                                 "WHERE rolname = %(name)s", {"name": user})
    role = sql.Identifier(user)
    if not rows:
        if password is None:
            raise RecoveryError("replication role %s does not exist and no replication_password is given" % user)
        progress("creating replication role %s" % user)
        if not check_mode:
            connection.execute(conn, sql.SQL("CREATE ROLE {} LOGIN REPLICATION PASSWORD {}").format(
                role, sql.Literal(scram_verifier(password))))
        return True
    superuser, login, replication, stored = rows[0]
    if superuser:
        raise RecoveryError("replication role %s is a superuser; use a dedicated role with only REPLICATION" % user)
    changed = False
    if not (login and replication):
        progress("granting LOGIN REPLICATION to %s" % user)
        changed = True
        if not check_mode:
            connection.execute(conn, sql.SQL("ALTER ROLE {} LOGIN REPLICATION").format(role))
    if password is not None and not password_matches(password, stored, user):
        progress("setting the password of %s" % user)
        changed = True
        if not check_mode:
            connection.execute(conn, sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                role, sql.Literal(scram_verifier(password))))
    return changed


def _ensure_slots(conn, slots, drop_other_slots, check_mode, progress):
    existing = dict(connection.fetch(conn, "SELECT slot_name::text, slot_type FROM pg_replication_slots"))
    created, dropped = [], []
    for slot in slots:
        if slot in existing:
            if existing[slot] != "physical":
                raise RecoveryError("replication slot %s exists but is %s, not physical" % (slot, existing[slot]))
            continue
        progress("creating physical replication slot %s" % slot)
        created.append(slot)
        if not check_mode:
            connection.execute(conn, "SELECT pg_create_physical_replication_slot(%(name)s, true)", {"name": slot})
    if drop_other_slots:
        active = dict(connection.fetch(conn, "SELECT slot_name::text, active FROM pg_replication_slots "
                                            "WHERE slot_type = 'physical'"))
        for slot in sorted(set(active) - set(slots)):
            if active[slot]:
                raise RecoveryError("replication slot %s is in use by a connected standby; not dropping it" % slot)
            progress("dropping physical replication slot %s" % slot)
            dropped.append(slot)
            if not check_mode:
                connection.execute(conn, "SELECT pg_drop_replication_slot(%(name)s)", {"name": slot})
    return created, dropped


# ---------------------------------------------------------------- state: standby


def _connect_replication(host, port, user, password):
    try:
        return psycopg2.connect(host=host, port=port, user=user, password=password, dbname="replication",
                                connect_timeout=10, application_name="christmas.recovery",
                                connection_factory=PhysicalReplicationConnection)
    except psycopg2.Error as err:
        first = (str(err).strip().splitlines() or ["unknown error"])[0]
        raise RecoveryError("cannot open a replication connection to the primary %s@%s:%s: %s" % (
            user, host, port, first)) from None


def check_primary(host, port, user, password, slot_name):
    """Before the local data is touched: the primary answers a replication connection with these credentials and
    holds the slot. Returns its system identifier, timeline and server_version_num."""
    conn = _connect_replication(host, port, user, password)
    version_num = conn.server_version
    try:
        with conn.cursor() as cur:
            cur.execute("IDENTIFY_SYSTEM")
            system_identifier, timeline = cur.fetchone()[:2]
            if slot_name:
                cur.execute("READ_REPLICATION_SLOT %s" % check_slot_name(slot_name))
                row = cur.fetchone()
                if not row or row[0] is None:
                    raise RecoveryError("replication slot %s does not exist on the primary %s:%s (state primary "
                                        "creates it)" % (slot_name, host, port))
                if row[0] != "physical":
                    raise RecoveryError("replication slot %s on %s:%s is %s, not physical" % (
                        slot_name, host, port, row[0]))
    except psycopg2.Error as err:
        raise connection.sql_error("asking the primary %s:%s" % (host, port), err) from None
    finally:
        conn.close()
    return str(system_identifier), int(timeline), version_num


def _standby_state(target, primary_host, primary_port, slot_name, seconds, while_down):
    """(info, problem), waiting up to ``seconds`` for the wal receiver to stream; a server that is down or a primary
    is waited for only ``while_down`` (as after a start)."""
    deadline = time.monotonic() + seconds
    while True:
        info = server_info(target)
        problem = standby_problem(info, primary_host, primary_port, slot_name, same_host)
        if problem is None or time.monotonic() >= deadline or (info["role"] != "standby" and not while_down):
            return info, problem
        time.sleep(0.5)


def _dir_is_empty(path):
    return not os.path.lexists(path) or (os.path.isdir(path) and not os.path.islink(path) and not os.listdir(path))


def postmaster_alive(data_dir):
    """Whether a postmaster.pid in ``data_dir`` names a live process."""
    try:
        with open(os.path.join(data_dir, "postmaster.pid"), encoding="ascii") as handle:
            pid = int(handle.readline().strip())
    except (OSError, ValueError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_server(target, stop_command, data_dir, timeout, progress):
    """Run ``stop_command`` (its failure is fine when nothing was running) and wait until the server is gone."""
    progress("stopping PostgreSQL: %s" % " ".join(stop_command))
    try:
        commands.run(stop_command, "stop command %s" % " ".join(stop_command))
    except RecoveryError as err:
        if postmaster_alive(data_dir) or server_info(target)["role"] != "down":
            raise RecoveryError("%s; the server is still running" % err) from None
    deadline = time.monotonic() + timeout
    while postmaster_alive(data_dir) or server_info(target)["role"] != "down":
        if time.monotonic() > deadline:
            raise RecoveryError("PostgreSQL on %s:%s still runs %d s after %s" % (
                target.host, target.port, timeout, " ".join(stop_command)))
        time.sleep(0.2)


def _owner_of_parent(data_dir):
    info = os.lstat(os.path.dirname(os.path.abspath(data_dir)))
    return info.st_uid, info.st_gid


def as_user_argv(argv, uid):
    """``argv`` run as ``uid``: directly when we already are that user, else through runuser (we are root)."""
    if os.geteuid() == uid:
        return list(argv)
    if os.geteuid() != 0:
        raise RecoveryError("pg_basebackup must run as %s (owner of the data directory's parent); run the module "
                            "as root or as that user" % pwd.getpwuid(uid).pw_name)
    return [commands.find_program("runuser", ["/usr/sbin", "/sbin"]), "-u", pwd.getpwuid(uid).pw_name, "--",
            *argv]


@contextlib.contextmanager
def password_file(password, uid, user):
    """A 0600 PGPASSFILE readable only by ``uid``: an anonymous in-memory file, never on disk, in neither argv
    nor environ; gone with the last process holding it."""
    fd = os.memfd_create("pgpass")
    try:
        os.fchmod(fd, 0o600)
        if os.geteuid() == 0:
            os.fchown(fd, uid, -1)  # pg_basebackup reopens /proc/self/fd/N as that user
        os.write(fd, connection.pgpass_line(password, user).encode("utf-8"))
        yield fd
    finally:
        os.close(fd)


def chown_tree(root, uid, gid):
    """chown -R without following symlinks; the root itself 0700 (PostgreSQL refuses anything wider)."""
    os.lchown(root, uid, gid)
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            os.lchown(os.path.join(base, name), uid, gid)
    os.chmod(root, 0o700)


def write_standby_conninfo(data_dir, primary_host, primary_port, user, password, application_name, uid, gid):
    """primary_conninfo as the standby keeps it (pg_basebackup -R would record our temporary passfile)."""
    path = os.path.join(data_dir, "postgresql.auto.conf")
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    params = parse_conninfo(read_auto_conf(text, "primary_conninfo"))
    params.pop("passfile", None)
    params.update(host=primary_host, port=str(primary_port), user=user, password=password,
                  application_name=application_name)
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(set_auto_conf(text, "primary_conninfo", conninfo(params)))
            handle.flush()
            os.fsync(handle.fileno())
        os.lchown(tmp, uid, gid)
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _is_new_cluster(info):
    """A cluster as the package made it (a primary with no database but the defaults): nothing to lose, so a first
    build needs no rebuild flag. Its data directory is still kept aside."""
    return info["role"] == "primary" and info.get("user_databases") == 0


def ensure_standby(target, primary_host, primary_port, replication_user, replication_password, slot_name, data_dir,
                   stop_command, start_command, rebuild=False, keep_old=True, wait_seconds=60,
                   application_name=None, check_mode=False, progress=print, health_grace=HEALTH_GRACE):
    """Leave a healthy standby alone; build one with pg_basebackup when its data dir is empty or its cluster new, and
    rebuild a broken one only with ``rebuild``."""
    if slot_name:
        check_slot_name(slot_name)
    data_dir = os.path.abspath(data_dir)
    info, problem = _standby_state(target, primary_host, primary_port, slot_name, health_grace, while_down=False)
    result = {"changed": False, "rebuilt": False, "healthy": problem is None, "problem": problem,
              "old_data_dir": None, "rebuild_seconds": None, "role": info["role"]}
    if problem is None:
        result.update(wal_receiver=info["wal_receiver"], replay_lag_bytes=info["replay_lag_bytes"])
        return result
    empty = _dir_is_empty(data_dir)
    if not (empty or rebuild or _is_new_cluster(info)):
        raise RecoveryError("standby %s %s; run with christmas_replica_rebuild: true (module option rebuild) to "
                            "rebuild it from the primary" % (socket.gethostname(), problem), problem=problem)
    if replication_password is None:
        raise RecoveryError("rebuilding the standby needs replication_password")
    progress("standby %s; rebuilding it from %s:%s" % (problem, primary_host, primary_port))
    result["changed"] = True
    if check_mode:
        result["would_move_old_data_dir"] = not empty and keep_old
        return result
    started = time.monotonic()
    primary_id, _tli, version_num = check_primary(primary_host, primary_port, replication_user,
                                                  replication_password, slot_name)
    progress("primary %s:%s answers (system identifier %s)" % (primary_host, primary_port, primary_id))
    uid, gid = _owner_of_parent(data_dir)
    pg_basebackup = postgres.find_pg_program("pg_basebackup", target, postgres.major_of(version_num))
    stop_server(target, stop_command, data_dir, wait_seconds, progress)
    if not empty:
        aside = "%s.pre-rebuild-%s" % (data_dir, rebuild_stamp())
        progress("moving %s aside to %s" % (data_dir, aside))
        os.rename(data_dir, aside)
        if keep_old:
            result["old_data_dir"] = aside
        else:
            shutil.rmtree(aside)
    if not os.path.isdir(data_dir):
        os.mkdir(data_dir, 0o700)
    chown_tree(data_dir, uid, gid)
    argv = [pg_basebackup, "-h", primary_host, "-p", str(primary_port), "-U", replication_user, "-D", data_dir,
            "-R", "-X", "stream", "-c", "fast", "--no-password"]
    if slot_name:
        argv += ["-S", slot_name]
    progress("pg_basebackup from %s:%s into %s" % (primary_host, primary_port, data_dir))
    with password_file(replication_password, uid, replication_user) as fd:
        env = {"PGPASSFILE": "/proc/self/fd/%d" % fd, "PGPASSWORD": None, "PGSERVICE": None, "PGSERVICEFILE": None,
               "PGAPPNAME": "christmas.recovery"}
        proc = commands.start(as_user_argv(argv, uid), env=env, pass_fds=(fd,))
        commands.finish(proc, "pg_basebackup from %s:%s" % (primary_host, primary_port))
    write_standby_conninfo(data_dir, primary_host, primary_port, replication_user, replication_password,
                           application_name or socket.gethostname().split(".")[0], uid, gid)
    chown_tree(data_dir, uid, gid)
    progress("starting PostgreSQL: %s" % " ".join(start_command))
    commands.run(start_command, "start command %s" % " ".join(start_command))
    info, problem = _standby_state(target, primary_host, primary_port, slot_name, wait_seconds, while_down=True)
    if problem is not None:
        raise RecoveryError("the rebuilt standby %s %s after %d s" % (socket.gethostname(), problem, wait_seconds),
                            old_data_dir=result["old_data_dir"])
    result.update(rebuilt=True, healthy=True, role=info["role"], wal_receiver=info["wal_receiver"],
                  replay_lag_bytes=info["replay_lag_bytes"], rebuild_seconds=round(time.monotonic() - started, 3))
    return result


# ---------------------------------------------------------------- state: promoted and fenced



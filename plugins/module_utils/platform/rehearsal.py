# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Restore rehearsals: a set deep-verified, then restored into a throwaway PostgreSQL cluster, Redis server and
config directory on scratch ports of this host, validated there, recorded beside its manifest and torn down.

The scratch directory holds everything (cluster, Redis dir, config tree); it is locked (flock) by the running
rehearsal and removed at the end, also when anything failed. The servers die with the process that started them; a
directory a killed run left is cleaned by the next run, its servers first. The scratch password is made here and
reaches the servers only through an in-memory file (initdb) and stdin (Redis): never argv, environ or disk.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import signal
import socket
import subprocess
import time

from ansible_collections.christmas.recovery.plugins.module_utils.core import commands
from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError, one_line
from ansible_collections.christmas.recovery.plugins.module_utils.db import connection, postgres
from ansible_collections.christmas.recovery.plugins.module_utils.db.replication_conf import scram_verifier
from ansible_collections.christmas.recovery.plugins.module_utils.platform import validation
from ansible_collections.christmas.recovery.plugins.module_utils.platform.scratch import (
    RehearsalBusy,
    ScratchDir,
    Server,
    check_reachable,
    free_port,
    last_log_line,
    run_as,
    spawn,
    wait_ready,
)
from ansible_collections.christmas.recovery.plugins.module_utils.redis.redis_keys import RedisTarget
from ansible_collections.christmas.recovery.plugins.module_utils.sets import restore_set
from ansible_collections.christmas.recovery.plugins.module_utils.sets.manifest import (
    MANIFEST_RE,
    resolve_manifest_path,
)
from ansible_collections.christmas.recovery.plugins.module_utils.sets.proof import add_rehearsal, proof_name

DEFAULT_SCRATCH_DIR = "/var/tmp/christmas-rehearsal"
SUPERUSER = "postgres"
def check_ports(scratch_ports, production_ports):
    """A scratch port may be 0 (a free one is chosen) but never one of the production servers' nor the other's."""
    for what, port in scratch_ports.items():
        if port < 0 or port > 65535:
            raise RecoveryError("scratch %s port %d is not a port number" % (what, port))
        if port and port in production_ports:
            raise RecoveryError("scratch %s port %d is a production port (%s): choose another or 0 for a free one" % (
                what, port, ", ".join(str(p) for p in sorted(production_ports))))
    given = [port for port in scratch_ports.values() if port]
    if len(given) != len(set(given)):
        raise RecoveryError("the scratch database and Redis ports are both %d" % given[0])


def redis_config(port, directory, password, databases):
    """redis.conf of the scratch server: loopback only, no persistence of its own, in the foreground."""
    escaped = password.replace("\\", "\\\\").replace('"', '\\"')
    return "\n".join([
        "bind 127.0.0.1", "port %d" % port, "protected-mode yes", "daemonize no", "dir %s" % directory,
        "pidfile %s" % os.path.join(directory, "redis.pid"), 'logfile ""', 'save ""', "appendonly no",
        "databases %d" % databases, 'requirepass "%s"' % escaped, "",
    ])


def redis_databases(manifest):
    """Enough logical databases for every one the set has keys in (16 at least, as Redis has by default)."""
    used = [int(db) for db in manifest.get("redis", {}).get("keys_per_db_at_start", {})]
    return max([16] + [db + 1 for db in used])


# ---------------------------------------------------------------- processes of the scratch directory


def _timescaledb_preload(pg_bin, manifest):
    """A real TimescaleDB must be preloaded; its loader library tells it from a SQL-only package."""
    if postgres.TIMESCALEDB not in manifest.get("db", {}).get("extensions", {}):
        return []
    pkglibdir = None
    pg_config = os.path.join(os.path.dirname(pg_bin), "pg_config")
    if os.access(pg_config, os.X_OK):
        with contextlib.suppress(RecoveryError):
            pkglibdir = commands.run([pg_config, "--pkglibdir"], "pg_config --pkglibdir").strip()
    pkglibdir = pkglibdir or os.path.join(os.path.dirname(os.path.dirname(pg_bin)), "lib")
    if glob.glob(os.path.join(pkglibdir, "timescaledb*.so")):
        return ["-c", "shared_preload_libraries=timescaledb", "-c", "timescaledb.telemetry_level=off"]
    return []


def start_postgres(scratch, manifest, port, password, bin_dir, timeout, progress):
    """initdb (superuser password from an in-memory file) and the server, on 127.0.0.1 only, no unix socket."""
    lookup = connection.PgTarget(bin_dir=bin_dir)
    major = postgres.major_of(manifest["db"]["server_version_num"])
    initdb = postgres.find_pg_program("initdb", lookup, major)
    server = os.path.join(os.path.dirname(initdb), "postgres")
    progress("initdb of the scratch cluster in %s (%s)" % (scratch.pg_data, os.path.dirname(initdb)))
    log = os.path.join(scratch.path, "postgresql.log")
    fd = os.memfd_create("pwfile")
    try:
        os.fchmod(fd, 0o600)
        if os.geteuid() == 0:
            os.fchown(fd, scratch.uid, -1)  # initdb opens /proc/self/fd/N as the scratch user
        os.write(fd, (password + "\n").encode("utf-8"))
        proc = spawn([initdb, "-D", scratch.pg_data, "-U", SUPERUSER, "-E", "UTF8", "--no-locale",
                       "--auth-host=scram-sha-256", "--auth-local=scram-sha-256", "--pwfile=/proc/self/fd/%d" % fd,
                       "--no-sync"], scratch, log, run_as(scratch), pass_fds=(fd,))
        if proc.wait() != 0:
            raise RecoveryError("initdb of the scratch cluster failed (exit %s): %s" % (
                proc.returncode, last_log_line(log)))
    finally:
        os.close(fd)
    progress("starting the scratch PostgreSQL on 127.0.0.1:%d" % port)
    settings = ["listen_addresses=127.0.0.1", "port=%d" % port, "unix_socket_directories=", "fsync=off",
                "synchronous_commit=off", "full_page_writes=off", "logging_collector=off"]
    argv = [server, "-D", scratch.pg_data] + [part for s in settings for part in ("-c", s)]
    argv += _timescaledb_preload(server, manifest)
    pg = Server("PostgreSQL", spawn(argv, scratch, log, run_as(scratch)), log, signal.SIGINT)  # SIGINT: fast stop
    target = connection.PgTarget(host="127.0.0.1", port=port, admin_user=SUPERUSER, admin_password=password)
    return pg, lambda: wait_ready(pg, lambda: connection.connect(target, dbname="postgres").close(), timeout)


def start_redis(scratch, manifest, port, password, program, timeout, progress):
    """redis-server reading its configuration (with requirepass) from stdin."""
    redis_server = program or commands.find_program("redis-server", ["/usr/bin", "/usr/local/bin"])
    progress("starting the scratch Redis on 127.0.0.1:%d" % port)
    log = os.path.join(scratch.path, "redis.log")
    proc = spawn([redis_server, "-"], scratch, log, run_as(scratch), stdin=subprocess.PIPE)
    try:
        proc.stdin.write(redis_config(port, scratch.redis_dir, password, redis_databases(manifest)).encode("utf-8"))
        proc.stdin.close()
    except OSError:
        pass  # it exited at once: wait_ready says why
    server = Server("Redis", proc, log, signal.SIGTERM)
    target = RedisTarget(host="127.0.0.1", port=port, password=password)

    def ready():
        conn = target.connect()
        try:
            conn.wait_loaded()
        finally:
            conn.close()

    return server, lambda: wait_ready(server, ready, timeout)


def _set_login_password(target, role, password):
    """The platform's role gets a scratch password (as a SCRAM verifier), so queries run as it, as after a restore."""
    with connection.session(target, "postgres") as conn, conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s AND rolcanlogin", (role,))
        if not cur.fetchall():
            return False
        cur.execute(connection.sql.SQL("ALTER ROLE {} PASSWORD {}").format(
            connection.sql.Identifier(role), connection.sql.Literal(scram_verifier(password))))
    return True


# ---------------------------------------------------------------- the rehearsal


def _set_id_of(path):
    match = MANIFEST_RE.match(os.path.basename(path))
    return match.group(1) if match else None


def _scratch_user(name):
    if os.geteuid() != 0:
        entry = pwd.getpwuid(os.geteuid())
        return entry.pw_uid, entry.pw_gid, {entry.pw_gid}
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise RecoveryError("scratch_user %s does not exist on this host" % name) from None
    if entry.pw_uid == 0:
        raise RecoveryError("scratch_user must not be root (initdb and postgres refuse it)")
    return entry.pw_uid, entry.pw_gid, {entry.pw_gid} | set(os.getgrouplist(entry.pw_name, entry.pw_gid))


def rehearse(manifest_ref, backup_dir=None, scratch_dir=DEFAULT_SCRATCH_DIR, scratch_user="postgres",
             scratch_db_port=0, scratch_redis_port=0, production_ports=(), db_user="christmas", queries=(),
             pg_bin_dir=None, redis_server=None, jobs=2, start_timeout=60, check_mode=False, progress=print,
             trust=None):
    """Verify the set deeply, restore it into scratch servers, validate it there, record the result beside the
    manifest (``proof``), tear everything down. A failed rehearsal is recorded, then raised with the result."""
    production_ports = {int(port) for port in production_ports if port}
    check_ports({"database": scratch_db_port, "Redis": scratch_redis_port}, production_ports)
    validation.check_queries(queries)
    path = resolve_manifest_path(manifest_ref, backup_dir)
    uid, gid, gids = _scratch_user(scratch_user)
    scratch = ScratchDir(scratch_dir, uid, gid)
    leftover = scratch.exists()
    check_reachable(scratch.path, uid, gids)
    set_id = _set_id_of(path)
    result = {"manifest": path, "set_id": set_id, "scratch_dir": scratch.path, "passed": False, "timings": {},
              "checks": [], "failed_checks": [], "error": None, "unsigned_allowed": False,
              "proof": os.path.join(os.path.dirname(path), proof_name(set_id)) if set_id else None}
    if check_mode:
        result.update(changed=True, passed=None, would_remove_leftover=leftover)
        return result
    with restore_set.reading_sets(path):  # retention waits until the rehearsal has read the set and recorded it
        started_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        begin = time.monotonic()
        try:
            _run(result, path, scratch, production_ports, scratch_db_port, scratch_redis_port, db_user, queries,
                 pg_bin_dir, redis_server, jobs, start_timeout, progress, trust)
        except RehearsalBusy:
            raise
        except (RecoveryError, OSError) as err:
            result["error"] = one_line(err)
        if result.get("teardown_error") and result["error"] is None:
            result["error"] = "teardown of the scratch copy failed: %s" % result["teardown_error"]
        result["duration_seconds"] = round(time.monotonic() - begin, 3)
        result["started_at"] = started_at
        result["passed"] = result["error"] is None and bool(result["checks"]) and not result["failed_checks"]
        if result["error"] is None and not result["passed"]:
            result["error"] = "validation failed: %s" % "; ".join(
                "%s: %s" % (c["name"], c["detail"]) for c in result["checks"] if not c["ok"]) or "no checks ran"
        if result["set_id"] and os.path.isfile(path):  # never a side record without its set
            add_rehearsal(os.path.dirname(path), result["set_id"], {
                "passed": result["passed"], "started_at": started_at, "duration_seconds": result["duration_seconds"],
                "timings": result["timings"], "checks": result["checks"], "error": result["error"],
                "host": socket.gethostname(), "scratch_ports": result.get("scratch_ports"),
                "unsigned_allowed": result["unsigned_allowed"],
            })
    result["changed"] = True
    if not result["passed"]:
        raise RecoveryError("rehearsal of set %s failed: %s" % (result["set_id"], result["error"]), **result)
    return result


def timed(result, phase, work):
    """``work()``, its seconds kept in ``result["timings"][phase]`` however it ends."""
    begin = time.monotonic()
    try:
        return work()
    finally:
        result["timings"][phase] = round(time.monotonic() - begin, 3)


def _start_servers(scratch, manifest, wanted, avoid, password, pg_bin_dir, redis_server, timeout, servers,
                   progress):
    """The scratch servers the set's components need, each added to ``servers`` as soon as it runs (so that the
    teardown finds it), then waited for; returns their ports."""
    ports, waits = {}, []
    for component, start in (("db", start_postgres), ("redis", start_redis)):
        if component in manifest["components"]:
            ports[component] = wanted[component] or free_port(avoid | set(ports.values()))
            program = pg_bin_dir if component == "db" else redis_server
            server, wait = start(scratch, manifest, ports[component], password, program, timeout, progress)
            servers.append(server)
            waits.append(wait)
    for wait in waits:
        wait()
    return ports


def _run(result, path, scratch, production_ports, db_port, redis_port, db_user, queries, pg_bin_dir, redis_server,
         jobs, start_timeout, progress, trust):
    """The phases, each timed; the teardown runs whatever happened once the scratch directory was made."""
    progress("verifying backup set %s" % path)
    verified = timed(result, "verify", lambda: restore_set.verify_for_restore(
        path, jobs=jobs, pg_target=connection.PgTarget(bin_dir=pg_bin_dir), trust=trust, progress=progress))
    result["unsigned_allowed"] = verified[0]["signature"]["unsigned_allowed"]
    manifest = verified[1]
    result["set_id"] = manifest["set_id"]
    components = manifest["components"]
    timed(result, "cleanup", lambda: scratch.remove_leftover(progress))
    result["leftover_removed"] = scratch.leftover_removed
    password = secrets.token_urlsafe(24)
    servers = []
    try:
        scratch.create(manifest["set_id"])
        ports = result["scratch_ports"] = timed(result, "start", lambda: _start_servers(
            scratch, manifest, {"db": db_port, "redis": redis_port}, production_ports, password, pg_bin_dir,
            redis_server, start_timeout, servers, progress))
        db = connection.PgTarget(host="127.0.0.1", port=ports.get("db", 0),
                               dbname=manifest.get("db", {}).get("name") or "christmas", user=db_user,
                               password=password, admin_user=SUPERUSER, admin_password=password, bin_dir=pg_bin_dir)
        redis_target = RedisTarget(host="127.0.0.1", port=ports.get("redis", 0), password=password)
        restored = timed(result, "restore", lambda: restore_set.restore_set(
            path, components=components, db=db, redis_target=redis_target, config_dir=scratch.config_dir,
            jobs=jobs, force=True, progress=progress, verified=verified, keep_journal=False))
        result["components"] = {name: {k: v for k, v in outcome.items() if k in ("state", "seconds")}
                                for name, outcome in restored["components"].items()}
        if "db" in components:
            _set_login_password(db, db_user, password)
        report = timed(result, "validate", lambda: validation.validate(
            path, components=components, db=db, redis_target=redis_target, config_dir=scratch.config_dir,
            queries=queries if "db" in components else (), progress=progress))
        result["checks"], result["failed_checks"] = report["checks"], report["failed"]
    finally:
        progress("tearing down the scratch servers and %s" % scratch.path)
        try:
            timed(result, "teardown", lambda: scratch.teardown(servers))
        except (RecoveryError, OSError) as err:  # reported, without hiding what failed before
            result["teardown_error"] = one_line(err)

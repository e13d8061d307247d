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
import errno
import fcntl
import glob
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import time

from ansible_collections.christmas.recovery.plugins.module_utils import commands, postgres, restore_set, validation
from ansible_collections.christmas.recovery.plugins.module_utils.errors import RecoveryError, one_line
from ansible_collections.christmas.recovery.plugins.module_utils.manifest import (
    MANIFEST_RE,
    resolve_manifest_path,
)
from ansible_collections.christmas.recovery.plugins.module_utils.proof import add_rehearsal, proof_name
from ansible_collections.christmas.recovery.plugins.module_utils.redis_keys import RedisTarget
from ansible_collections.christmas.recovery.plugins.module_utils.replication import scram_verifier

DEFAULT_SCRATCH_DIR = "/var/tmp/christmas-rehearsal"
MARKER = ".christmas-rehearsal"
SUPERUSER = "postgres"
STOP_SECONDS = 30


class RehearsalBusy(RecoveryError):
    """Another rehearsal holds the scratch directory: no verdict on the set, so nothing is recorded beside it."""


# ---------------------------------------------------------------- pure helpers


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


def _cwd_of(pid):
    try:
        return os.readlink("/proc/%s/cwd" % pid)  # a removed directory reads as "PATH (deleted)"
    except OSError:
        return None


def _stat_of(pid):
    """The fields of /proc/PID/stat after the command name (state, parent pid, ...), or None when it is gone."""
    try:
        with open("/proc/%s/stat" % pid, encoding="ascii", errors="replace") as handle:
            return handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def processes_in(root):
    """Live processes whose working directory is ``root`` or below it: the scratch servers chdir there."""
    root = os.path.realpath(root)
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        cwd = _cwd_of(pid)
        if cwd and (cwd == root or cwd.startswith(root + os.sep)) and int(pid) != os.getpid():
            stat = _stat_of(pid)
            if stat and stat[0] != "Z":  # a zombie is dead already
                found.append(int(pid))
    return found


def _signal(pids, sig):
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def stop_processes_in(root, first_signals=(), timeout=STOP_SECONDS):
    """Send each (pid, signal) of ``first_signals``, wait for everything running in ``root`` to end, then SIGKILL
    what is left; returns how many processes there were."""
    seen = set(processes_in(root))
    for pid, sig in first_signals:
        _signal([pid], sig)
    deadline = time.monotonic() + (timeout if first_signals else 0)
    while True:
        left = processes_in(root)
        seen.update(left)
        if not left:
            return len(seen)
        if time.monotonic() >= deadline:
            _signal(left, signal.SIGKILL)
            if time.monotonic() >= deadline + 10:
                raise RecoveryError("processes %s in %s survive SIGKILL" % (", ".join(map(str, left)), root))
        time.sleep(0.1)


def _parent_of(pid):
    stat = _stat_of(pid)
    return int(stat[1]) if stat else None


def _pid_from(path):
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            return int(handle.readline().strip())
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------- the scratch directory


class ScratchDir:
    """The rehearsal's private directory, owned by the servers' OS user, 0700, flock'ed while in use."""

    def __init__(self, path, uid, gid):
        self.path, self.uid, self.gid = os.path.abspath(path), uid, gid
        self.pg_data = os.path.join(self.path, "pgdata")
        self.redis_dir = os.path.join(self.path, "redis")
        self.config_dir = os.path.join(self.path, "config")
        self.fd = None
        self.leftover_removed = False

    def exists(self):
        """Whether a rehearsal's directory is there (a leftover, or one in use); raises for anything else."""
        if not os.path.lexists(self.path):
            return False
        if not (os.path.isdir(self.path) and not os.path.islink(self.path)
                and os.path.isfile(os.path.join(self.path, MARKER))):
            raise RecoveryError("scratch_dir %s exists and is not a rehearsal's scratch directory (no %s in it): "
                                "remove it or choose another" % (self.path, MARKER))
        return True

    def _holder(self):
        try:
            with open(os.path.join(self.path, MARKER), encoding="utf-8") as handle:
                return json.load(handle).get("pid", "unknown")
        except (OSError, ValueError, AttributeError):
            return "unknown"

    def _lock(self, fd):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EAGAIN, errno.EACCES):
                raise RehearsalBusy("another rehearsal (pid %s) is running in %s" % (
                    self._holder(), self.path)) from None
            raise

    def remove_leftover(self, progress):
        """A directory a killed rehearsal left: its servers stopped (PostgreSQL immediately), then removed."""
        if not self.exists():
            return
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        self._lock(fd)
        try:
            progress("removing the scratch directory %s a killed rehearsal left" % self.path)
            # PostgreSQL's immediate shutdown (its backends follow the postmaster), a clean stop for anything else.
            postmaster = _pid_from(os.path.join(self.pg_data, "postmaster.pid"))
            first = [(pid, signal.SIGQUIT if pid == postmaster else signal.SIGTERM)
                     for pid in processes_in(self.path) if pid == postmaster or _parent_of(pid) != postmaster]
            stopped = stop_processes_in(self.path, first, timeout=10)
            progress("stopped %d processes of the killed rehearsal" % stopped)
            _remove_tree(self.path)
            self.leftover_removed = True
        finally:
            os.close(fd)

    def create(self, set_id):
        parent = os.path.dirname(self.path)
        if not os.path.isdir(parent):
            os.makedirs(parent, 0o711)
        os.mkdir(self.path, 0o700)
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        self._lock(fd)
        self.fd = fd
        if os.geteuid() == 0:
            os.chown(self.path, self.uid, self.gid)
        marker = {"pid": os.getpid(), "host": socket.gethostname(), "set_id": set_id,
                  "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        with open(os.open(os.path.join(self.path, MARKER), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w",
                  encoding="utf-8") as handle:
            json.dump(marker, handle)
        os.mkdir(self.redis_dir, 0o700)
        if os.geteuid() == 0:
            os.chown(self.redis_dir, self.uid, self.gid)

    def teardown(self, servers):
        """Stop the servers fast, then anything else still running in the directory, and remove it; only a
        directory this run made and holds."""
        if self.fd is None:
            return
        try:
            first = [(server.proc.pid, server.stop_signal) for server in servers if server.proc.poll() is None]
            stop_processes_in(self.path, first)
            for server in servers:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    server.proc.wait(timeout=1)
            _remove_tree(self.path)
        finally:
            os.close(self.fd)
            self.fd = None


def _remove_tree(path):
    """rmtree that also takes a restored tree whose directories are read-only (when not running as root)."""

    def writable_again(function, name, _exc):
        os.chmod(os.path.dirname(name), 0o700)
        function(name)

    if os.path.lexists(path):
        shutil.rmtree(path, onerror=writable_again)


def check_reachable(path, uid, gids):
    """Each existing ancestor of ``path`` must let ``uid`` through (PostgreSQL and Redis run as that user)."""
    if uid == os.geteuid():
        return
    current = os.path.dirname(os.path.abspath(path))
    while True:
        if os.path.isdir(current):
            info = os.stat(current)
            if info.st_uid == uid:
                ok = info.st_mode & 0o100
            elif info.st_gid in gids:
                ok = info.st_mode & 0o010
            else:
                ok = info.st_mode & 0o001
            if not ok:
                raise RecoveryError("scratch_dir %s: %s (mode %s) does not let the scratch user %s through" % (
                    path, current, oct(info.st_mode & 0o7777), pwd.getpwuid(uid).pw_name))
        if current == os.path.dirname(current):
            return
        current = os.path.dirname(current)


# ---------------------------------------------------------------- servers


def free_port(avoid):
    for _attempt in range(20):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in avoid:
            return port
    raise RecoveryError("no free port on 127.0.0.1")


class Server:
    """A scratch server running in the foreground as our child; it dies with us (PR_SET_PDEATHSIG)."""

    def __init__(self, name, proc, log, stop_signal):
        self.name, self.proc, self.log, self.stop_signal = name, proc, log, stop_signal


def last_log_line(log):
    try:
        with open(log, encoding="utf-8", errors="replace") as handle:
            return commands.cause_line(handle.read()[-8000:])
    except OSError:
        return "no log"


def _spawn(argv, scratch, log, user, stdin=subprocess.DEVNULL, pass_fds=()):
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        return subprocess.Popen(
            argv, stdin=stdin, stdout=fd, stderr=fd, cwd=scratch.path, umask=0o077, pass_fds=pass_fds,
            env=commands.child_env({"PGPASSWORD": None, "PGPASSFILE": None, "LC_ALL": "C"}),
            user=user[0], group=user[1], extra_groups=user[2],
            preexec_fn=commands.die_with_parent,  # noqa: PLW1509 - started when no other thread runs
        )
    finally:
        os.close(fd)


def _as(scratch):
    """(uid, gid, supplementary groups) for Popen: the scratch user as root, nothing to change otherwise."""
    if os.geteuid() != 0:
        return None, None, None
    return scratch.uid, scratch.gid, []


def _wait_ready(server, ready, timeout):
    deadline = time.monotonic() + timeout
    while True:
        if server.proc.poll() is not None:
            raise RecoveryError("the scratch %s exited at start (exit %s): %s" % (
                server.name, server.proc.returncode, last_log_line(server.log)))
        try:
            ready()
            return
        except RecoveryError as err:
            if time.monotonic() >= deadline:
                raise RecoveryError("the scratch %s did not accept connections in %d s: %s" % (
                    server.name, timeout, err)) from None
        time.sleep(0.2)


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
    lookup = postgres.PgTarget(bin_dir=bin_dir)
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
        proc = _spawn([initdb, "-D", scratch.pg_data, "-U", SUPERUSER, "-E", "UTF8", "--no-locale",
                       "--auth-host=scram-sha-256", "--auth-local=scram-sha-256", "--pwfile=/proc/self/fd/%d" % fd,
                       "--no-sync"], scratch, log, _as(scratch), pass_fds=(fd,))
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
    pg = Server("PostgreSQL", _spawn(argv, scratch, log, _as(scratch)), log, signal.SIGINT)  # SIGINT: fast stop
    target = postgres.PgTarget(host="127.0.0.1", port=port, admin_user=SUPERUSER, admin_password=password)
    return pg, lambda: _wait_ready(pg, lambda: postgres.connect(target, dbname="postgres").close(), timeout)


def start_redis(scratch, manifest, port, password, program, timeout, progress):
    """redis-server reading its configuration (with requirepass) from stdin."""
    redis_server = program or commands.find_program("redis-server", ["/usr/bin", "/usr/local/bin"])
    progress("starting the scratch Redis on 127.0.0.1:%d" % port)
    log = os.path.join(scratch.path, "redis.log")
    proc = _spawn([redis_server, "-"], scratch, log, _as(scratch), stdin=subprocess.PIPE)
    try:
        proc.stdin.write(redis_config(port, scratch.redis_dir, password, redis_databases(manifest)).encode("utf-8"))
        proc.stdin.close()
    except OSError:
        pass  # it exited at once: _wait_ready says why
    server = Server("Redis", proc, log, signal.SIGTERM)
    target = RedisTarget(host="127.0.0.1", port=port, password=password)

    def ready():
        conn = target.connect()
        try:
            conn.wait_loaded()
        finally:
            conn.close()

    return server, lambda: _wait_ready(server, ready, timeout)


def _set_login_password(target, role, password):
    """The platform's role gets a scratch password (as a SCRAM verifier), so queries run as it, as after a restore."""
    with postgres.session(target, "postgres") as conn, conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s AND rolcanlogin", (role,))
        if not cur.fetchall():
            return False
        cur.execute(postgres.sql.SQL("ALTER ROLE {} PASSWORD {}").format(
            postgres.sql.Identifier(role), postgres.sql.Literal(scram_verifier(password))))
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
             pg_bin_dir=None, redis_server=None, jobs=2, start_timeout=60, check_mode=False, progress=print):
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
              "checks": [], "failed_checks": [], "error": None,
              "proof": os.path.join(os.path.dirname(path), proof_name(set_id)) if set_id else None}
    if check_mode:
        result.update(changed=True, passed=None, would_remove_leftover=leftover)
        return result
    started_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    begin = time.monotonic()
    try:
        _run(result, path, scratch, production_ports, scratch_db_port, scratch_redis_port, db_user, queries,
             pg_bin_dir, redis_server, jobs, start_timeout, progress)
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
        })
    result["changed"] = True
    if not result["passed"]:
        raise RecoveryError("rehearsal of set %s failed: %s" % (result["set_id"], result["error"]), **result)
    return result


def _timed(result, phase, work):
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
         jobs, start_timeout, progress):
    """The phases, each timed; the teardown runs whatever happened once the scratch directory was made."""
    progress("verifying backup set %s" % path)
    verified = _timed(result, "verify", lambda: restore_set.verify_for_restore(
        path, jobs=jobs, pg_target=postgres.PgTarget(bin_dir=pg_bin_dir)))
    manifest = verified[1]
    result["set_id"] = manifest["set_id"]
    components = manifest["components"]
    _timed(result, "cleanup", lambda: scratch.remove_leftover(progress))
    result["leftover_removed"] = scratch.leftover_removed
    password = secrets.token_urlsafe(24)
    servers = []
    try:
        scratch.create(manifest["set_id"])
        ports = result["scratch_ports"] = _timed(result, "start", lambda: _start_servers(
            scratch, manifest, {"db": db_port, "redis": redis_port}, production_ports, password, pg_bin_dir,
            redis_server, start_timeout, servers, progress))
        db = postgres.PgTarget(host="127.0.0.1", port=ports.get("db", 0),
                               dbname=manifest.get("db", {}).get("name") or "christmas", user=db_user,
                               password=password, admin_user=SUPERUSER, admin_password=password, bin_dir=pg_bin_dir)
        redis_target = RedisTarget(host="127.0.0.1", port=ports.get("redis", 0), password=password)
        restored = _timed(result, "restore", lambda: restore_set.restore_set(
            path, components=components, db=db, redis_target=redis_target, config_dir=scratch.config_dir,
            jobs=jobs, force=True, progress=progress, verified=verified, keep_journal=False))
        result["components"] = {name: {k: v for k, v in outcome.items() if k in ("state", "seconds")}
                                for name, outcome in restored["components"].items()}
        if "db" in components:
            _set_login_password(db, db_user, password)
        report = _timed(result, "validate", lambda: validation.validate(
            path, components=components, db=db, redis_target=redis_target, config_dir=scratch.config_dir,
            queries=queries if "db" in components else (), progress=progress))
        result["checks"], result["failed_checks"] = report["checks"], report["failed"]
    finally:
        progress("tearing down the scratch servers and %s" % scratch.path)
        try:
            _timed(result, "teardown", lambda: scratch.teardown(servers))
        except (RecoveryError, OSError) as err:  # reported, without hiding what failed before
            result["teardown_error"] = one_line(err)

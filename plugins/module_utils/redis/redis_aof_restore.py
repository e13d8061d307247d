# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A point in time out of an AOF repository (see ``redis_aof``), as an RDB file.

The generation that restores the point is assembled into a scratch AOF directory with a manifest listing its base and
only the incr files that begin at or before the point (``redis-check-aof`` truncates the last one only), cut there
with ``redis-check-aof --truncate-to-timestamp``, loaded by a scratch ``redis-server`` (a unix socket in the 0700
scratch directory, no TCP port, a child of ours that dies with us) and written out with ``SAVE``. The RDB file then
restores any server with ``redis_restore.restore_redis``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time

from ansible_collections.christmas.recovery.plugins.module_utils.core import commands
from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.core.fsutil import (
    CHUNK,
    make_private_dir,
    read_blocks,
    remove_quietly,
    write_bytes_atomic,
)
from ansible_collections.christmas.recovery.plugins.module_utils.redis import redis_rdb
from ansible_collections.christmas.recovery.plugins.module_utils.redis.redis_aof_index import (
    check_files,
    generation_for,
    load_index,
    reading,
)
from ansible_collections.christmas.recovery.plugins.module_utils.redis.redis_keys import (
    DUMP_FILE,
    RawConnection,
    ReplyError,
    _info,
    _ok,
)

AOF_DIR = "appendonlydir"
AOF_NAME = "appendonly.aof"
SOCKET = "redis.sock"
SEARCH_DIRS = ["/usr/bin", "/usr/local/bin"]
SOCKET_PATH_MAX = 107  # sun_path holds 108 bytes with the final NUL


def rdb_at(repo_dir, target_time, scratch_dir, progress=print, redis_server=None, check_aof=None, timeout=120):
    """Rebuild the dataset as it stood after every write of second ``target_time`` (unix seconds); returns
    {"path", "version", "rdb_version", "keys", "target_time", "generation", "redis"}, ``redis`` being the manifest
    section ``redis_restore.restore_redis`` reads. The RDB lies in a new 0700 directory below ``scratch_dir``;
    the caller removes it. Nothing else is left there, also when this fails."""
    when = int(target_time)
    redis_server = redis_server or commands.find_program("redis-server", SEARCH_DIRS)
    check_aof = check_aof or commands.find_program("redis-check-aof", SEARCH_DIRS)
    make_private_dir(scratch_dir)
    work = tempfile.mkdtemp(prefix="redis-at-%d-" % when, dir=scratch_dir)
    try:
        with reading(repo_dir):
            index = load_index(repo_dir)
            generation = generation_for(index, when, repo_dir)
            check_files(repo_dir, [generation])
            progress("assembling AOF generation %s for %s in %s" % (generation["id"], when, work))
            manifest, truncate = _assemble(repo_dir, generation, when, os.path.join(work, AOF_DIR))
        if truncate:
            commands.run([check_aof, "--truncate-to-timestamp", str(when), manifest],
                         "redis-check-aof --truncate-to-timestamp %d" % when, cause=_last_line)
        facts = _load_and_save(redis_server, work, index.get("server", {}).get("databases", 16), timeout, progress)
        remove_quietly(os.path.join(work, AOF_DIR))
    except BaseException:
        remove_quietly(work)
        raise
    path = os.path.join(work, DUMP_FILE)
    rdb_version = redis_rdb.check_file(path)
    facts.update(path=path, rdb_version=rdb_version, target_time=when, generation=generation["id"])
    facts["redis"] = {"version": facts["version"], "rdb_version": rdb_version, "aof_enabled": True,
                      "transfer": "aof", "keys_per_db_at_start": facts["keys"]}
    return facts


def _last_line(text):
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[-1:] or ["no output"])[0]


def _assemble(repo_dir, generation, when, aof_dir):
    """Copy the base and the incr files that begin at or before ``when`` into ``aof_dir``, with a manifest naming
    them; returns (manifest path, whether an incr file is there to truncate)."""
    make_private_dir(aof_dir)
    base = generation["base"]
    _concatenate(repo_dir, [base["path"]], os.path.join(aof_dir, base["name"]))
    lines = ["file %s seq %d type b" % (base["name"], base["seq"])]
    stamped = [position for position, incr in enumerate(generation["incr"])
               if incr["first_ts"] is not None and incr["first_ts"] <= when]
    chosen = generation["incr"][:stamped[-1] + 1] if stamped else []
    for incr in chosen:
        _concatenate(repo_dir, [piece["path"] for piece in incr["pieces"]], os.path.join(aof_dir, incr["name"]))
        lines.append("file %s seq %d type i" % (incr["name"], incr["seq"]))
    manifest = os.path.join(aof_dir, AOF_NAME + ".manifest")
    write_bytes_atomic(manifest, ("\n".join(lines) + "\n").encode("utf-8"))
    return manifest, bool(chosen)


def _concatenate(repo_dir, parts, destination):
    fd = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb", buffering=CHUNK) as out:
        for part in parts:
            with open(os.path.join(repo_dir, part), "rb") as handle:
                for block in read_blocks(handle):
                    out.write(block)


class _Scratch:
    """The scratch server as the connection's target: errors name its socket."""

    def __init__(self, path):
        self.path = path

    def describe(self):
        return "scratch Redis at %s" % self.path


class _SocketConnection(RawConnection):
    """A RESP connection over the scratch server's unix socket."""

    def __init__(self, path, timeout):  # the socket is a unix one: none of the parent's setup applies
        self.target = _Scratch(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except OSError:
            self.sock.close()
            raise
        self.reader = self.sock.makefile("rb", buffering=CHUNK)


def _load_and_save(redis_server, work, databases, timeout, progress):
    """Start the scratch server on the assembled AOF, wait until it has loaded it, SAVE, shut it down."""
    sock = os.path.join(work, SOCKET)
    if len(sock.encode()) > SOCKET_PATH_MAX:
        raise RecoveryError("scratch directory %s is too deep for a unix socket (%d bytes at most): use a shorter "
                            "scratch_dir" % (work, SOCKET_PATH_MAX - len(SOCKET) - 1))
    log = os.path.join(work, "redis.log")
    argv = [redis_server, "--port", "0", "--unixsocket", sock, "--unixsocketperm", "700", "--dir", work,
            "--dbfilename", DUMP_FILE, "--appendonly", "yes", "--appenddirname", AOF_DIR, "--appendfilename",
            AOF_NAME, "--aof-load-truncated", "no", "--auto-aof-rewrite-percentage", "0", "--save", "",
            "--daemonize", "no", "--logfile", log, "--databases", str(databases)]
    progress("loading the AOF into a scratch redis-server (%s)" % sock)
    proc = commands.start(argv)
    try:
        conn = _wait_loaded(proc, sock, log, time.monotonic() + timeout)
        try:
            info = _info(conn)
            _ok(conn, "SAVE")
            conn.send(b"*2\r\n$8\r\nSHUTDOWN\r\n$6\r\nNOSAVE\r\n")
        finally:
            conn.close()
        proc.wait(timeout=timeout)
    finally:
        _stop(proc)
    keys = {name[2:]: value["keys"] for name, value in info.items() if isinstance(value, dict)}
    progress("the scratch Redis held %d keys" % sum(keys.values()))
    return {"version": info["redis_version"], "keys": keys}


def _wait_loaded(proc, sock, log, deadline):
    while True:
        if proc.poll() is not None:
            raise RecoveryError("the scratch redis-server exited (%s) before it had loaded the AOF: %s" % (
                proc.returncode, _log_tail(log, proc)))
        conn = None
        try:
            conn = _SocketConnection(sock, timeout=10)
            reply = conn.call("PING")
            if not isinstance(reply, ReplyError):
                return conn
        except (FileNotFoundError, ConnectionRefusedError):
            pass
        if conn:
            conn.close()
        if time.monotonic() > deadline:
            raise RecoveryError("the scratch redis-server did not load the AOF in time: %s" % _log_tail(log, proc))
        time.sleep(0.05)


def _log_tail(log, proc):
    try:
        with open(log, encoding="utf-8", errors="replace") as handle:
            lines = [line.strip() for line in handle if line.strip()]
    except FileNotFoundError:
        lines = []
    if not lines and proc.poll() is not None:
        lines = proc.stderr.read().decode("utf-8", "replace").splitlines()
    return commands.cause_line("\n".join(lines[-5:]))


def _stop(proc):
    """A server we started never outlives the call."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    proc.stderr.close()

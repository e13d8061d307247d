# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a Redis restore checks before anything changes, in the dry run as in the real run: the server reads the set's
RDB format, the user may run every command the restore sends on every key, ``maxmemory`` and the server's disk hold
the set, and no other client writes (or they are paused, as the operator chose)."""

from __future__ import annotations

import os

from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.redis import redis_rdb
from ansible_collections.christmas.recovery.plugins.module_utils.redis.redis_keys import (
    BATCH,
    UNORDERED,
    ReplyError,
    _command,
    _info,
    _text,
)

# Every command the restore sends (``{key}``: each key of the set, in its database); one probe queues them all.
RESTORE_COMMANDS = (("INFO",), ("CLIENT", "ID"), ("CLIENT", "LIST"), ("FLUSHALL",), ("SELECT", "0"), ("DBSIZE",),
                    ("MULTI",), ("EXEC",))
KEY_COMMANDS = (("PTTL", "{key}"), ("DUMP", "{key}"), ("RESTORE", "{key}", "0", "x", "REPLACE", "ABSTTL"))
FUNCTION_COMMANDS = (("FUNCTION", "LIST", "WITHCODE"), ("FUNCTION", "LOAD", "REPLACE", "x"))
PERSIST_COMMANDS = {True: ("BGREWRITEAOF",), False: ("SAVE",)}
UNQUEUEABLE = ("MULTI", "EXEC", "SAVE")  # not allowed in a transaction: asked with ACL DRYRUN where it may be
MEMORY_FACTOR, KEY_OVERHEAD = 2, 96  # in-memory size against the serialised size; dict entry, robj and expiry
WRITER_CHOICES = ("pause", "refuse")
LOOPBACK = ("localhost", "::1")
RDB_READABLE = ((7, 4, 12), (7, 2, 11), (7, 0, 10), (5, 0, 9), (4, 0, 8), (3, 2, 7), (2, 6, 6))


def readable_rdb(version):
    """The newest RDB format a Redis version reads (its RESTORE refuses payloads of a newer one)."""
    mine = tuple(int(part) for part in version.split(".")[:2])
    return next((rdb for major, minor, rdb in RDB_READABLE if mine >= (major, minor)), 6)


def check_format(target, info, manifest, snapshot):
    readable = readable_rdb(info["version"])
    if snapshot["rdb_version"] > readable:
        raise RecoveryError("Redis %s at %s reads RDB format %d at most; set %s holds RDB %d (from Redis %s): restore "
                            "into a Redis as new as the backup's" % (
                                info["version"], target.describe(), readable, manifest["set_id"],
                                snapshot["rdb_version"], manifest["redis"].get("version", "unknown")))


def _refused(target, verb, detail=""):
    return RecoveryError("redis user %s may not run %s%s on %s (ACL): allow it or restore as another user" % (
        target.user or "default", verb, detail, target.describe()))


def check_permissions(conn, path, aof_enabled, functions):
    """Queue every command the restore sends, on every key, in transactions that are discarded: the server checks
    the ACL (commands and keys) when a command is queued and runs none of them."""
    target = conn.target
    fixed = RESTORE_COMMANDS + (PERSIST_COMMANDS[aof_enabled],) + (FUNCTION_COMMANDS if functions else ())
    for args in fixed:
        if args[0] in UNQUEUEABLE:
            _dry_run(conn, args)
    reply = conn.call("MULTI")
    if isinstance(reply, ReplyError):
        raise _refused(target, "MULTI") if reply.startswith("NOPERM") else RecoveryError(
            "Redis at %s refused MULTI: %s" % (target.describe(), reply))
    try:
        probes = [args for args in fixed if args[0] not in UNQUEUEABLE]
        _queue(conn, [(args, "") for args in probes])
        batch, db = [], None
        for item in _alive_keys(path):
            if item.db != db:
                batch.append((("SELECT", item.db), ""))
                db = item.db
            where = " on key %r in db %d" % (item.key.decode("utf-8", "replace"), item.db)
            commands = KEY_COMMANDS + (((UNORDERED[item.kind], "{key}"),) if item.kind in UNORDERED else ())
            batch.extend((tuple(item.key if part == "{key}" else part for part in args), where)
                         for args in commands)
            if len(batch) >= BATCH:
                _queue(conn, batch)
                batch = []
        _queue(conn, batch)
    finally:
        conn.call("DISCARD")


def _dry_run(conn, args):
    """``ACL DRYRUN`` (Redis 7+) for a command that cannot be queued; without it (older servers, or a user who may
    not run ACL), the load's own refusal of MULTI or EXEC changes nothing, and SAVE runs after the load."""
    user = conn.target.user or "default"
    reply = conn.call("ACL", "DRYRUN", user, *args)
    if isinstance(reply, bytes) and reply != b"OK":
        raise _refused(conn.target, args[0])


def _alive_keys(path):
    now = redis_rdb.now_ms()
    for kind, item in redis_rdb.read_entries(path):
        if kind == "key" and (item.expire_ms is None or item.expire_ms > now):
            yield item


def _queue(conn, probes):
    replies = conn.pipeline([_command(*args) for args, _where in probes])
    for (args, where), reply in zip(probes, replies, strict=True):
        if not isinstance(reply, ReplyError):
            continue
        verb = " ".join(str(part) for part in args[:2 if args[0] in ("CLIENT", "FUNCTION", "CONFIG") else 1])
        if reply.startswith("NOPERM"):
            raise _refused(conn.target, verb.upper(), where)
        if reply.startswith("OOM"):
            raise RecoveryError("Redis at %s is over its maxmemory already (%s refused: %s)" % (
                conn.target.describe(), verb, reply))
        raise RecoveryError("Redis at %s refused %s%s: %s" % (conn.target.describe(), verb, where, reply))


def _mib(size):
    return "%.1f MiB" % (size / 1048576.0)


def check_memory(conn, snapshot, manifest, transaction):
    """``maxmemory`` holds the server's own overhead plus the set (and, in one transaction, the queued load)."""
    memory = _info(conn, "memory")
    limit = int(memory.get("maxmemory", 0))
    used = int(memory["used_memory"])
    overhead = used - int(memory.get("used_memory_dataset", used))
    estimate = snapshot["payload_bytes"] * MEMORY_FACTOR + snapshot["key_count"] * KEY_OVERHEAD
    queued = snapshot["payload_bytes"] + snapshot["key_count"] * KEY_OVERHEAD if transaction else 0
    needed = max(overhead + estimate + queued, used + queued)
    if limit and needed > limit:
        raise RecoveryError(
            "Redis at %s has maxmemory %s and uses %s: restoring set %s (%d keys) needs about %s (estimate: the set's "
            "%s of values x%d plus %d bytes a key%s): raise maxmemory or free memory" % (
                conn.target.describe(), _mib(limit), _mib(used), manifest["set_id"], snapshot["key_count"],
                _mib(needed), _mib(snapshot["payload_bytes"]), MEMORY_FACTOR, KEY_OVERHEAD,
                ", and the load queued in one transaction" if transaction else ""))
    return {"maxmemory": limit, "used_memory": used, "memory_needed_estimate": needed}


def check_disk(conn, path, aof_enabled):
    """The RDB save or AOF rewrite after the load writes about the snapshot's size beside the old file; measured
    only when the server runs here (loopback) and its directory is visible."""
    target = conn.target
    if not (target.host in LOOPBACK or target.host.startswith("127.")):
        return None
    reply = conn.call("CONFIG", "GET", "dir")
    if not isinstance(reply, list) or len(reply) != 2:
        return None  # CONFIG GET not allowed: the server's disk is not measured
    directory = reply[1].decode("utf-8", "replace")
    try:
        stat = os.statvfs(directory)
    except OSError:
        return None
    free, needed = stat.f_bavail * stat.f_frsize, os.path.getsize(path)
    if needed > free:
        raise RecoveryError("Redis at %s writes to %s with %s free; the %s after the restore needs about %s (the set's "
                            "snapshot): free space there" % (
                                target.describe(), directory, _mib(free),
                                "AOF rewrite" if aof_enabled else "RDB save", _mib(needed)))
    return free


def other_clients(conn):
    """Clients connected besides ours, replicas and monitors: ``addr`` and ``name`` each."""
    mine = conn.call("CLIENT", "ID")
    listing = _text(conn, conn.call("CLIENT", "LIST"))
    found = []
    for line in listing.splitlines():
        fields = dict(part.partition("=")[::2] for part in line.split(" "))
        if fields.get("id") == str(mine) or set(fields.get("flags", "")) & set("SMO"):
            continue
        found.append(fields.get("addr", "?") + (" (%s)" % fields["name"] if fields.get("name") else ""))
    return found


def check_writers(conn, writers):
    if writers not in WRITER_CHOICES:
        raise RecoveryError("redis_writers must be one of %s, not %r" % (", ".join(WRITER_CHOICES), writers))
    clients = other_clients(conn)
    if clients and writers == "refuse":
        raise RecoveryError("Redis at %s has %d other client(s) connected (%s%s): stop them, or restore with "
                            "redis_writers=pause" % (conn.target.describe(), len(clients), ", ".join(clients[:5]),
                                                     ", ..." if len(clients) > 5 else ""))
    return clients

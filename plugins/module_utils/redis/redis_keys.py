# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Redis over the network only: a point-in-time RDB snapshot taken the way a replica takes one, restored key by key.

The backup asks the server for its snapshot with ``SYNC`` (as ``redis-cli --rdb`` does: ``REPLCONF rdb-only``, so no
replication stream follows) and streams it to ``redis.rdb`` while hashing it; the file's own CRC-64 is checked before
the set is complete. The file is a standard RDB: it also loads into any Redis by hand. The restore (``redis_restore``)
parses it (see ``redis_rdb``), flushes the server and RESTOREs every key with its absolute expiry.
"""

from __future__ import annotations

import os
import socket
import time

from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.core.fsutil import CHUNK, HashingWriter
from ansible_collections.christmas.recovery.plugins.module_utils.redis import redis_rdb

DUMP_FILE = "redis.rdb"
BATCH = 1000
UNORDERED = {2: "SMEMBERS", 4: "HGETALL"}  # sets and hashes in hash-table encoding serialise in table order
EOF_MARK = 40  # the length of the end mark of a diskless transfer
SYNC_IDLE_TIMEOUT = 120  # the server sends a newline every second while it prepares the snapshot


class RedisTarget:
    """Where Redis is and who connects: ``user`` is an ACL user (Redis 6+), None the default user; ``writers`` says
    what a restore does about other clients connected (``pause`` or ``refuse``, see ``redis_restore``)."""

    def __init__(self, host="localhost", port=6379, password=None, connect_wait=0, user=None, writers="pause"):
        self.host, self.port, self.password, self.connect_wait = host, port, password, connect_wait
        self.user, self.writers = user, writers

    def describe(self):
        return "%s:%s" % (self.host, self.port)

    def connect(self, db=0):
        """A connection; while Redis is not listening yet or still loading its data, retried for up to
        ``connect_wait`` seconds."""
        deadline = time.monotonic() + self.connect_wait
        while True:
            try:
                conn = RawConnection(self, db)
                if self.connect_wait:
                    conn.wait_loaded()
                return conn
            except Unavailable:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.5)


class Unavailable(RecoveryError):
    """Redis does not answer yet: nothing listens, or it is loading its data."""


def _info(conn, section=None):
    """INFO as {field: value}; keyspace lines (db0:keys=1,expires=0,...) as {field: {name: int}}."""
    reply = conn.call("INFO", *((section,) if section else ()))
    fields = {}
    for line in _text(conn, reply).splitlines():
        name, sep, value = line.partition(":")
        if not sep or line.startswith("#"):
            continue
        if name.startswith("db") and name[2:].isdigit():
            value = {key: int(number) for key, _, number in (part.partition("=") for part in value.split(","))}
        fields[name] = value
    return fields


def _text(conn, reply):
    if isinstance(reply, ReplyError) or not isinstance(reply, bytes):
        raise RecoveryError("Redis at %s answered %s" % (conn.target.describe(), str(reply).splitlines()[0]))
    return reply.decode("utf-8", "replace")


def _ok(conn, *args):
    reply = conn.call(*args)
    if isinstance(reply, ReplyError):
        raise RecoveryError("Redis at %s refused %s: %s" % (conn.target.describe(), args[0], reply))
    return reply


def server_info(target):
    conn = target.connect()
    try:
        info = _info(conn)
    finally:
        conn.close()
    keyspace = {name[2:]: value["keys"] for name, value in info.items() if isinstance(value, dict)}
    return {"version": info["redis_version"], "aof_enabled": info.get("aof_enabled") == "1", "keys_per_db": keyspace}


def _command(*args):
    parts = [arg if isinstance(arg, bytes) else str(arg).encode() for arg in args]
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(part), part) for part in parts)


class ReplyError(str):
    """An error reply, returned in place of a value so a pipeline reads every reply."""


class RawConnection:
    """A plain RESP connection: what the snapshot transfer needs, and fast pipelines of prepared commands."""

    def __init__(self, target, db=0, timeout=SYNC_IDLE_TIMEOUT):
        self.target = target
        try:
            self.sock = socket.create_connection((target.host, target.port), timeout=10)
        except OSError as err:
            raise Unavailable("Redis unreachable or refused at %s: %s" % (
                target.describe(), err.strerror or err)) from None
        self.sock.settimeout(timeout)
        self.reader = self.sock.makefile("rb", buffering=CHUNK)
        try:
            credentials = (target.user, target.password or "") if target.user else (target.password,)
            if (target.user or target.password is not None) and self.call("AUTH", *credentials) != b"OK":
                raise RecoveryError("Redis unreachable or refused at %s: authentication failed" % target.describe())
            if db and self.call("SELECT", db) != b"OK":
                raise RecoveryError("Redis at %s refused SELECT %s" % (target.describe(), db))
        except BaseException:
            self.close()
            raise

    def close(self):
        self.reader.close()
        self.sock.close()

    def wait_loaded(self):
        reply = self.call("PING")
        if isinstance(reply, ReplyError):
            self.close()
            raise Unavailable("Redis at %s answered %s" % (self.target.describe(), reply.splitlines()[0]))

    def lost(self, err):
        return RecoveryError("Redis at %s: connection lost (%s)" % (self.target.describe(), err.strerror or err))

    def send(self, data):
        try:
            self.sock.sendall(data)
        except OSError as err:
            raise self.lost(err) from None

    def readinto(self, view):
        try:
            return self.reader.readinto(view)
        except OSError as err:
            raise self.lost(err) from None

    def line(self):
        try:
            line = self.reader.readline(1 << 16)
        except OSError as err:
            raise self.lost(err) from None
        if not line.endswith(b"\r\n"):
            raise RecoveryError("Redis at %s closed the connection" % self.target.describe())
        return line[:-2]

    def reply(self):
        line = self.line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest
        if kind == b"-":
            return ReplyError(rest.decode("utf-8", "replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            try:
                data = self.reader.read(size + 2)
            except OSError as err:
                raise self.lost(err) from None
            if len(data) != size + 2:
                raise RecoveryError("Redis at %s closed the connection" % self.target.describe())
            return data[:-2]
        if kind == b"*":
            size = int(rest)
            return None if size < 0 else [self.reply() for _ in range(size)]
        raise RecoveryError("Redis at %s sent an unexpected reply %.40r" % (self.target.describe(), line))

    def call(self, *args):
        self.send(_command(*args))
        return self.reply()

    def pipeline(self, commands):
        """Send prepared commands in one write; returns their replies in order."""
        self.send(b"".join(commands))
        return [self.reply() for _ in commands]


def _start_snapshot(conn):
    """Ask for the snapshot the way a replica does; returns the transfer header (``$EOF:<mark>`` or ``$<size>``)."""
    for args in (("REPLCONF", "capa", "eof"), ("REPLCONF", "rdb-only", "1")):
        reply = conn.call(*args)  # servers before 7.0 refuse rdb-only: they then stream commands, which we ignore
        if isinstance(reply, ReplyError) and reply.startswith("NOAUTH"):
            raise RecoveryError("Redis snapshot at %s: authentication required (set redis_password)"
                                % conn.target.describe())
    conn.send(_command("SYNC"))
    while True:
        if conn.reader.peek(1)[:1] == b"\n":  # a keep-alive while the server prepares the snapshot
            conn.reader.read(1)
            continue
        line = conn.line()
        if line.startswith(b"$"):
            return line
        if line.startswith(b"-"):
            raise RecoveryError("Redis at %s refused the snapshot (SYNC): %s (the user needs the sync and replconf "
                                "commands)" % (conn.target.describe(), line[1:].decode("utf-8", "replace")))


def _copy_snapshot(conn, header, received):
    """Read the snapshot that follows ``header`` into ``received``."""
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    if header.startswith(b"$EOF:"):
        mark, tail = header[5:], b""
        while True:
            got = conn.readinto(buf)
            if not got:
                raise RecoveryError("Redis at %s closed the connection before the snapshot ended"
                                    % conn.target.describe())
            data = tail + view[:got]
            received.add(data[:-EOF_MARK])
            if data.endswith(mark):
                return
            tail = data[-EOF_MARK:]
    left = int(header[1:])
    while left:
        got = conn.readinto(view[:min(CHUNK, left)])
        if not got:
            raise RecoveryError("Redis at %s closed the connection with %d snapshot bytes to go"
                                % (conn.target.describe(), left))
        received.add(view[:got])
        left -= got


class _Received(redis_rdb.Checker):
    """Writes the snapshot while checking it."""

    def __init__(self, writer):
        super().__init__()
        self.writer = writer

    def add(self, data):
        if data:
            self.writer.write(data)
            super().add(data)


def dump_redis(target, set_dir, progress=print):
    """Stream the server's snapshot into the set; returns (metadata, {file: (size, sha256)})."""
    info = server_info(target)
    progress("taking the Redis snapshot at %s (%s keys)" % (target.describe(), sum(info["keys_per_db"].values())))
    writer = HashingWriter(os.path.join(set_dir, DUMP_FILE))
    conn = None
    try:
        conn = target.connect()
        header = _start_snapshot(conn)
        received = _Received(writer)
        _copy_snapshot(conn, header, received)
        version = received.version("the snapshot from %s" % target.describe())
        size, digest = writer.commit()
    except OSError as err:
        writer.abort()
        if err.filename:  # the backup's own file system: reported by the set, naming the file
            raise
        raise RecoveryError("Redis snapshot from %s failed: %s" % (target.describe(), err.strerror or err)) from None
    except BaseException:
        writer.abort()
        raise
    finally:
        if conn:
            conn.close()
    metadata = {"version": info["version"], "aof_enabled": info["aof_enabled"], "rdb_version": version,
                "transfer": "diskless" if header.startswith(b"$EOF:") else "disk",
                "keys_per_db_at_start": {db: n for db, n in info["keys_per_db"].items() if n}}
    return metadata, {DUMP_FILE: (size, digest)}


def scan_snapshot(path):
    """Read the whole artifact once before anything changes: keys per database still alive now, keys already
    expired, function libraries. Any structural problem is raised here, not halfway through a restore."""
    now = redis_rdb.now_ms()
    counts, expired, functions, size = {}, 0, [], 0
    for kind, item in redis_rdb.read_entries(path):
        if kind == "function":
            functions.append(item)
        elif item.expire_ms is not None and item.expire_ms <= now:
            expired += 1
        else:
            counts[str(item.db)] = counts.get(str(item.db), 0) + 1
            size += len(item.key) + len(item.value)
    return {"keys_per_db": counts, "key_count": sum(counts.values()), "expired": expired, "payload_bytes": size,
            "functions": sorted(functions), "rdb_version": redis_rdb.rdb_version(path)}


def _alive_keys(path):
    now = redis_rdb.now_ms()
    for kind, item in redis_rdb.read_entries(path):
        if kind == "key" and (item.expire_ms is None or item.expire_ms > now):
            yield item


def matches_target(target, path, snapshot):
    """True when the server already holds exactly the snapshot's keys and values (TTL presence included)."""
    if server_info(target)["keys_per_db"] != snapshot["keys_per_db"]:
        return False
    conns, batch = {}, []
    try:
        if snapshot["functions"] and not _functions_match(target, snapshot["functions"]):
            return False
        for entry in _alive_keys(path):
            batch.append(entry)
            if len(batch) >= BATCH:
                if not _batch_matches(conns, target, batch):
                    return False
                batch = []
        return _batch_matches(conns, target, batch)
    finally:
        for conn in conns.values():
            conn.close()


def _functions_match(target, mine):
    """``mine``: the snapshot's library codes, sorted."""
    conn = target.connect()
    try:
        libraries = conn.call("FUNCTION", "LIST", "WITHCODE")
    finally:
        conn.close()
    return isinstance(libraries, list) and sorted(
        dict(zip(library[::2], library[1::2], strict=True)).get(b"library_code") for library in libraries) == mine


def _batch_matches(conns, target, entries):
    """Compare entries with the server in one round trip per database (plus one for hash-table contents)."""
    for db in {entry.db for entry in entries}:
        conn = conns.get(db) or conns.setdefault(db, target.connect(db))
        mine = [entry for entry in entries if entry.db == db]
        replies = conn.pipeline([_command(verb, entry.key) for entry in mine for verb in ("PTTL", "DUMP")])
        unordered = []
        for index, entry in enumerate(mine):
            ttl, current = replies[2 * index], replies[2 * index + 1]
            if not isinstance(current, bytes) or (ttl >= 0) != (entry.expire_ms is not None):
                return False
            if current[:-10] != bytes((entry.kind,)) + entry.value:
                if current[0] != entry.kind or entry.kind not in UNORDERED:
                    return False
                unordered.append(entry)
        contents = conn.pipeline([_command(UNORDERED[entry.kind], entry.key) for entry in unordered])
        for entry, content in zip(unordered, contents, strict=True):
            if not isinstance(content, list) or sorted(_pairs(entry.kind, content)) != redis_rdb.members(
                    entry.kind, entry.value):
                return False
    return True


def _pairs(kind, flat):
    """SMEMBERS as members, HGETALL as (field, value) pairs: the shape ``redis_rdb.members`` returns."""
    return flat if kind == redis_rdb.SET_HASHTABLE else list(zip(flat[::2], flat[1::2], strict=True))

# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Redis over the network only: every key of every database as DUMP payload + TTL, restored with RESTORE.

Artifact layout: a magic line, then records ``K db:u16 key_len:u32 pttl:i64 payload_len:u32 has_digest:u8 key payload
[digest:32]`` and one closing record ``E count:u64``. A DUMP payload ends with its RDB version (2 bytes) and a CRC64 of
the rest (8 bytes), which the deep check recomputes. Sets and hashes in hashtable encoding serialise in an order that
differs between servers, so their records also carry a digest of the sorted content, for comparison after a restore.
"""

from __future__ import annotations

import hashlib
import os
import struct
import time

from ansible_collections.christmas.recovery.plugins.module_utils.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.fsutil import CHUNK, HashingWriter

try:
    import redis
    HAS_REDIS = True
except ImportError:  # reported by the modules with missing_required_lib
    HAS_REDIS = False

DUMP_FILE = "redis.keys"
MAGIC = b"CHRISTMAS-REDIS-KEYS 1\n"
RECORD = struct.Struct(">HIqIB")
UNORDERED_TYPES = {2: "set", 4: "hash"}  # RDB_TYPE_SET, RDB_TYPE_HASH (hashtable encodings)
END = struct.Struct(">Q")
BATCH = 1000


class RedisTarget:
    def __init__(self, host="localhost", port=6379, password=None):
        self.host, self.port, self.password = host, port, password

    def describe(self):
        return "%s:%s" % (self.host, self.port)

    def client(self, db=0):
        if not HAS_REDIS:
            raise RecoveryError("the redis Python library is required on this host (pip install redis)")
        return redis.Redis(host=self.host, port=self.port, password=self.password, db=db, socket_timeout=60,
                           socket_connect_timeout=10)


def redis_error(target, what, err):
    kind = "authentication failed" if isinstance(err, redis.AuthenticationError) else str(err).splitlines()[0]
    return RecoveryError("Redis %s at %s: %s" % (what, target.describe(), kind))


def server_info(target):
    client = target.client()
    try:
        info = client.info()
    except redis.RedisError as err:
        raise redis_error(target, "unreachable or refused", err) from None
    finally:
        client.close()
    keyspace = {str(int(name[2:])): value["keys"] for name, value in info.items()
                if name.startswith("db") and name[2:].isdigit() and isinstance(value, dict)}
    return {"version": info["redis_version"], "aof_enabled": bool(info.get("aof_enabled")), "keys_per_db": keyspace}


def _crc64_table():
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x95AC9329AC4BC9B5 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC64_TABLE = _crc64_table()


def crc64(data):
    """Redis' CRC-64/Jones (reflected), as used in DUMP payloads and RDB files."""
    table, crc = _CRC64_TABLE, 0
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc


def payload_rdb_version(payload):
    return struct.unpack("<H", payload[-10:-8])[0]


def payload_intact(payload):
    return len(payload) > 10 and crc64(payload[:-8]) == struct.unpack("<Q", payload[-8:])[0]


def dump_redis(target, set_dir, progress=print):
    """Write every key of every logical database; returns (metadata, {file: (size, sha256)})."""
    info = server_info(target)
    writer = HashingWriter(os.path.join(set_dir, DUMP_FILE))
    keys_per_db = {}
    rdb_versions = set()
    records = 0
    try:
        writer.write(MAGIC)
        for db in sorted(info["keys_per_db"], key=int):
            progress("dumping Redis db %s (%d keys)" % (db, info["keys_per_db"][db]))
            client = target.client(int(db))
            seen = set()  # SCAN may return a key twice while the keyspace rehashes
            written = 0
            try:
                batch = []
                for key in client.scan_iter(count=BATCH):
                    if key not in seen:
                        seen.add(key)
                        batch.append(key)
                    if len(batch) >= BATCH:
                        written += _dump_batch(client, int(db), batch, writer, rdb_versions)
                        batch = []
                written += _dump_batch(client, int(db), batch, writer, rdb_versions)
            except redis.RedisError as err:
                raise redis_error(target, "dump of db %s failed" % db, err) from None
            finally:
                client.close()
            keys_per_db[db] = written
            records += written
        writer.write(b"E" + END.pack(records))
        size, digest = writer.commit()
    except BaseException:
        writer.abort()
        raise
    metadata = {"version": info["version"], "aof_enabled": info["aof_enabled"], "key_count": records,
                "keys_per_db": {db: count for db, count in keys_per_db.items() if count},
                "rdb_version": max(rdb_versions) if rdb_versions else None}
    return metadata, {DUMP_FILE: (size, digest)}


def content_digest(kind, value):
    """Order-independent SHA-256 of a set's members or a hash's fields and values."""
    items = sorted(value.items()) if kind == "hash" else sorted((member, b"") for member in value)
    digest = hashlib.sha256()
    for first, second in items:
        digest.update(struct.pack(">II", len(first), len(second)) + first + second)
    return digest.digest()


def _read_unordered(pipe, kind, key):
    return pipe.hgetall(key) if kind == "hash" else pipe.smembers(key)


def _dump_batch(client, db, keys, writer, rdb_versions):
    """DUMP and PTTL a batch in one round trip (plus content digests where needed); returns keys written."""
    if not keys:
        return 0
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.dump(key)
        pipe.pttl(key)
    replies = pipe.execute()
    live = [(key, replies[2 * i], replies[2 * i + 1]) for i, key in enumerate(keys)
            if replies[2 * i] is not None and replies[2 * i + 1] != -2]  # skip keys gone since SCAN saw them
    unordered = [(key, UNORDERED_TYPES[payload[0]]) for key, payload, _ in live if payload[0] in UNORDERED_TYPES]
    digests = {}
    if unordered:
        for key, kind in unordered:
            _read_unordered(pipe, kind, key)
        values = pipe.execute()
        digests = {key: content_digest(kind, value) for (key, kind), value in zip(unordered, values, strict=True)}
    for key, payload, pttl in live:
        digest = digests.get(key, b"")
        writer.write(b"K" + RECORD.pack(db, len(key), pttl, len(payload), len(digest)) + key + payload + digest)
        rdb_versions.add(payload_rdb_version(payload))
    return len(live)


def read_records(path):
    """Yield (db, key, pttl, payload); raise naming the artifact when its structure is broken."""
    name = os.path.basename(path)
    with open(path, "rb", buffering=CHUNK) as handle:
        if handle.read(len(MAGIC)) != MAGIC:
            raise RecoveryError("Redis artifact %s has no valid header" % name)
        count = 0
        while True:
            tag = handle.read(1)
            if tag == b"E":
                raw = handle.read(END.size)
                if len(raw) != END.size or END.unpack(raw)[0] != count or handle.read(1):
                    raise RecoveryError("Redis artifact %s has a bad closing record" % name)
                return
            if tag != b"K":
                raise RecoveryError("Redis artifact %s is truncated or corrupt after %d keys" % (name, count))
            raw = handle.read(RECORD.size)
            if len(raw) != RECORD.size:
                raise RecoveryError("Redis artifact %s is truncated after %d keys" % (name, count))
            db, key_len, pttl, payload_len, digest_len = RECORD.unpack(raw)
            key = handle.read(key_len)
            payload = handle.read(payload_len)
            digest = handle.read(digest_len)
            if len(key) != key_len or len(payload) != payload_len or len(digest) != digest_len:
                raise RecoveryError("Redis artifact %s is truncated after %d keys" % (name, count))
            count += 1
            yield db, key, pttl, payload, digest


def check_dump_readable(path):
    """Deep check: every record parses and every DUMP payload carries a valid CRC64."""
    count = 0
    for _db, key, _pttl, payload, _digest in read_records(path):
        if not payload_intact(payload):
            raise RecoveryError("Redis artifact %s: payload of key %r fails its CRC64" % (
                os.path.basename(path), key[:80]))
        count += 1
    return count


def _version_tuple(version):
    return tuple(int(part) for part in version.split(".")[:2])


def matches_target(target, path, expected_keys):
    """True when the server already holds exactly the backed-up keys and values (TTL presence included)."""
    if server_info(target)["keys_per_db"] != {db: n for db, n in expected_keys.items() if n}:
        return False
    clients, batch = {}, []
    try:
        for record in read_records(path):
            batch.append(record)
            if len(batch) >= BATCH:
                if not _batch_matches(clients, target, batch):
                    return False
                batch = []
        return _batch_matches(clients, target, batch)
    finally:
        for client in clients.values():
            client.close()


def _batch_matches(clients, target, records):
    """Compare records with the server in one round trip per database (plus content reads for unordered types)."""
    for db in {record[0] for record in records}:
        client = clients.setdefault(db, target.client(db))
        mine = [record for record in records if record[0] == db]
        pipe = client.pipeline(transaction=False)
        for _db, key, _pttl, _payload, _digest in mine:
            pipe.pttl(key)
            pipe.dump(key)
        replies = pipe.execute()
        for index, (_db, key, pttl, payload, digest) in enumerate(mine):
            current_ttl, current = replies[2 * index], replies[2 * index + 1]
            if (current_ttl >= 0) != (pttl >= 0) or current is None:
                return False
            if current == payload:
                continue
            if not digest or current[0] != payload[0]:
                return False
            kind = UNORDERED_TYPES[payload[0]]
            if content_digest(kind, client.hgetall(key) if kind == "hash" else client.smembers(key)) != digest:
                return False
    return True


def restore_redis(target, manifest, path, force=False, check_mode=False, progress=print):
    """Replace the server's whole keyspace with the backup's, over the network, and make it durable."""
    meta = manifest["redis"]
    try:
        info = server_info(target)
        if _version_tuple(info["version"]) < _version_tuple(meta["version"]):
            raise RecoveryError("target Redis %s at %s is older than the backup's %s (its data format may not load)"
                                % (info["version"], target.describe(), meta["version"]))
        result = {"target_version": info["version"], "aof_enabled": info["aof_enabled"],
                  "keys_before": sum(info["keys_per_db"].values())}
        if not force and matches_target(target, path, meta["keys_per_db"]):
            result.update(changed=False, state="already identical to set %s" % manifest["set_id"])
            return result
    except redis.RedisError as err:
        raise redis_error(target, "preflight failed", err) from None
    result["changed"] = True
    if check_mode:
        result["state"] = "would replace %d keys with %d" % (result["keys_before"], meta["key_count"])
        return result
    progress("flushing Redis at %s and loading %d keys" % (target.describe(), meta["key_count"]))
    result["persisted"] = _replace_keyspace(target, path, meta["key_count"], info["aof_enabled"])
    after = server_info(target)["keys_per_db"]
    expected = {db: n for db, n in meta["keys_per_db"].items() if n}
    if after != expected:
        raise RecoveryError("Redis at %s holds %s keys per db after restore, the backup has %s" % (
            target.describe(), after, expected))
    result["state"] = "restored from set %s" % manifest["set_id"]
    result["keys_after"] = sum(after.values())
    return result


def _replace_keyspace(target, path, total, aof_enabled):
    """FLUSHALL, then RESTORE every key pipelined per database; a failure says how far the load got."""
    control = target.client()
    clients, pending, loaded, flushed = {}, {}, 0, False
    try:
        control.flushall()
        flushed = True
        for db, key, pttl, payload, _digest in read_records(path):
            pipe = pending.get(db)
            if pipe is None:
                pipe = pending[db] = clients.setdefault(db, target.client(db)).pipeline(transaction=False)
            pipe.restore(key, max(pttl, 0), payload, replace=True)
            if len(pipe) >= BATCH:
                loaded += len(pipe.execute())
        for pipe in pending.values():
            loaded += len(pipe.execute())
        return _persist(control, aof_enabled)
    except redis.RedisError as err:
        if not flushed:
            raise redis_error(target, "restore failed before anything changed", err) from None
        raise RecoveryError("Redis restore at %s failed after the flush with %d of %d keys loaded (the keyspace is "
                            "partial; run the restore again): %s" % (target.describe(), loaded, total,
                                                                   str(err).splitlines()[0])) from None
    finally:
        control.close()
        for client in clients.values():
            client.close()


def _persist(client, aof_enabled, timeout=600):
    """Make the restored keyspace survive a restart: rewrite the AOF when it is on, else write an RDB snapshot."""
    if not aof_enabled:
        client.save()
        return "rdb snapshot"
    client.bgrewriteaof()
    deadline = time.monotonic() + timeout
    while True:
        persistence = client.info("persistence")
        if not persistence["aof_rewrite_in_progress"] and not persistence["aof_rewrite_scheduled"]:
            if persistence.get("aof_last_bgrewrite_status", "ok") != "ok":
                raise RecoveryError("Redis AOF rewrite after the restore failed; check the server's log and disk")
            return "aof rewritten"
        if time.monotonic() > deadline:
            raise RecoveryError("Redis AOF rewrite after the restore did not finish in %d s" % timeout)
        time.sleep(0.1)

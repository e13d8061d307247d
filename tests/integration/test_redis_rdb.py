"""The Redis snapshot against real servers: every encoding parses to the server's own DUMP, and restores exactly."""

from __future__ import annotations

import os
import time

import pytest
from conftest import redis_state

from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.redis import redis_keys, redis_rdb, redis_restore
from ansible_collections.christmas.recovery.plugins.module_utils.redis.redis_keys import RedisTarget

LIBRARY = "#!lua name=christmas\nredis.register_function('ping2', function() return 'pong' end)"


def _seed_every_encoding(server):
    """One key per RDB encoding Redis 7.0 writes, plus expiries, two databases and a function library."""
    main = server.client(0)
    main.set("int", 12345)
    main.set("short", "alice")
    main.set("lzf", "tick " * 400)  # compressible: stored LZF-compressed
    main.set("ttl", "soon", px=3_600_000)
    main.rpush("list", *range(10))
    main.rpush("long-list", *("item-%d-%s" % (i, "x" * 50) for i in range(2000)))
    main.sadd("intset", *range(20))
    main.sadd("set-hashtable", *("member-%d" % i for i in range(300)))
    main.hset("hash-listpack", mapping={"a": 1, "b": "two"})
    main.hset("hash-hashtable", mapping={"field-%d" % i: "value-%d" % i for i in range(600)})
    main.zadd("zset-listpack", {"a": 1.5, "b": -2})
    main.zadd("zset-skiplist", {"m%d" % i: i / 3 for i in range(300)})
    for i in range(5):
        main.xadd("stream", {"symbol": "SYM%d" % i, "price": str(100 + i)})
    main.xgroup_create("stream", "workers", id="0")
    main.xreadgroup("workers", "alice", {"stream": ">"}, count=2)  # two entries pending for one consumer
    main.function_load(LIBRARY)
    other = server.client(5)
    other.set(b"\x00binary\xff", bytes(range(256)))
    other.set("gone-soon", "x", px=60_000)


def _snapshot(server, tmp_dir):
    meta, files = redis_keys.dump_redis(RedisTarget("127.0.0.1", server.port, server.password), tmp_dir,
                                        progress=lambda _message: None)
    return meta, os.path.join(tmp_dir, redis_keys.DUMP_FILE), files


def test_every_payload_in_the_snapshot_is_what_dump_returns(make_redis, tmp_dir):
    server = make_redis(password="p-1")
    _seed_every_encoding(server)
    meta, path, files = _snapshot(server, tmp_dir)
    assert meta["rdb_version"] == redis_rdb.check_file(path) == 10
    assert files[redis_keys.DUMP_FILE][0] == os.path.getsize(path)
    entries = [item for kind, item in redis_rdb.read_entries(path) if kind == "key"]
    functions = [item for kind, item in redis_rdb.read_entries(path) if kind == "function"]
    assert functions == [LIBRARY.encode()]
    assert {(e.db, e.key) for e in entries} == {(db, key) for db, keys in redis_state(server).items() for key in keys}
    kinds = set()
    for entry in entries:
        client = server.client(entry.db)
        kinds.add(entry.kind)
        assert (entry.expire_ms is not None) == (client.pttl(entry.key) > 0), entry.key
        dumped = client.dump(entry.key)
        if entry.kind in (redis_rdb.SET_HASHTABLE, redis_rdb.HASH_HASHTABLE):
            flat = client.smembers(entry.key) if entry.kind == redis_rdb.SET_HASHTABLE else client.hgetall(entry.key)
            expected = sorted(flat) if entry.kind == redis_rdb.SET_HASHTABLE else sorted(flat.items())
            assert redis_rdb.members(entry.kind, entry.value) == expected, entry.key
        else:
            assert entry.restore_payload(meta["rdb_version"]) == dumped, entry.key
    # string, set, hash, zset-skiplist, zset/hash listpack, intset, quicklist 2, stream v2
    assert kinds == {0, 2, 4, 5, 11, 16, 17, 18, 19}


def test_restore_brings_back_every_encoding_and_a_rerun_changes_nothing(make_redis, tmp_dir):
    source = make_redis(password="p-1")
    _seed_every_encoding(source)
    before = redis_state(source)
    meta, path, _ = _snapshot(source, tmp_dir)
    target = make_redis(password="p-2", appendonly=True)
    target.client(9).set("stale", "must go")
    manifest = {"redis": meta, "set_id": "20261126_030000"}
    result = redis_restore.restore_redis(RedisTarget("127.0.0.1", target.port, "p-2"), manifest, path,
                                      progress=lambda _message: None)
    assert result["changed"] and result["persisted"] == "aof rewritten"
    assert redis_state(target) == before
    assert target.client(0).fcall("ping2", 0) == b"pong"
    assert target.client(0).xpending("stream", "workers")["pending"] == 2
    again = redis_restore.restore_redis(RedisTarget("127.0.0.1", target.port, "p-2"), manifest, path,
                                     progress=lambda _message: None)
    assert not again["changed"], again


def test_keys_that_expired_since_the_backup_are_not_restored(make_redis, tmp_dir):
    source = make_redis()
    source.client(0).set("lasting", "1")
    source.client(0).set("brief", "1", px=2000)
    meta, path, _ = _snapshot(source, tmp_dir)
    deadline = time.monotonic() + 30
    while source.client(0).exists("brief"):  # its expiry time has passed on the server's clock
        assert time.monotonic() < deadline, "the brief key did not expire"
        time.sleep(0.05)
    target = make_redis()
    result = redis_restore.restore_redis(RedisTarget("127.0.0.1", target.port), {"redis": meta, "set_id": "x"}, path,
                                      progress=lambda _message: None)
    assert result["keys_expired_since_backup"] == 1
    assert sorted(target.client(0).keys()) == [b"lasting"]


def test_a_snapshot_refused_by_the_server_fails_in_one_line_and_leaves_nothing(make_redis, tmp_dir):
    server = make_redis(password="right")
    with pytest.raises(RecoveryError) as err:
        redis_keys.dump_redis(RedisTarget("127.0.0.1", server.port, "wrong"), tmp_dir, progress=lambda _message: None)
    assert str(err.value) == "Redis unreachable or refused at 127.0.0.1:%d: authentication failed" % server.port
    server.client(0).execute_command("ACL", "SETUSER", "default", "-sync")
    with pytest.raises(RecoveryError) as err:
        redis_keys.dump_redis(RedisTarget("127.0.0.1", server.port, "right"), tmp_dir, progress=lambda _message: None)
    assert "refused the snapshot (SYNC)" in str(err.value) and "\n" not in str(err.value)
    assert os.listdir(tmp_dir) == []

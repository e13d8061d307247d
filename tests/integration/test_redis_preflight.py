"""The Redis restore's preflight and its other clients, against real servers: ACL users, refusals before any change
(in the dry run as in the real run), and writers that never mix into the restored keyspace."""

from __future__ import annotations

import os
import socket
import struct
import threading
import time

import pytest
import redis
from conftest import redis_state
from sandbox import RedisServer

from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.redis import redis_keys, redis_rdb, redis_restore
from ansible_collections.christmas.recovery.plugins.module_utils.redis.redis_keys import RedisTarget


def _quiet(_message):
    pass


def _set(server, tmp_dir, target=None):
    meta, _files = redis_keys.dump_redis(target or RedisTarget("127.0.0.1", server.port, server.password), tmp_dir,
                                         progress=_quiet)
    return {"redis": meta, "set_id": "20261206_030000"}, os.path.join(tmp_dir, redis_keys.DUMP_FILE)


def _seed(server, keys=200, value_size=16):
    client = server.client(0)
    for start in range(0, keys, 1000):
        client.mset({"k:%d" % i: os.urandom(value_size) for i in range(start, min(keys, start + 1000))})
    client.set("ttl", "soon", px=3_600_000)
    server.client(2).set("other-db", "x")
    state = redis_state(server)
    client.connection_pool.disconnect()
    return state


def _target_with_stale_key(make_redis, **kwargs):
    target = make_redis(**kwargs)
    target.client(4).set("stale", "before the restore")
    return target


def _refused_in_dry_run_and_real_run(server, target, manifest, path, expected):
    """Both runs refuse with ``expected`` in one line, and the keyspace is the one before."""
    before = redis_state(server)
    for check_mode in (True, False):
        with pytest.raises(RecoveryError) as err:
            redis_restore.restore_redis(target, manifest, path, check_mode=check_mode, progress=_quiet)
        assert expected in str(err.value) and "\n" not in str(err.value), str(err.value)
        assert redis_state(server) == before
    return str(err.value)


def test_backup_and_restore_as_an_acl_user_with_the_default_user_off(make_redis, tmp_dir):
    source, target = make_redis(), make_redis()
    expected = _seed(source)
    for server in (source, target):
        server.client(0).execute_command("ACL", "SETUSER", "restorer", "on", ">s3cret", "~*", "&*", "+@all")
        server.client(0).execute_command("ACL", "SETUSER", "default", "off")
    manifest, path = _set(source, tmp_dir, RedisTarget("127.0.0.1", source.port, "s3cret", user="restorer"))
    as_user = RedisTarget("127.0.0.1", target.port, "s3cret", user="restorer")
    result = redis_restore.restore_redis(as_user, manifest, path, progress=_quiet)
    assert result["changed"]
    check = redis.Redis(host="127.0.0.1", port=target.port, username="restorer", password="s3cret")
    assert sorted(check.keys()) == sorted(expected[0]) and check.get("k:7") == expected[0][b"k:7"][1]
    assert redis.Redis(host="127.0.0.1", port=target.port, username="restorer", password="s3cret", db=2).get(
        "other-db") == b"x"
    check.close()


@pytest.mark.parametrize("rules, expected", [
    (["-flushall"], "redis user restorer may not run FLUSHALL on 127.0.0.1:%d (ACL): allow it or restore as another "
                    "user"),
    (["-save"], "redis user restorer may not run SAVE on 127.0.0.1:%d (ACL)"),
    (["resetkeys", "%R~*", "%W~k:1*"], "redis user restorer may not run RESTORE on key "),
])
def test_a_command_or_key_the_acl_denies_is_refused_before_any_change(make_redis, tmp_dir, rules, expected):
    source = make_redis()
    _seed(source)
    manifest, path = _set(source, tmp_dir)
    target = _target_with_stale_key(make_redis)
    target.client(0).execute_command("ACL", "SETUSER", "restorer", "on", ">pw", "~*", "&*", "+@all", *rules)
    as_user = RedisTarget("127.0.0.1", target.port, "pw", user="restorer")
    _refused_in_dry_run_and_real_run(target, as_user, manifest, path,
                                     expected % target.port if "%d" in expected else expected)


def test_a_set_too_big_for_maxmemory_is_refused_before_any_change(make_redis, tmp_dir):
    source = make_redis()
    _seed(source, keys=2000, value_size=2048)  # about 4 MiB of values
    manifest, path = _set(source, tmp_dir)
    target = _target_with_stale_key(make_redis)
    target.client(0).config_set("maxmemory", 4 * 1024 * 1024)
    message = _refused_in_dry_run_and_real_run(target, RedisTarget("127.0.0.1", target.port), manifest, path,
                                               "has maxmemory 4.0 MiB")
    assert "needs about" in message and "raise maxmemory" in message


def test_a_server_disk_too_small_for_the_save_is_refused_before_any_change(make_redis, tmp_dir):
    source = make_redis()
    _seed(source, keys=1000, value_size=2048)  # a 2 MiB snapshot of random bytes
    manifest, path = _set(source, tmp_dir)
    small = os.path.join(tmp_dir, "small")
    os.makedirs(small)
    mounted = os.system("mount -t tmpfs -o size=1m tmpfs %s 2>/dev/null" % small) == 0
    if not mounted:
        pytest.skip("cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN)")
    target = RedisServer(os.path.join(small, "redis"))
    try:
        target.start().client(4).set("stale", "before the restore")
        _refused_in_dry_run_and_real_run(target, RedisTarget("127.0.0.1", target.port), manifest, path,
                                         "writes to %s with" % target.root)
    finally:
        target.destroy()
        os.system("umount %s" % small)


def _with_rdb_version(path, version):
    """The same snapshot, its header claiming another RDB version, its CRC-64 recomputed."""
    with open(path, "rb") as handle:
        data = handle.read()
    body = b"REDIS%04d" % version + data[9:-8]
    with open(path, "wb") as handle:
        handle.write(body + struct.pack("<Q", redis_rdb.crc64(body)))


def test_a_set_in_a_newer_rdb_format_than_the_server_reads_is_refused_before_any_change(make_redis, tmp_dir):
    source = make_redis()
    _seed(source)
    manifest, path = _set(source, tmp_dir)
    _with_rdb_version(path, 11)  # what Redis 7.2 writes; 7.0 reads 10 at most
    target = _target_with_stale_key(make_redis)
    _refused_in_dry_run_and_real_run(target, RedisTarget("127.0.0.1", target.port), manifest, path,
                                     "reads RDB format 10 at most; set 20261206_030000 holds RDB 11")


def test_writers_refuse_names_the_other_clients_before_any_change(make_redis, tmp_dir):
    source = make_redis()
    _seed(source)
    manifest, path = _set(source, tmp_dir)
    target = _target_with_stale_key(make_redis)
    app = redis.Redis(host="127.0.0.1", port=target.port, client_name="trading-api")
    app.ping()
    try:
        _refused_in_dry_run_and_real_run(target, RedisTarget("127.0.0.1", target.port, writers="refuse"), manifest,
                                         path, "other client(s) connected (127.0.0.1:")
        with pytest.raises(RecoveryError, match=r"\(trading-api\)"):
            redis_restore.restore_redis(RedisTarget("127.0.0.1", target.port, writers="refuse"), manifest, path,
                                        check_mode=True, progress=_quiet)
    finally:
        app.close()


class Writer(threading.Thread):
    """Writes w:N in db 0 in a bounded loop, each write in a transaction that also reads the database's size: what
    the writer saw of the keyspace at the moment its write landed."""

    def __init__(self, port, seconds=20):
        super().__init__(daemon=True)
        self.client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=30)
        self.deadline, self.stop, self.seen, self.longest = time.monotonic() + seconds, threading.Event(), {}, 0.0
        self.started = threading.Event()

    def run(self):
        number = 0
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            begin = time.monotonic()
            pipe = self.client.pipeline(transaction=True)
            pipe.set("w:%d" % number, number)
            pipe.dbsize()
            self.seen[b"w:%d" % number] = pipe.execute()[1]
            self.longest = max(self.longest, time.monotonic() - begin)
            number += 1
            self.started.set()
        self.client.close()


def _fresh_write_succeeds_at_once(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=2) as sock:
        sock.sendall(b"SET fresh 1\r\n")
        assert sock.recv(16) == b"+OK\r\n"


def test_writers_pause_keeps_every_write_out_of_the_restored_keyspace(make_redis, tmp_dir):
    source = make_redis()
    expected = _seed(source, keys=60000)
    manifest, path = _set(source, tmp_dir)
    target = _target_with_stale_key(make_redis)
    writer = Writer(target.port)
    writer.start()
    try:
        assert writer.started.wait(10)
        result = redis_restore.restore_redis(RedisTarget("127.0.0.1", target.port), manifest, path, progress=_quiet)
    finally:
        writer.stop.set()
        writer.join(30)
    assert result["changed"] and len(result["other_clients"]) >= 1
    state = redis_state(target)
    written = {key for key in state[0] if key.startswith(b"w:")}
    # every write that survived landed after the whole set was in place: none mixed into a partial load
    assert written and all(writer.seen[key] >= len(expected[0]) for key in written), sorted(
        (writer.seen[key], key) for key in written)[:3]
    state[0] = {key: value for key, value in state[0].items() if key not in written}
    assert state == expected
    _fresh_write_succeeds_at_once(target)


def test_a_restore_failing_inside_the_transaction_says_how_far_and_leaves_nothing_waiting(make_redis, tmp_dir,
                                                                                           monkeypatch):
    source = make_redis()
    _seed(source, keys=500)
    manifest, path = _set(source, tmp_dir)
    target = _target_with_stale_key(make_redis)
    good = redis_rdb.payload

    def one_bad_payload(kind, value, version):  # the server refuses this RESTORE when the transaction runs
        made = good(kind, value, version)
        return made[:-1] + bytes((made[-1] ^ 1,)) if value == one_bad_payload.value else made

    one_bad_payload.value = None
    for kind, item in redis_rdb.read_entries(path):
        if kind == "key" and item.key == b"k:250":
            one_bad_payload.value = item.value
    monkeypatch.setattr(redis_rdb, "payload", one_bad_payload)
    with pytest.raises(RecoveryError) as err:
        redis_restore.restore_redis(RedisTarget("127.0.0.1", target.port), manifest, path, progress=_quiet)
    assert "failed after the flush with" in str(err.value) and "of 502 keys loaded" in str(err.value), str(err.value)
    _fresh_write_succeeds_at_once(target)

"""Redis point in time from the shipped AOF, against real servers: the keys of a past second, across rewrites, never a
torn command, damaged or missing files and points outside the window refused, pruning, timestamps switched on."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import threading
import time

import pytest
import redis
from conftest import redis_state
from sandbox import RedisServer, free_port

from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.redis import (
    redis_aof,
    redis_aof_index,
    redis_aof_restore,
    redis_restore,
)
from ansible_collections.christmas.recovery.plugins.module_utils.redis.redis_keys import RedisTarget


def _target(server):
    return RedisTarget(host="127.0.0.1", port=server.port)


def _source(make_redis):
    server = make_redis(appendonly=True)
    redis_aof.enable_timestamps(_target(server))
    return server


def _second_done():
    """The current second, once the clock has passed it: every write made so far is stamped with it or earlier."""
    second = int(time.time())
    while time.time() < second + 1:
        time.sleep(0.01)
    return second


def _wait_rewrite(server):
    deadline = time.monotonic() + 20
    while server.client().info("persistence")["aof_rewrite_in_progress"] or \
            server.client().info("persistence")["aof_rewrite_scheduled"]:
        assert time.monotonic() < deadline, "the AOF rewrite did not finish"
        time.sleep(0.02)


@contextlib.contextmanager
def _foreground_redis(root, *settings):
    """A redis-server without a config file, as our child (stopped and reaped at the end)."""
    server = RedisServer(root, port=free_port())
    proc = subprocess.Popen(["redis-server", "--port", str(server.port), "--bind", "127.0.0.1", "--dir", root,
                             "--save", "", *settings], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                server.client().ping()
                break
            except redis.RedisError:
                assert time.monotonic() < deadline and proc.poll() is None, "redis-server did not start"
                time.sleep(0.02)
        yield server
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _rebuilt_state(repo, second, scratch):
    """The keys of a real server started on the RDB rebuilt for ``second``."""
    facts = redis_aof_restore.rdb_at(repo, second, scratch, progress=lambda _line: None)
    root = tempfile.mkdtemp(dir=scratch)
    shutil.copyfile(facts["path"], os.path.join(root, "dump.rdb"))
    with _foreground_redis(root, "--appendonly", "no") as server:
        return redis_state(server)


def _write_a(client):
    client.set("price:SYM1", "101.5")
    client.set("session:42", "alice", ex=3600)
    client.hset("user:1", mapping={"name": "Ålice", "limit": "1000"})
    client.rpush("orders", "o1", "o2")


def _write_b(server):
    client = server.client()
    client.set("price:SYM1", "99.0")
    client.delete("session:42")
    client.hset("user:1", "limit", "5")
    client.set("temp", "x", ex=600)
    server.client(3).set("cache:1", "v")


def test_second_between_shipments_restores_exactly_its_keys(make_redis, tmp_dir):
    source = _source(make_redis)
    repo, scratch = os.path.join(tmp_dir, "repo"), os.path.join(tmp_dir, "scratch")
    _write_a(source.client())
    state_a, second_a = redis_state(source), _second_done()
    redis_aof.ship_aof(_target(source), None, repo)
    _write_b(source)
    state_b, second_b = redis_state(source), _second_done()
    redis_aof.ship_aof(_target(source), None, repo)
    assert state_a != state_b
    assert _rebuilt_state(repo, second_a, scratch) == state_a
    assert _rebuilt_state(repo, second_b, scratch) == state_b
    # the caller's online restore takes the rebuilt RDB and the section it returns
    facts = redis_aof_restore.rdb_at(repo, second_a, scratch, progress=lambda _line: None)
    target = make_redis(appendonly=True)
    target.client().set("unrelated", "gone after the restore")
    redis_restore.restore_redis(_target(target), {"set_id": "aof-%d" % second_a, "redis": facts["redis"]},
                                facts["path"], progress=lambda _line: None)
    assert redis_state(target) == state_a
    assert os.stat(repo).st_mode & 0o777 == 0o700
    stored = [path for path in glob.glob(os.path.join(repo, "**"), recursive=True) if os.path.isfile(path)]
    assert stored and all(os.stat(path).st_mode & 0o777 == 0o600 for path in stored)
    assert not glob.glob(os.path.join(scratch, "*", "appendonlydir"))  # only the RDB is left in the scratch dir


def test_the_seconds_between_a_shipment_and_a_rewrite_are_no_gap(make_redis, tmp_dir):
    """Redis keeps the replaced incr file (aof-disable-auto-gc); the next shipment copies its tail, so a second
    written after the last shipment and before the rewrite restores, and Redis then deletes the old files."""
    source = _source(make_redis)
    assert source.client().config_get("aof-disable-auto-gc")["aof-disable-auto-gc"] == "yes"
    repo, scratch = os.path.join(tmp_dir, "repo"), os.path.join(tmp_dir, "scratch")
    _write_a(source.client())
    redis_aof.ship_aof(_target(source), None, repo)
    _second_done()
    source.client().set("between", "shipped late")  # after the shipment, before the rewrite
    state_between, second_between = redis_state(source), _second_done()
    source.client().bgrewriteaof()
    _wait_rewrite(source)
    _write_b(source)
    state_b, second_b = redis_state(source), _second_done()
    report = redis_aof.ship_aof(_target(source), None, repo)
    assert report["window"]["gaps"] == [] and report["window"]["start"] <= second_between <= report["window"]["end"]
    assert _rebuilt_state(repo, second_between, scratch) == state_between
    assert _rebuilt_state(repo, second_b, scratch) == state_b
    manifest = os.path.join(source.root, "appendonlydir", "appendonly.aof.manifest")
    assert [kind for _name, _seq, kind in redis_aof.read_manifest(manifest)] == ["b", "i"]  # history deleted
    assert len(glob.glob(os.path.join(source.root, "appendonlydir", "*.incr.*"))) == 1


def test_second_before_a_rewrite_still_restores(make_redis, tmp_dir):
    source = _source(make_redis)
    repo, scratch = os.path.join(tmp_dir, "repo"), os.path.join(tmp_dir, "scratch")
    _write_a(source.client())
    state_a, second_a = redis_state(source), _second_done()
    redis_aof.ship_aof(_target(source), None, repo)
    source.client().bgrewriteaof()
    _wait_rewrite(source)
    _write_b(source)
    state_b, second_b = redis_state(source), _second_done()
    report = redis_aof.ship_aof(_target(source), None, repo)
    assert report["generation"] == "g000002"
    assert len(glob.glob(os.path.join(source.root, "appendonlydir", "*.base.*"))) == 1  # Redis removed the old one
    assert _rebuilt_state(repo, second_a, scratch) == state_a
    assert _rebuilt_state(repo, second_b, scratch) == state_b


def test_shipping_under_writes_never_ships_a_torn_command(make_redis, tmp_dir):
    source = _source(make_redis)
    repo, scratch = os.path.join(tmp_dir, "repo"), os.path.join(tmp_dir, "scratch")
    stop, counts = threading.Event(), {"n": 0}

    def writer():
        client = source.client()
        while not stop.is_set():
            n = counts["n"]
            pipe = client.pipeline(transaction=n % 3 == 0)  # every third batch is a MULTI/EXEC block
            pipe.set("big:%d" % (n % 50), os.urandom(4000).hex())
            pipe.incr("counter")
            pipe.execute()
            counts["n"] = n + 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        deadline = time.monotonic() + 1.5
        ships = 0
        while time.monotonic() < deadline:
            redis_aof.ship_aof(_target(source), None, repo)
            ships += 1
    finally:
        stop.set()
        thread.join()
    state, second = redis_state(source), _second_done()
    redis_aof.ship_aof(_target(source), None, repo)
    pieces = sorted(glob.glob(os.path.join(repo, "g*", "*.incr.aof.*")))
    assert counts["n"] > 100 and ships > 3 and len(pieces) > 3
    for piece in pieces:  # each piece alone is a valid AOF: whole commands, no MULTI left open
        check = subprocess.run(["redis-check-aof", piece], capture_output=True, text=True, check=False)
        assert check.returncode == 0, (piece, check.stdout)
    assert _rebuilt_state(repo, second, scratch) == state


def test_an_aof_cut_inside_a_command_or_transaction_ships_only_whole_ones(make_redis, tmp_dir):
    source = _source(make_redis)
    repo, scratch = os.path.join(tmp_dir, "repo"), os.path.join(tmp_dir, "scratch")
    _write_a(source.client())
    pipe = source.client().pipeline(transaction=True)
    pipe.set("in-multi", "1").incr("counter")
    pipe.execute()
    state, second = redis_state(source), _second_done()
    live = os.path.join(source.root, "appendonlydir")
    incr = glob.glob(os.path.join(live, "*.incr.aof"))[0]
    with open(incr, "rb") as handle:
        data = handle.read()
    multi = data.index(b"*1\r\n$5\r\nMULTI")
    cuts = {data.index(b"user:1") + 2: data.rindex(b"*", 0, data.index(b"user:1")),  # inside the HSET
            data.index(b"EXEC") - 6: multi}  # inside the MULTI/EXEC block, after its last command
    for cut, whole in cuts.items():
        copy_dir = os.path.join(tmp_dir, "cut-%d" % cut, "appendonlydir")
        shutil.copytree(live, copy_dir)  # copy2: the base keeps its time, so it is the same generation
        os.truncate(os.path.join(copy_dir, os.path.basename(incr)), cut)
        shutil.rmtree(repo, ignore_errors=True)
        report = redis_aof.ship_aof(_target(source), os.path.dirname(copy_dir), repo)
        piece = [item for item in report["files"] if ".incr.aof." in item["path"]][0]
        with open(os.path.join(repo, piece["path"]), "rb") as handle:
            assert handle.read() == data[:whole]
        report = redis_aof.ship_aof(_target(source), None, repo)  # the rest, from the server's own files
        assert [item["path"].rsplit(".", 1)[1] for item in report["files"]] == [str(whole)]
        assert _rebuilt_state(repo, second, scratch) == state


def test_damaged_or_missing_file_is_refused_naming_it(make_redis, tmp_dir):
    source = _source(make_redis)
    repo, scratch = os.path.join(tmp_dir, "repo"), os.path.join(tmp_dir, "scratch")
    _write_a(source.client())
    second = _second_done()
    redis_aof.ship_aof(_target(source), None, repo)
    assert redis_aof_index.verify_repository(repo)["files"] == 2
    piece = glob.glob(os.path.join(repo, "g000001", "*.incr.aof.0"))[0]
    with open(piece, "r+b") as handle:
        handle.seek(20)
        byte = handle.read(1)
        handle.seek(20)
        handle.write(bytes([byte[0] ^ 1]))
    for attempt in (lambda: redis_aof_index.verify_repository(repo),
                    lambda: redis_aof_restore.rdb_at(repo, second, scratch, progress=lambda _line: None)):
        with pytest.raises(RecoveryError, match="damaged") as err:
            attempt()
        assert piece in str(err.value)
    assert os.listdir(scratch) == []  # nothing half-done left behind
    os.unlink(piece)
    with pytest.raises(RecoveryError, match="missing g000001/%s" % os.path.basename(piece)):
        redis_aof_index.verify_repository(repo)


def test_second_outside_the_window_is_refused_naming_it(make_redis, tmp_dir):
    source = _source(make_redis)
    repo, scratch = os.path.join(tmp_dir, "repo"), os.path.join(tmp_dir, "scratch")
    with pytest.raises(RecoveryError, match="no AOF repository at %s" % repo):
        redis_aof_restore.rdb_at(repo, int(time.time()), scratch)
    _write_a(source.client())
    _second_done()
    redis_aof.ship_aof(_target(source), None, repo)
    span = redis_aof_index.window(repo)
    for outside in (span["start"] - 60, span["end"] + 60):
        with pytest.raises(RecoveryError, match="cannot restore %d .*its window is %d .* to %d " % (
                outside, span["start"], span["end"])):
            redis_aof_restore.rdb_at(repo, outside, scratch)


def test_prune_keeps_the_generation_a_later_second_needs(make_redis, tmp_dir):
    source = _source(make_redis)
    repo, scratch = os.path.join(tmp_dir, "repo"), os.path.join(tmp_dir, "scratch")
    _write_a(source.client())
    second_a = _second_done()
    redis_aof.ship_aof(_target(source), None, repo)
    source.client().bgrewriteaof()
    _wait_rewrite(source)
    _second_done()
    _write_b(source)
    state_b, second_b = redis_state(source), _second_done()
    redis_aof.ship_aof(_target(source), None, repo)
    assert redis_aof.prune(repo, second_a)["changed"] is False  # second_a needs the first generation
    assert sorted(os.listdir(repo)) == [".christmas-recovery.lock", "g000001", "g000002", "index.json"]
    result = redis_aof.prune(repo, second_b)
    assert result["removed"] == ["g000001"]
    assert sorted(os.listdir(repo)) == [".christmas-recovery.lock", "g000002", "index.json"]
    assert redis_aof_index.window(repo)["start"] > second_a
    assert _rebuilt_state(repo, second_b, scratch) == state_b
    with pytest.raises(RecoveryError, match="window is"):
        redis_aof_restore.rdb_at(repo, second_a, scratch)


def test_files_the_index_does_not_name_are_ignored_and_removed(make_redis, tmp_dir):
    source = _source(make_redis)
    repo = os.path.join(tmp_dir, "repo")
    _write_a(source.client())
    _second_done()
    redis_aof.ship_aof(_target(source), None, repo)
    strays = [os.path.join(repo, "g000009"), os.path.join(repo, "g000001", "appendonly.aof.1.incr.aof.999")]
    os.mkdir(strays[0])
    with open(strays[1], "wb") as handle:
        handle.write(b"*1\r\n$4\r\nPING\r\n")
    assert redis_aof_index.verify_repository(repo)["files"] == 2
    report = redis_aof.ship_aof(_target(source), None, repo)
    assert report["changed"] is False and report["shipped_bytes"] == 0
    assert not any(os.path.exists(path) for path in strays)


def test_enable_timestamps_turns_the_aof_on_and_persists_it(make_redis, tmp_dir):
    server = make_redis(appendonly=False)
    server.client().set("kept", "1")
    result = redis_aof.enable_timestamps(_target(server))
    assert result["changed"] is True and result["persisted"] is True
    assert server.client().config_get("appendonly") == {"appendonly": "yes"}
    assert server.client().info("persistence")["aof_enabled"] == 1
    with open(os.path.join(server.root, "redis.conf"), encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    assert "appendonly yes" in lines and "aof-timestamp-enabled yes" in lines
    assert os.path.exists(os.path.join(server.root, "appendonlydir", "appendonly.aof.manifest"))
    assert redis_aof.enable_timestamps(_target(server))["changed"] is False
    report = redis_aof.ship_aof(_target(server), None, os.path.join(tmp_dir, "repo"))
    assert report["changed"] is True


def test_enable_timestamps_without_a_config_file_says_it_is_not_persisted(tmp_dir):
    with _foreground_redis(tmp_dir, "--appendonly", "no") as server:
        result = redis_aof.enable_timestamps(_target(server))
        assert result["changed"] is True and result["persisted"] is False
        assert server.client().config_get("aof-timestamp-enabled") == {"aof-timestamp-enabled": "yes"}
        assert server.client().info("persistence")["aof_enabled"] == 1


def test_ship_refuses_a_server_without_timestamps(make_redis, tmp_dir):
    server = make_redis(appendonly=True)
    with pytest.raises(RecoveryError, match="aof-timestamp-enabled no"):
        redis_aof.ship_aof(_target(server), None, os.path.join(tmp_dir, "repo"))

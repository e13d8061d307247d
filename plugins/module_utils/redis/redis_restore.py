# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A Redis restore: the preflight (``redis_preflight``), then the whole keyspace replaced by the snapshot's, made
durable.

Other clients' writes never mix with the set's keys. With ``writers=pause`` the flush and every RESTORE run as one
transaction (MULTI/EXEC): the server runs it atomically, other clients' commands wait while it runs and land after
it; writes made before it (while it is queued) are replaced like any write before a restore. (``CLIENT PAUSE WRITE``
would pause the restore's own connection too.) With ``writers=refuse`` the restore refuses while another client is
connected, and streams the load in pipelines.
"""

from __future__ import annotations

import contextlib
import time
from array import array

from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.redis import redis_preflight, redis_rdb
from ansible_collections.christmas.recovery.plugins.module_utils.redis.redis_keys import (
    BATCH,
    ReplyError,
    _command,
    _info,
    _ok,
    matches_target,
    scan_snapshot,
    server_info,
)


def restore_redis(target, manifest, path, force=False, check_mode=False, progress=print, memo=None):
    """Replace the server's whole keyspace with the snapshot's, over the network, and make it durable.

    ``memo`` (a dict) carries the snapshot's scan and the comparison with the server from the planning call (check
    mode) to the call that restores, which happens only when the plan found a difference: neither is done twice.
    """
    memo = {} if memo is None else memo
    meta = manifest["redis"]
    info = server_info(target)
    if _version_tuple(info["version"]) < _version_tuple(meta["version"]):
        raise RecoveryError("target Redis %s at %s is older than the backup's %s (its data format may not load)"
                            % (info["version"], target.describe(), meta["version"]))
    if "snapshot" not in memo:
        memo["snapshot"] = scan_snapshot(path)
    snapshot = memo["snapshot"]
    redis_preflight.check_format(target, info, manifest, snapshot)
    if "permitted" not in memo:
        _preflight(target, lambda conn: redis_preflight.check_permissions(conn, path, info["aof_enabled"],
                                                                          snapshot["functions"]))
        memo["permitted"] = True
    result = {"target_version": info["version"], "aof_enabled": info["aof_enabled"],
              "keys_before": sum(info["keys_per_db"].values()), "keys_expired_since_backup": snapshot["expired"]}
    if "identical" not in memo:
        memo["identical"] = not force and matches_target(target, path, snapshot)
    if memo["identical"]:
        result.update(changed=False, state="already identical to set %s" % manifest["set_id"],
                      keys_per_db=snapshot["keys_per_db"])
        return result
    transaction = target.writers == "pause"
    result.update(_preflight(target, lambda conn: redis_preflight.check_memory(conn, snapshot, manifest, transaction)))
    result["disk_free"] = _preflight(target, lambda conn: redis_preflight.check_disk(conn, path, info["aof_enabled"]))
    result["other_clients"] = _preflight(target, lambda conn: redis_preflight.check_writers(conn, target.writers))
    result["changed"] = True
    if check_mode:
        result["state"] = "would replace %d keys with %d" % (result["keys_before"], snapshot["key_count"])
        return result
    progress("flushing Redis at %s and loading %d keys%s" % (target.describe(), snapshot["key_count"], (
        " in one transaction (%d other clients connected)" % len(result["other_clients"])) if transaction else ""))
    load = _load_in_transaction if transaction else _replace_keyspace
    result["persisted"], loaded = load(target, path, snapshot, info["aof_enabled"], progress)
    result["keys_per_db"] = _check_counts(target, *loaded) if transaction else _check_counts(target, loaded)
    result["state"] = "restored from set %s" % manifest["set_id"]
    result["keys_after"] = sum(result["keys_per_db"].values())
    return result


def _preflight(target, check):
    conn = target.connect()
    try:
        return check(conn)
    finally:
        conn.close()


def _version_tuple(version):
    return tuple(int(part) for part in version.split(".")[:2])


def _replace_keyspace(target, path, snapshot, aof_enabled, progress):
    """FLUSHALL, then RESTORE every live key with its absolute expiry, pipelined per database; a failure says how far
    the load got. Returns how the result was persisted and {db: [keys loaded, their expiry times]}."""
    conns, pending, loaded, state = {}, {}, {}, {"flushed": False, "done": 0}
    version = snapshot["rdb_version"]
    try:
        control = conns["control"] = target.connect()
        _ok(control, "FLUSHALL")
        state["flushed"] = True
        for kind, item in redis_rdb.read_entries(path):
            if kind == "function":
                _ok(control, "FUNCTION", "LOAD", "REPLACE", item)
                continue
            if item.expire_ms is not None and item.expire_ms <= redis_rdb.now_ms():
                continue
            db = str(item.db)
            if db not in loaded:
                conns[db] = target.connect(item.db)
                pending[db], loaded[db] = [], [0, array("q")]
            pending[db].append(_command(b"RESTORE", item.key, item.expire_ms or 0, item.restore_payload(version),
                                        b"REPLACE", *((b"ABSTTL",) if item.expire_ms is not None else ())))
            loaded[db][0] += 1
            if item.expire_ms is not None:
                loaded[db][1].append(item.expire_ms)
            if len(pending[db]) >= BATCH:
                _send_restores(conns[db], pending[db], state)
        for db, commands in pending.items():
            _send_restores(conns[db], commands, state)
        progress("loaded %d keys into Redis at %s" % (state["done"], target.describe()))
        return _persist(control, aof_enabled), loaded
    except (OSError, RecoveryError) as err:
        if not state["flushed"]:
            raise
        raise RecoveryError("Redis restore at %s failed after the flush with %d of %d keys loaded (the keyspace is "
                            "partial; run the restore again): %s" % (target.describe(), state["done"],
                                                                   snapshot["key_count"],
                                                                   str(err).splitlines()[0])) from None
    finally:
        for conn in conns.values():
            conn.close()


def _load_in_transaction(target, path, snapshot, aof_enabled, progress):
    """FLUSHALL and every RESTORE queued in one MULTI and run by one EXEC: no other client's command runs in between.
    A refusal while queueing discards the transaction (nothing changed); a RESTORE failing inside EXEC leaves the
    keyspace partial and says how far it got."""
    conn = target.connect()
    loaded = {}
    try:
        _ok(conn, "MULTI")
        try:
            restores = _queue_load(conn, path, snapshot, loaded)
        except RecoveryError as err:
            with contextlib.suppress(RecoveryError):  # a lost connection: the server drops a transaction never run
                conn.call("DISCARD")
            if "nothing changed" in str(err):
                raise
            raise RecoveryError("Redis restore at %s failed before the transaction ran (the restore failed before "
                                "anything changed): %s" % (target.describe(), str(err).splitlines()[0])) from None
        try:
            replies = conn.call("EXEC")
        except RecoveryError as err:
            raise RecoveryError("Redis restore at %s lost the server while the flush and load ran (the keyspace may be "
                                "partial; run the restore again): %s" % (target.describe(), err)) from None
        if not isinstance(replies, list):
            raise RecoveryError("Redis at %s refused the restore's transaction: %s (nothing changed)" % (
                target.describe(), replies))
        failed = [reply for reply in replies if isinstance(reply, ReplyError)]
        if failed:
            done = sum(1 for restore, reply in zip(restores, replies, strict=False) if restore and reply == b"OK")
            raise RecoveryError("Redis restore at %s failed after the flush with %d of %d keys loaded (the keyspace "
                                "is partial; run the restore again): %s" % (
                                    target.describe(), done, snapshot["key_count"], failed[0]))
        counts = dict(zip(loaded, replies[len(restores) + 1::2], strict=True))
        progress("loaded %d keys into Redis at %s" % (snapshot["key_count"], target.describe()))
        return _persist(conn, aof_enabled), (loaded, counts)
    except OSError as err:
        raise RecoveryError("Redis restore at %s: %s" % (target.describe(), conn.lost(err))) from None
    finally:
        conn.close()


def _queue_load(conn, path, snapshot, loaded):
    """Queue FLUSHALL, every function and live key, and each database's DBSIZE; returns, per queued command, whether
    it is a RESTORE. ``loaded`` gets {db: [keys queued, their expiry times]}."""
    queued, restores, db = [_command("FLUSHALL")], [False], 0
    for kind, item in redis_rdb.read_entries(path):
        if kind == "function":
            queued.append(_command("FUNCTION", "LOAD", "REPLACE", item))
            restores.append(False)
        elif item.expire_ms is None or item.expire_ms > redis_rdb.now_ms():
            if item.db != db:
                queued.append(_command("SELECT", item.db))
                restores.append(False)
                db = item.db
            restores.append(True)
            queued.append(_command(b"RESTORE", item.key, item.expire_ms or 0,
                                   item.restore_payload(snapshot["rdb_version"]), b"REPLACE",
                                   *((b"ABSTTL",) if item.expire_ms is not None else ())))
            count = loaded.setdefault(str(item.db), [0, array("q")])
            count[0] += 1
            if item.expire_ms is not None:
                count[1].append(item.expire_ms)
        if len(queued) >= BATCH:
            _queue(conn, queued)
    for name in loaded:  # the counts inside the transaction: later writes by other clients do not count
        queued.extend((_command("SELECT", name), _command("DBSIZE")))
    _queue(conn, queued)
    return restores


def _queue(conn, commands):
    for reply in conn.pipeline(commands):
        if isinstance(reply, ReplyError):
            raise RecoveryError("Redis at %s refused the restore while it was queued (nothing changed): %s" % (
                conn.target.describe(), reply))
    commands.clear()


def _send_restores(conn, commands, state):
    for reply in conn.pipeline(commands):
        if isinstance(reply, ReplyError):
            raise RecoveryError(reply)
        state["done"] += 1
    commands.clear()


def _check_counts(target, loaded, after=None):
    """Every database holds the keys loaded into it, less at most those whose expiry has passed since."""
    after = server_info(target)["keys_per_db"] if after is None else after
    now = redis_rdb.now_ms()
    for db in sorted(set(after) | set(loaded), key=int):
        count, expiries = loaded.get(db, (0, ()))
        lapsed = sum(1 for when in expiries if when <= now)
        if not count - lapsed <= after.get(db, 0) <= count:
            raise RecoveryError("Redis at %s holds %d keys in db %s after the restore, %d were loaded" % (
                target.describe(), after.get(db, 0), db, count))
    return {db: after[db] for db in sorted(after, key=int)}


def _persist(conn, aof_enabled, timeout=600):
    """Make the restored keyspace survive a restart: rewrite the AOF when it is on, else write an RDB snapshot."""
    if not aof_enabled:
        _ok(conn, "SAVE")
        return "rdb snapshot"
    _ok(conn, "BGREWRITEAOF")
    deadline = time.monotonic() + timeout
    while True:
        persistence = _info(conn, "persistence")
        if persistence["aof_rewrite_in_progress"] == "0" and persistence["aof_rewrite_scheduled"] == "0":
            if persistence.get("aof_last_bgrewrite_status", "ok") != "ok":
                raise RecoveryError("Redis AOF rewrite after the restore failed; check the server's log and disk")
            return "aof rewritten"
        if time.monotonic() > deadline:
            raise RecoveryError("Redis AOF rewrite after the restore did not finish in %d s" % timeout)
        time.sleep(0.1)

# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Redis point in time: the server's multi-part AOF shipped, piece by piece, into a private repository.

Redis 7 keeps ``<dir>/<appenddirname>/``: a manifest, one base file (RDB or AOF format) and the incr files that
follow it; a rewrite makes a new base and incr and removes the old ones. With ``aof-timestamp-enabled`` the incr
files carry ``#TS:<unix seconds>`` lines, which let ``redis-check-aof --truncate-to-timestamp`` cut them at a second.

A generation is one base and its incr files. A shipment copies a new base whole and, of each incr file, the bytes
added since the last shipment, ending at a command boundary (never inside a command or a MULTI/EXEC block), each
piece with its SHA-256. ``index.json``, written atomically and last, is the repository: a file it does not name is
ignored and removed by the next shipment. A point T means the dataset after every write stamped T or earlier. A
generation restores T from its base time up to the last whole second before its newest shipment. A rewrite between
two shipments would leave the writes in between only in the new base; with ``aof-disable-auto-gc yes`` Redis keeps the
replaced incr file (type h) instead, and the next shipment copies its tail into its generation, which then restores
every second up to the new base, and lets Redis delete it. Only a second rewrite before the next shipment still
leaves a gap in the window.
``redis_aof_restore`` rebuilds a point as an RDB file.
"""

from __future__ import annotations

import copy
import os
import re
import time

from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.core.fsutil import (
    CHUNK,
    HashingWriter,
    make_private_dir,
    read_blocks,
    remove_quietly,
    write_json_atomic,
)
from ansible_collections.christmas.recovery.plugins.module_utils.core.locking import LOCK_NAME, DirectoryLock
from ansible_collections.christmas.recovery.plugins.module_utils.redis import redis_rdb
from ansible_collections.christmas.recovery.plugins.module_utils.redis.redis_aof_index import (
    INDEX,
    generation_files,
    generation_range,
    load_index,
    window_of,
)
from ansible_collections.christmas.recovery.plugins.module_utils.redis.redis_keys import _info, _ok, _text

MANIFEST_LINE = re.compile(r"^file (\S+) seq (\d+) type ([bhi])$")
# stamps on before the first base is made; replaced incr files kept until their tail is shipped
SETTINGS = {"aof-disable-auto-gc": "yes", "aof-timestamp-enabled": "yes", "appendonly": "yes"}


def _persistence(conn):
    return _info(conn, "persistence")


def _rewriting(persistence):
    return persistence.get("aof_rewrite_in_progress") != "0" or persistence.get("aof_rewrite_scheduled") != "0"


def _config(conn, name):
    reply = _ok(conn, "CONFIG", "GET", name)
    if not isinstance(reply, list) or len(reply) != 2:
        raise RecoveryError("Redis at %s has no setting %s" % (conn.target.describe(), name))
    return _text(conn, reply[1])


def _wait_aof_on(conn, deadline):
    while True:
        persistence = _persistence(conn)
        if persistence.get("aof_enabled") == "1" and not _rewriting(persistence):
            if persistence.get("aof_last_bgrewrite_status", "ok") != "ok":
                raise RecoveryError("Redis at %s: the AOF rewrite failed; check the server's log and disk"
                                    % conn.target.describe())
            return persistence
        if time.monotonic() > deadline:
            raise RecoveryError("Redis at %s: the AOF rewrite did not finish in time (aof_rewrite_in_progress:%s)"
                                % (conn.target.describe(), persistence.get("aof_rewrite_in_progress")))
        time.sleep(0.05)


def enable_timestamps(target, timeout=120):
    """``appendonly yes``, ``aof-timestamp-enabled yes`` and ``aof-disable-auto-gc yes``, written to the server's
    config file when it has one.

    Returns {"changed", "persisted", "settings": {name: {"before", "after"}}}; ``persisted`` is False when the server
    runs without a config file (the settings then last until its next restart). The config file is rewritten whenever
    there is one, so that settings made by hand before are persisted too. Timestamps switched on while the AOF was
    on start a rewrite: the writes before it have no time; the generation it starts is the first to ship."""
    conn = target.connect()
    try:
        settings = {}
        for name, wanted in SETTINGS.items():
            before = _config(conn, name)
            if before != wanted:
                _ok(conn, "CONFIG", "SET", name, wanted)
            settings[name] = {"before": before, "after": wanted}
        changed = any(setting["before"] != setting["after"] for setting in settings.values())
        if settings["appendonly"]["before"] == "yes" and settings["aof-timestamp-enabled"]["before"] != "yes":
            # a new generation, so that every write of every generation shipped has a time
            _ok(conn, "BGREWRITEAOF")
        _wait_aof_on(conn, time.monotonic() + timeout)  # turning appendonly on writes the first base first
        config_file = _info(conn, "server").get("config_file", "")
        if config_file:
            _ok(conn, "CONFIG", "REWRITE")
    finally:
        conn.close()
    return {"changed": changed, "persisted": bool(config_file), "config_file": config_file or None,
            "settings": settings}


# ---------------------------------------------------------------- the AOF on disk


def read_manifest(path):
    """[(name, seq, type)] of a Redis 7 AOF manifest, in its order."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = [line.strip() for line in handle if line.strip()]
    except FileNotFoundError:
        raise RecoveryError("no AOF manifest at %s: is appendonly on, and is this the host path of the server's "
                            "dir?" % path) from None
    entries = []
    for line in lines:
        match = MANIFEST_LINE.match(line)
        if not match or "/" in match.group(1):
            raise RecoveryError("AOF manifest %s has a line this tool does not read: %.80s" % (path, line))
        entries.append((match.group(1), int(match.group(2)), match.group(3)))
    if [kind for _name, _seq, kind in entries].count("b") != 1:
        raise RecoveryError("AOF manifest %s does not name exactly one base file" % path)
    return entries


class CommandScanner:
    """Fed an AOF's bytes in order, finds where the last complete command outside MULTI/EXEC ends, and the
    ``#TS:`` annotations before it."""

    def __init__(self, name):
        self.name, self.pending, self.consumed = name, b"", 0
        self.first_ts = self.last_ts = None

    def feed(self, data):
        """Returns the bytes up to the last boundary found so far (to be written); the rest waits for more."""
        buf = self.pending + bytes(data)
        pos, boundary, in_multi, stamps = 0, 0, False, []
        while pos < len(buf):
            if buf[pos:pos + 1] == b"#":
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    break
                line = buf[pos:end]
                if not line.startswith(b"#TS:") or not line[4:].isdigit():
                    raise self._bad(pos, "an unknown annotation %.40r" % line)
                stamps.append(int(line[4:]))
                pos = end + 2
            else:
                parsed = self._command(buf, pos)
                if parsed is None:
                    break
                pos, verb = parsed
                if verb == b"multi":
                    in_multi = True
                elif verb == b"exec":
                    in_multi = False
            if not in_multi:
                boundary = pos
                if stamps:
                    self.first_ts = stamps[0] if self.first_ts is None else self.first_ts
                    self.last_ts = stamps[-1]
                    stamps = []
        self.pending = buf[boundary:]
        self.consumed += boundary
        return buf[:boundary]

    def _command(self, buf, pos):
        """(end, verb in lower case) of the RESP array at ``pos``, None when it is not complete yet."""
        line_end = buf.find(b"\r\n", pos)
        if line_end < 0:
            return None
        if buf[pos:pos + 1] != b"*" or not buf[pos + 1:line_end].isdigit():
            raise self._bad(pos, "no command")
        argc, pos, verb = int(buf[pos + 1:line_end]), line_end + 2, None
        for _ in range(argc):
            line_end = buf.find(b"\r\n", pos)
            if line_end < 0:
                return None
            if buf[pos:pos + 1] != b"$" or not buf[pos + 1:line_end].isdigit():
                raise self._bad(pos, "a broken argument")
            start = line_end + 2
            end = start + int(buf[pos + 1:line_end])
            if end + 2 > len(buf):
                return None
            if buf[end:end + 2] != b"\r\n":
                raise self._bad(end, "a broken argument end")
            verb = buf[start:end].lower() if verb is None else verb
            pos = end + 2
        return pos, verb

    def _bad(self, pos, what):
        return RecoveryError("AOF file %s has %s at offset %d" % (self.name, what, self.consumed + pos))


def _base_time(path):
    """The second the base was made: the RDB's ``ctime`` aux field, else the file's modification time (later than
    the rewrite's start, so never a point the base has not reached)."""
    with open(path, "rb") as handle:
        buf = handle.read(4096)
    if buf.startswith(b"REDIS"):
        length = redis_rdb._parser(buf)[0]
        pos = redis_rdb.HEADER.size
        try:
            while buf[pos] == redis_rdb.OP_AUX:
                name, pos = redis_rdb._read_string(buf, pos + 1, length)
                value, pos = redis_rdb._read_string(buf, pos, length)
                if name == b"ctime" and value.isdigit():
                    return int(value)
        except (IndexError, RecoveryError):
            pass
    return int(os.stat(path).st_mtime)


# ---------------------------------------------------------------- shipping


def ship_aof(target, aof_dir, repo_dir, now=None, timeout=60):
    """Copy what the server's AOF gained since the last shipment into ``repo_dir``.

    ``aof_dir`` is this host's path of the server's ``dir`` (None: what ``CONFIG GET dir`` says, right when Redis runs
    here). ``now`` is the shipment time to record (default: the clock, read before anything is copied). A rewrite
    running or finishing while the copy is made makes the copy be thrown away and made again, until ``timeout``.
    Returns {"changed", "shipped_bytes", "files", "generation", "window"}."""
    make_private_dir(repo_dir)
    deadline = time.monotonic() + timeout
    with DirectoryLock(repo_dir, wait_seconds=timeout):
        index = load_index(repo_dir)
        conn = target.connect()
        try:
            if _config(conn, "aof-timestamp-enabled") != "yes":
                raise RecoveryError("Redis at %s writes no AOF timestamps (aof-timestamp-enabled no): enable them "
                                    "first" % target.describe())
            index["server"] = {"databases": int(_config(conn, "databases"))}
            aof_path = os.path.join(aof_dir or _config(conn, "dir"), _config(conn, "appenddirname"))
            manifest = os.path.join(aof_path, _config(conn, "appendfilename") + ".manifest")
            new_index, written, history = _ship_consistently(conn, index, aof_path, manifest, repo_dir, now,
                                                             deadline)
        finally:
            conn.close()
        write_json_atomic(os.path.join(repo_dir, INDEX), new_index)
        _remove_unindexed(repo_dir, new_index)
        if history:
            _delete_history(target)
    generation = new_index["generations"][-1]
    return {"changed": bool(written), "shipped_bytes": sum(size for _path, size, _sha in written),
            "files": [{"path": path, "size": size, "sha256": sha} for path, size, sha in written],
            "generation": generation["id"], "window": window_of(new_index)}


def _ship_consistently(conn, index, aof_path, manifest, repo_dir, now, deadline):
    """One copy made while no rewrite ran: (new index, [(path, size, sha256) written], whether Redis kept replaced
    files for it)."""
    while True:
        shipped_at = time.time() if now is None else now
        before = _persistence(conn)  # its reply follows the write of every command run before it into the AOF
        if before.get("aof_enabled") != "1":
            raise RecoveryError("Redis at %s has appendonly off: nothing to ship" % conn.target.describe())
        written, attempt = [], copy.deepcopy(index)
        if not _rewriting(before):
            try:
                entries = read_manifest(manifest)
                _copy_new(attempt, aof_path, entries, repo_dir, shipped_at, written)
                after = _persistence(conn)
                if not _rewriting(after) and after["aof_rewrites"] == before["aof_rewrites"] and \
                        read_manifest(manifest) == entries:
                    return attempt, written, any(kind == "h" for _name, _seq, kind in entries)
            except FileNotFoundError:
                pass  # a rewrite removed a file while we copied it
            for path, _size, _sha in written:
                remove_quietly(os.path.join(repo_dir, path))
        if time.monotonic() > deadline:
            raise RecoveryError("Redis at %s was rewriting its AOF during every copy attempt: nothing shipped (try "
                                "again when the rewrite has finished)" % conn.target.describe())
        time.sleep(0.1)


def _delete_history(target):
    """The replaced files Redis kept (``aof-disable-auto-gc``) go once their tails are shipped: switching the setting
    off makes Redis delete its history files; it is switched on again at once."""
    conn = target.connect()
    try:
        _ok(conn, "CONFIG", "SET", "aof-disable-auto-gc", "no")
        _ok(conn, "CONFIG", "SET", "aof-disable-auto-gc", "yes")
    finally:
        conn.close()


def _finish_replaced(generations, aof_path, entries, repo_dir, written):
    """The tails of incr files a rewrite replaced (history, type h), copied into their generations; returns the
    generations so finished."""
    finished = []
    for name, _seq, kind in entries:
        for generation in generations if kind == "h" else ():
            incr = next((incr for incr in generation["incr"] if incr["name"] == name), None)
            if incr is not None:
                _copy_increment(generation, incr, os.path.join(aof_path, name), repo_dir, written)
                finished.append(generation)
    return finished


def _copy_new(index, aof_path, entries, repo_dir, shipped_at, written):
    base_name, base_seq = next((name, seq) for name, seq, kind in entries if kind == "b")
    info = os.stat(os.path.join(aof_path, base_name))
    generations = index["generations"]
    finished = _finish_replaced(generations, aof_path, entries, repo_dir, written)
    generation = generations[-1] if generations else None
    if generation is None or [generation["base"][key] for key in ("name", "size", "mtime_ns")] != [
            base_name, info.st_size, info.st_mtime_ns]:
        generation = _new_generation(index, aof_path, base_name, base_seq, info, repo_dir, written)
        generations.append(generation)
    for name, seq, kind in entries:
        if kind != "i":
            continue  # history files (type h) belong to a generation already replaced
        incr = next((incr for incr in generation["incr"] if incr["name"] == name), None)
        if incr is None:
            incr = {"name": name, "seq": seq, "size": 0, "pieces": [], "first_ts": None, "last_ts": None}
            generation["incr"].append(incr)
        _copy_increment(generation, incr, os.path.join(aof_path, name), repo_dir, written)
    generation["shipped_at"] = shipped_at
    for done in finished:  # every write before the rewrite is in it now: it restores up to the new base
        if done is not generation:
            done["shipped_at"] = max(done["shipped_at"] or 0, generation["base_time"])


def _new_generation(index, aof_path, base_name, base_seq, info, repo_dir, written):
    number = index.get("next_generation", 1)
    index["next_generation"] = number + 1
    gen_id = "g%06d" % number
    make_private_dir(os.path.join(repo_dir, gen_id))
    path = os.path.join(gen_id, base_name)
    writer = HashingWriter(os.path.join(repo_dir, path))
    try:
        with open(os.path.join(aof_path, base_name), "rb") as handle:
            for block in read_blocks(handle):
                writer.write(block)
        size, digest = writer.commit()
    except BaseException:
        writer.abort()
        raise
    written.append((path, size, digest))
    if size != info.st_size:
        raise RecoveryError("AOF base %s changed while it was copied" % base_name)
    return {"id": gen_id, "base": {"name": base_name, "seq": base_seq, "path": path, "size": size, "sha256": digest,
                                   "mtime_ns": info.st_mtime_ns},
            "base_time": _base_time(os.path.join(repo_dir, path)), "incr": [], "shipped_at": None}


def _copy_increment(generation, incr, source, repo_dir, written):
    """The bytes of ``source`` past what was shipped, up to its last complete command, as one new piece."""
    size = os.stat(source).st_size
    if size < incr["size"]:
        raise RecoveryError("AOF file %s is shorter (%d bytes) than what was shipped of it (%d bytes): it was "
                            "replaced outside Redis' own rewrite" % (source, size, incr["size"]))
    if size == incr["size"]:
        return
    path = os.path.join(generation["id"], "%s.%d" % (incr["name"], incr["size"]))
    scanner = CommandScanner(source)
    scanner.consumed = incr["size"]
    writer = HashingWriter(os.path.join(repo_dir, path))
    try:
        with open(source, "rb") as handle:
            handle.seek(incr["size"])
            left = size - incr["size"]
            while left:
                block = handle.read(min(CHUNK, left))
                if not block:
                    raise RecoveryError("AOF file %s shrank while it was copied" % source)
                left -= len(block)
                writer.write(scanner.feed(block))
        if not writer.size:
            writer.abort()
            return
        piece_size, digest = writer.commit()
    except BaseException:
        writer.abort()
        raise
    written.append((path, piece_size, digest))
    incr["pieces"].append({"path": path, "offset": incr["size"], "size": piece_size, "sha256": digest})
    incr["size"] += piece_size
    if incr["first_ts"] is None:
        incr["first_ts"] = scanner.first_ts
    incr["last_ts"] = scanner.last_ts if scanner.last_ts is not None else incr["last_ts"]


def _remove_unindexed(repo_dir, index):
    """Whatever the index does not name (an interrupted shipment's pieces, pruned generations) goes."""
    kept = {os.path.normpath(path) for generation in index["generations"]
            for path, _size, _sha in generation_files(generation)}
    directories = {generation["id"] for generation in index["generations"]}
    for name in os.listdir(repo_dir):
        full = os.path.join(repo_dir, name)
        if name in (INDEX, LOCK_NAME):
            continue
        if name not in directories or not os.path.isdir(full) or os.path.islink(full):
            remove_quietly(full)
            continue
        for inner in os.listdir(full):
            if os.path.join(name, inner) not in kept:
                remove_quietly(os.path.join(full, inner))


def prune(repo_dir, keep_from):
    """Remove the generations no point at or after ``keep_from`` needs: those before the newest generation whose
    base is at or before it. Returns {"changed", "removed", "window"}."""
    with DirectoryLock(repo_dir):
        index = load_index(repo_dir)
        generations = index["generations"]
        keep = max([position for position, gen in enumerate(generations) if generation_range(gen)[0] <= keep_from],
                   default=0)
        removed = [generation["id"] for generation in generations[:keep]]
        if removed:
            index["generations"] = generations[keep:]
            write_json_atomic(os.path.join(repo_dir, INDEX), index)
            _remove_unindexed(repo_dir, index)
    return {"changed": bool(removed), "removed": removed, "window": window_of(index)}

"""Pure functions of module_utils: path checks, manifest schema, retention, Redis artifact format, config archive
checks, the directory lock, atomic writes and the one-line error."""

from __future__ import annotations

import calendar
import hashlib
import io
import json
import os
import stat
import struct
import subprocess
import sys
import tarfile
import time

import pytest
from conftest import ROOT

from ansible_collections.christmas.recovery.plugins.module_utils.config import config_tree
from ansible_collections.christmas.recovery.plugins.module_utils.core import commands
from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.core.fsutil import (
    HashingWriter,
    filesystem_usage,
    write_json_atomic,
)
from ansible_collections.christmas.recovery.plugins.module_utils.core.locking import LOCK_NAME, DirectoryLock
from ansible_collections.christmas.recovery.plugins.module_utils.core.safe_paths import (
    check_relative_name,
    link_stays_inside,
    resolve_inside,
)
from ansible_collections.christmas.recovery.plugins.module_utils.db import connection, restore
from ansible_collections.christmas.recovery.plugins.module_utils.redis import redis_rdb
from ansible_collections.christmas.recovery.plugins.module_utils.sets.manifest import (
    FORMAT,
    check_schema,
    complete_set_ids,
    resolve_manifest_path,
)
from ansible_collections.christmas.recovery.plugins.module_utils.sets.proof import (
    MAX_REHEARSALS,
    add_rehearsal,
    is_proven,
    newest_proven_set_id,
    proof_name,
    read_proof,
)
from ansible_collections.christmas.recovery.plugins.module_utils.sets.retention import (
    expired_set_ids,
    prune_expired_sets,
)

SET_ID = "20261124_030000"
SET_TIME = calendar.timegm((2026, 11, 24, 3, 0, 0))


def _one_line(err):
    message = str(err.value)
    assert message and "\n" not in message and "\r" not in message
    return message


def _touch(path, data=b""):
    with open(path, "wb") as handle:
        handle.write(data)
    return path


# ---------------------------------------------------------------- safe_paths


def test_check_relative_name_splits_clean_relative_paths():
    assert check_relative_name("strategies/momentum_é.json") == ["strategies", "momentum_é.json"]
    assert check_relative_name("strategies/empty/") == ["strategies", "empty"]


@pytest.mark.parametrize("name", [
    "", None, "/etc/passwd", "../x", "a/../b", "a/..", "a//b", "./a", ".", "a/./b", "a\x00b",
    "x" * 256, "/".join(["d"] * 2100),
])
def test_check_relative_name_rejects_anything_that_could_leave_the_root(name):
    with pytest.raises(RecoveryError) as err:
        check_relative_name(name, "member")
    assert _one_line(err).startswith("member ")


@pytest.mark.parametrize("link, target, inside", [
    ("current.yml", "app.yml", True),
    ("strategies/app-link.yml", "../app.yml", True),
    ("a/b/link", "../../x", True),
    ("a/b/link", "./../c/./d", True),
    ("link", "x/../y", False),  # x may itself be a link: a '..' after a name is refused
    ("link", "../x", False),
    ("a/b/link", "../../../x", False),
    ("link", "x/../../y", False),
    ("link", "/etc/passwd", False),
    ("link", "", False),
    ("link", "a\x00b", False),
])
def test_link_stays_inside_allows_only_leading_parent_steps(link, target, inside):
    assert link_stays_inside(link, target) is inside


def test_resolve_inside_joins_names_below_the_root(tmp_dir):
    os.makedirs(os.path.join(tmp_dir, "set_x"))
    assert resolve_inside(tmp_dir, "set_x/db.dump/toc.dat") == os.path.join(tmp_dir, "set_x", "db.dump", "toc.dat")


@pytest.mark.parametrize("name", ["set_x/redis.rdb", "set_x", "set_x/sub/deeper/file"])
def test_resolve_inside_refuses_a_symlinked_component(tmp_dir, name):
    os.makedirs(os.path.join(tmp_dir, "elsewhere", "sub"))
    os.symlink("elsewhere", os.path.join(tmp_dir, "set_x"))
    with pytest.raises(RecoveryError) as err:
        resolve_inside(tmp_dir, name, "artifact")
    assert "passes through a symlink at 'set_x'" in _one_line(err)


def test_resolve_inside_refuses_a_symlinked_last_component(tmp_dir):
    os.makedirs(os.path.join(tmp_dir, "set_x"))
    os.symlink("/etc/passwd", os.path.join(tmp_dir, "set_x", "redis.rdb"))
    with pytest.raises(RecoveryError) as err:
        resolve_inside(tmp_dir, "set_x/redis.rdb", "artifact")
    assert "symlink at 'set_x/redis.rdb'" in _one_line(err)


def test_resolve_inside_rejects_dot_dot_before_touching_the_disk(tmp_dir):
    with pytest.raises(RecoveryError) as err:
        resolve_inside(tmp_dir, "set_x/../../etc/passwd", "artifact")
    assert "not a clean relative path" in _one_line(err)


# ---------------------------------------------------------------- manifest


def _manifest():
    digest = "0" * 64
    return {
        "format": FORMAT, "format_version": 1, "set_id": SET_ID, "components": ["redis", "config"],
        "started_at": "2026-11-24T03:00:00Z", "finished_at": "2026-11-24T03:00:09Z", "host": "platform",
        "tools": {"christmas.recovery": "0.1.0"},
        "artifacts": [
            {"path": "set_%s/redis.rdb" % SET_ID, "size": 10, "sha256": digest, "component": "redis",
             "kind": "redis_rdb"},
            {"path": "set_%s/config.tar" % SET_ID, "size": 0, "sha256": digest, "component": "config",
             "kind": "config_tar"},
        ],
        "redis": {"version": "7.0.15", "rdb_version": 10, "keys_per_db_at_start": {"0": 2}},
        "config": {"source_dir": "/srv/christmas/config", "root_mode": "755", "root_owner": [0, 0],
                   "tree_sha256": digest},
    }


def _set(key, value):
    return lambda data: data.__setitem__(key, value)


def _set_artifact(key, value, index=0):
    return lambda data: data["artifacts"][index].__setitem__(key, value)


def _delete(key):
    return lambda data: data.pop(key)


MALFORMED = [
    ("format", _set("format", "something/else"), "format is not 'christmas.recovery/backup-set'"),
    ("format_version", _set("format_version", 2), "format_version is not 1"),
    ("format_version-string", _set("format_version", "1"), "format_version is not 1"),
    ("set_id", _set("set_id", "2026-11-24"), "set_id is not YYYYMMDD_HHMMSS"),
    ("components-empty", _set("components", []), "components must be a non-empty list of db, redis, config"),
    ("components-unknown", _set("components", ["redis", "mysql"]), "components must be a non-empty list"),
    ("components-twice", _set("components", ["redis", "redis", "config"]), "components must be a non-empty list"),
    ("components-string", _set("components", "redis"), "components must be a non-empty list"),
    ("host", _delete("host"), "host is missing or not a string"),
    ("started_at", _set("started_at", 1700000000), "started_at is missing or not a string"),
    ("tools", _set("tools", []), "tools is missing or not an object"),
    ("artifacts-empty", _set("artifacts", []), "artifacts must be a non-empty list"),
    ("artifact-not-object", lambda data: data["artifacts"].append("config.tar"), "artifacts[2] is not an object"),
    ("artifact-other-set", _set_artifact("path", "set_20261123_030000/redis.rdb"),
     "is not inside set_%s/" % SET_ID),
    ("artifact-twice", _set_artifact("path", "set_%s/redis.rdb" % SET_ID, 1),
     "artifacts[1].path set_%s/redis.rdb is listed twice" % SET_ID),
    ("size-negative", _set_artifact("size", -1), "artifacts[0].size is not a size"),
    ("size-bool", _set_artifact("size", True), "artifacts[0].size is not a size"),
    ("size-string", _set_artifact("size", "10"), "artifacts[0].size is not a size"),
    ("sha256-upper", _set_artifact("sha256", "A" * 64), "artifacts[0].sha256 is not a SHA-256 hex digest"),
    ("sha256-short", _set_artifact("sha256", "0" * 63), "artifacts[0].sha256 is not a SHA-256 hex digest"),
    ("artifact-component", _set_artifact("component", "db"), "artifacts[0].component is not one of the set's"),
    ("artifact-kind", lambda data: data["artifacts"][1].pop("kind"), "artifacts[1].kind is missing"),
    ("section-missing", _delete("redis"), "section 'redis' is missing"),
    ("section-field-missing", lambda data: data["config"].pop("source_dir"), "config.source_dir is missing"),
    ("component-without-artifact", lambda data: data.update(components=["db", "redis", "config"], db={}),
     "component db has no artifact"),
]


def test_check_schema_accepts_a_well_formed_manifest():
    assert check_schema(_manifest(), "/backups/manifest_%s.json" % SET_ID) is None


@pytest.mark.parametrize("mutate, problem", [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_check_schema_names_the_problem_in_one_line(mutate, problem):
    data = _manifest()
    mutate(data)
    path = "/backups/manifest_%s.json" % SET_ID
    with pytest.raises(RecoveryError) as err:
        check_schema(data, path)
    message = _one_line(err)
    assert message.startswith("manifest %s is invalid: " % path)
    assert problem in message


def test_check_schema_rejects_a_top_level_that_is_not_an_object():
    with pytest.raises(RecoveryError) as err:
        check_schema([_manifest()], "m.json")
    assert _one_line(err) == "manifest m.json is invalid: top level is not an object"


def test_check_schema_rejects_a_set_id_other_than_the_file_name():
    with pytest.raises(RecoveryError) as err:
        check_schema(_manifest(), "/backups/manifest_20261125_030000.json")
    assert "set_id %s does not match the file name" % SET_ID in _one_line(err)


def _backup_dir_with_sets(root):
    """Two complete sets among everything a killed or running backup leaves behind."""
    for set_id in ("20261122_030000", "20261123_030000"):
        _touch(os.path.join(root, "manifest_%s.json" % set_id))
        os.mkdir(os.path.join(root, "set_%s" % set_id))
    os.mkdir(os.path.join(root, "set_20261124_030000"))  # set dir whose manifest never came
    os.mkdir(os.path.join(root, ".set_20261125_030000.partial"))
    _touch(os.path.join(root, ".manifest_20261125_030000.json.tmp"))
    os.mkdir(os.path.join(root, "manifest_20261126_030000.json"))  # not a regular file
    os.symlink("manifest_20261123_030000.json", os.path.join(root, "manifest_20261127_030000.json"))
    _touch(os.path.join(root, "manifest_latest.json"))
    _touch(os.path.join(root, LOCK_NAME))
    return root


def test_complete_set_ids_lists_only_sets_with_a_regular_manifest_newest_first(tmp_dir):
    backup_dir = _backup_dir_with_sets(tmp_dir)
    assert complete_set_ids(backup_dir) == ["20261123_030000", "20261122_030000"]
    assert complete_set_ids(os.path.join(tmp_dir, "absent")) == []


def test_resolve_manifest_path_latest_is_the_newest_complete_set(tmp_dir):
    backup_dir = _backup_dir_with_sets(tmp_dir)
    assert resolve_manifest_path("latest", backup_dir) == os.path.join(backup_dir, "manifest_20261123_030000.json")
    assert resolve_manifest_path(None, backup_dir) == resolve_manifest_path("latest", backup_dir)


@pytest.mark.parametrize("backup_dir, problem", [
    (None, "manifest=latest needs backup_dir"),
    ("empty", "no complete backup set (no manifest_YYYYMMDD_HHMMSS.json) in "),
])
def test_resolve_manifest_path_latest_without_a_set_says_why(tmp_dir, backup_dir, problem):
    if backup_dir:
        backup_dir = os.path.join(tmp_dir, backup_dir)
        os.mkdir(backup_dir)
        os.mkdir(os.path.join(backup_dir, ".set_20261125_030000.partial"))
    with pytest.raises(RecoveryError) as err:
        resolve_manifest_path("latest", backup_dir)
    assert problem in _one_line(err)


def test_resolve_manifest_path_relative_names(tmp_dir, monkeypatch):
    backup_dir = os.path.join(tmp_dir, "backups")
    os.mkdir(backup_dir)
    _backup_dir_with_sets(backup_dir)
    cwd = os.path.join(tmp_dir, "cwd")
    os.mkdir(cwd)
    monkeypatch.chdir(cwd)
    name = "manifest_20261122_030000.json"
    assert resolve_manifest_path(name, backup_dir) == os.path.join(backup_dir, name)
    assert resolve_manifest_path(name) == os.path.join(cwd, name)
    _touch(os.path.join(cwd, name))
    assert resolve_manifest_path(name, backup_dir) == os.path.join(cwd, name)  # an existing path wins
    assert resolve_manifest_path(os.path.join(backup_dir, name), "/elsewhere") == os.path.join(backup_dir, name)


# ---------------------------------------------------------------- retention


def _sets_aged(backup_dir, *days):
    ids = []
    for age in days:
        set_id = time.strftime("%Y%m%d_%H%M%S", time.gmtime(SET_TIME - age * 86400))
        _touch(os.path.join(backup_dir, "manifest_%s.json" % set_id))
        ids.append(set_id)
    return ids


def test_expired_set_ids_are_the_complete_sets_older_than_the_limit(tmp_dir):
    _fresh, _exactly_30_days, old, older = _sets_aged(tmp_dir, 1, 30, 30.001, 45)
    os.mkdir(os.path.join(tmp_dir, "set_20201124_030000"))  # ancient but incomplete: not retention's business
    assert expired_set_ids(tmp_dir, 30, now=SET_TIME) == [old, older]


def test_expired_set_ids_keep_the_newest_set_however_old(tmp_dir):
    _newest, *rest = _sets_aged(tmp_dir, 100, 200, 300)
    assert expired_set_ids(tmp_dir, 30, now=SET_TIME) == rest


def test_expired_set_ids_with_zero_days_keep_only_the_newest(tmp_dir):
    _newest, *rest = _sets_aged(tmp_dir, 0.5, 1, 2)
    assert expired_set_ids(tmp_dir, 0, now=SET_TIME) == rest


def test_expired_set_ids_rejects_negative_days(tmp_dir):
    _sets_aged(tmp_dir, 1, 2)
    with pytest.raises(RecoveryError) as err:
        expired_set_ids(tmp_dir, -1, now=SET_TIME)
    assert _one_line(err) == "retention_days must be 0 or more, got -1"


def test_expired_set_ids_keep_the_newest_proven_set_however_old(tmp_dir):
    _newest, newer_failed, proven, older_proven, oldest = _sets_aged(tmp_dir, 1, 40, 50, 60, 70)
    add_rehearsal(tmp_dir, newer_failed, {"passed": False, "error": "validation failed"})
    add_rehearsal(tmp_dir, proven, {"passed": True})
    add_rehearsal(tmp_dir, older_proven, {"passed": True})
    assert newest_proven_set_id(tmp_dir) == proven
    assert expired_set_ids(tmp_dir, 30, now=SET_TIME) == [newer_failed, older_proven, oldest]


def test_a_set_whose_last_rehearsal_failed_is_no_longer_proven(tmp_dir):
    _newest, once_proven = _sets_aged(tmp_dir, 1, 40)
    add_rehearsal(tmp_dir, once_proven, {"passed": True})
    add_rehearsal(tmp_dir, once_proven, {"passed": False, "error": "db: row counts: orders missing"})
    assert not is_proven(tmp_dir, once_proven) and newest_proven_set_id(tmp_dir) is None
    assert expired_set_ids(tmp_dir, 30, now=SET_TIME) == [once_proven]


def test_prune_removes_the_side_record_with_its_set_and_keeps_the_proven_one(tmp_dir):
    _newest, proven, expired = _sets_aged(tmp_dir, 1, 40, 50)
    for set_id in (proven, expired):
        os.mkdir(os.path.join(tmp_dir, "set_%s" % set_id))
    add_rehearsal(tmp_dir, proven, {"passed": True})
    add_rehearsal(tmp_dir, expired, {"passed": False, "error": "failed verification"})

    assert prune_expired_sets(tmp_dir, 30, now=SET_TIME) == [expired]

    assert not os.path.lexists(os.path.join(tmp_dir, proof_name(expired)))
    assert not os.path.lexists(os.path.join(tmp_dir, "set_%s" % expired))
    assert os.path.isfile(os.path.join(tmp_dir, proof_name(proven))) and is_proven(tmp_dir, proven)


@pytest.mark.parametrize("content", [b"", b"{not json", b"[]", b'{"rehearsals": "passed"}', b"\xff\xfe"])
def test_a_corrupt_side_record_reads_as_empty_and_is_replaced_by_the_next_rehearsal(tmp_dir, content):
    (set_id,) = _sets_aged(tmp_dir, 1)
    _touch(os.path.join(tmp_dir, proof_name(set_id)), content)
    assert read_proof(tmp_dir, set_id) == {"set_id": set_id, "rehearsals": []}
    assert not is_proven(tmp_dir, set_id) and newest_proven_set_id(tmp_dir) is None

    add_rehearsal(tmp_dir, set_id, {"passed": True, "duration_seconds": 4.2})
    assert read_proof(tmp_dir, set_id)["rehearsals"] == [{"passed": True, "duration_seconds": 4.2}]
    assert os.stat(os.path.join(tmp_dir, proof_name(set_id))).st_mode & 0o777 == 0o600


def test_the_side_record_keeps_the_last_rehearsals_newest_last(tmp_dir):
    (set_id,) = _sets_aged(tmp_dir, 1)
    for number in range(MAX_REHEARSALS + 5):
        add_rehearsal(tmp_dir, set_id, {"passed": number % 2 == 0, "number": number})
    rehearsals = read_proof(tmp_dir, set_id)["rehearsals"]
    assert [entry["number"] for entry in rehearsals] == list(range(5, MAX_REHEARSALS + 5))
    assert read_proof(tmp_dir, set_id)["proven"] is is_proven(tmp_dir, set_id) is ((MAX_REHEARSALS + 4) % 2 == 0)


# ---------------------------------------------------------------- redis_rdb


def test_crc64_is_redis_crc64_jones():
    assert redis_rdb.crc64(b"123456789") == 0xE9C6D914C4B8D9CA
    assert redis_rdb.crc64(b"56789", redis_rdb.crc64(b"1234")) == 0xE9C6D914C4B8D9CA
    assert redis_rdb.crc64(b"") == 0


def test_crc64_falls_back_to_debians_crcmod_where_anycrc_is_missing():
    """The system Python of a Debian host has python3-crcmod (make setup installs it) and no anycrc."""
    probe = ("from ansible_collections.christmas.recovery.plugins.module_utils.redis import redis_rdb as r\n"
             "assert r.HAS_CRC64 and r._CRC64_CALC.__module__.startswith('crcmod'), r._CRC64_CALC\n"
             "print(r.crc64(b'123456789'), r.crc64(b'56789', r.crc64(b'1234')), r.crc64(bytearray(b'1' * 100000)))")
    done = subprocess.run(["/usr/bin/python3", "-I", "-c", "import sys; sys.path.insert(0, %r)\n%s" % (
        os.path.join(ROOT, ".collections"), probe)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(0xE9C6D914C4B8D9CA)] * 2 + [str(redis_rdb.crc64(b"1" * 100000))]


# What Redis' own documentation shows for SET mykey 10; DUMP mykey: an int-encoded string, RDB version 9, CRC64.
DOCUMENTED_DUMP = b"\x00\xc0\n\t\x00\xbem\x06\x89Z(\x00\n"


def test_payload_rebuilds_a_documented_dump_payload():
    assert redis_rdb.payload(0, b"\xc0\n", 9) == DOCUMENTED_DUMP


def _rdb_string(data):
    assert len(data) < 64
    return bytes((len(data),)) + data


def _rdb(*parts, checksum=True):
    body = b"REDIS0010" + b"".join(parts) + b"\xff"
    return body + struct.pack("<Q", redis_rdb.crc64(body) if checksum else 0)


EXPIRES = 4102444800000  # 2100-01-01
SAMPLE_RDB = _rdb(
    b"\xfa" + _rdb_string(b"redis-ver") + _rdb_string(b"7.0.15"),
    b"\xfe\x00\xfb\x02\x01",
    b"\xfc" + struct.pack("<Q", EXPIRES) + b"\x00" + _rdb_string(b"session:42") + _rdb_string(b"alice"),
    b"\x00" + _rdb_string(b"count") + b"\xc0\x0a",
    b"\xfe\x03\x02" + _rdb_string(b"\x00\xff") + b"\x02" + _rdb_string(b"a") + _rdb_string(b"b"),
)


def _rdb_file(tmp_dir, data):
    return _touch(os.path.join(tmp_dir, "redis.rdb"), data)


def test_read_entries_returns_every_key_with_its_database_and_expiry(tmp_dir):
    path = _rdb_file(tmp_dir, SAMPLE_RDB)
    entries = [(item.db, item.key, item.expire_ms, item.kind, item.value)
               for kind, item in redis_rdb.read_entries(path) if kind == "key"]
    assert entries == [(0, b"session:42", EXPIRES, 0, b"\x05alice"), (0, b"count", None, 0, b"\xc0\x0a"),
                       (3, b"\x00\xff", None, 2, b"\x02\x01a\x01b")]
    assert redis_rdb.check_file(path) == 10
    assert redis_rdb.members(2, b"\x02\x01b\x01a") == [b"a", b"b"]
    assert redis_rdb.members(4, b"\x01\x01f\xc0\x07") == [(b"f", b"7")]


def test_every_truncation_and_every_flipped_byte_is_caught(tmp_dir):
    for length in range(len(SAMPLE_RDB)):
        with pytest.raises(RecoveryError) as err:
            redis_rdb.check_file(_rdb_file(tmp_dir, SAMPLE_RDB[:length]))
        assert "Redis artifact redis.rdb " in _one_line(err), length
    for index in range(len(SAMPLE_RDB)):
        flipped = bytearray(SAMPLE_RDB)
        flipped[index] ^= 0x40
        with pytest.raises(RecoveryError) as err:
            redis_rdb.check_file(_rdb_file(tmp_dir, bytes(flipped)))
        assert "Redis artifact redis.rdb " in _one_line(err), index


def test_a_file_without_checksum_is_checked_for_structure_only(tmp_dir):
    assert redis_rdb.check_file(_rdb_file(tmp_dir, _rdb(b"\xfe\x00", checksum=False))) == 10


@pytest.mark.parametrize("data, problem", [
    (b"REDIX0010" + SAMPLE_RDB[9:], "is not an RDB file (no REDIS header)"),
    (SAMPLE_RDB[:-9] + b"\x00" + SAMPLE_RDB[-8:], "is truncated: it does not end with the RDB end marker"),
    (SAMPLE_RDB[:5], "is truncated (5 bytes)"),
])
def test_check_file_names_the_problem(tmp_dir, data, problem):
    with pytest.raises(RecoveryError) as err:
        redis_rdb.check_file(_rdb_file(tmp_dir, data))
    assert _one_line(err) == "Redis artifact redis.rdb %s" % problem


@pytest.mark.parametrize("entry, problem", [
    (b"\x06" + _rdb_string(b"old-module") + b"\x00", "unsupported RDB value type 6"),
    (b"\xf7\x01\x02\x02\x00", "it holds module auxiliary data, which a key-by-key restore cannot carry"),
    (b"\xf6" + _rdb_string(b"x"), "unknown RDB opcode 0xf6"),
    (b"\x00" + _rdb_string(b"k") + b"\xc4", "bad string encoding 0xc4"),
])
def test_read_entries_refuses_what_it_cannot_restore(tmp_dir, entry, problem):
    path = _rdb_file(tmp_dir, _rdb(b"\xfe\x00", b"\x00" + _rdb_string(b"first") + _rdb_string(b"v"), entry))
    with pytest.raises(RecoveryError) as err:
        list(redis_rdb.read_entries(path))
    assert _one_line(err) == "Redis artifact redis.rdb is corrupt after 1 keys: %s" % problem


def test_read_entries_names_a_truncated_entry(tmp_dir):
    path = _rdb_file(tmp_dir, SAMPLE_RDB[:60])
    with pytest.raises(RecoveryError) as err:
        list(redis_rdb.read_entries(path))
    assert _one_line(err).startswith("Redis artifact redis.rdb is corrupt after ")
    assert _one_line(err).endswith(": the file ends in the middle of an entry (truncated)")


def test_lzf_decompress_handles_literals_and_back_references():
    assert redis_rdb.lzf_decompress(b"\x02abc\xe0\x00\x02", 12) == b"abcabcabcabc"
    with pytest.raises(RecoveryError):
        redis_rdb.lzf_decompress(b"\x20\x05", 3)


# ---------------------------------------------------------------- config_tree


def _member(name, kind=tarfile.REGTYPE, data=b"", linkname=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, linkname, 0o755 if kind == tarfile.DIRTYPE else 0o644
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data


def _tar(tmp_dir, *members):
    path = os.path.join(tmp_dir, "config.tar")
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


HOSTILE = [
    ("dot-dot", [_member("../x", data=b"pwned")], "is not a clean relative path"),
    ("dot-dot-inside", [_member("app", tarfile.DIRTYPE), _member("app/../../x")], "is not a clean relative path"),
    ("absolute", [_member("/etc/cron.d/x", data=b"* * * * * root sh")], "is absolute"),
    ("hardlink", [_member("app.yml"), _member("copy.yml", tarfile.LNKTYPE, linkname="/etc/shadow")],
     "is a hardlink"),
    ("char-device", [_member("null", tarfile.CHRTYPE)], "is a device, FIFO or other special file"),
    ("block-device", [_member("sda", tarfile.BLKTYPE)], "is a device, FIFO or other special file"),
    ("fifo", [_member("pipe", tarfile.FIFOTYPE)], "is a device, FIFO or other special file"),
    ("duplicate", [_member("app.yml", data=b"a"), _member("app.yml", data=b"b")], "appears twice in the archive"),
    ("duplicate-spelled-differently", [_member("dir", tarfile.DIRTYPE), _member("dir/", tarfile.DIRTYPE)],
     "appears twice in the archive"),
    ("file-under-symlink", [_member("etc", tarfile.SYMTYPE, linkname="sub"), _member("etc/passwd", data=b"x")],
     "lies beneath a link, not a directory"),
    ("file-under-file", [_member("app.yml"), _member("app.yml/x")], "lies beneath a file, not a directory"),
    ("symlink-absolute", [_member("shadow", tarfile.SYMTYPE, linkname="/etc/shadow")], "outside the tree"),
    ("symlink-up", [_member("sub", tarfile.DIRTYPE), _member("sub/up", tarfile.SYMTYPE, linkname="../..")],
     "outside the tree"),
]


@pytest.mark.parametrize("members, problem", [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE])
def test_check_members_rejects_hostile_archives(tmp_dir, members, problem):
    with pytest.raises(RecoveryError) as err:
        config_tree.check_members(_tar(tmp_dir, *members))
    message = _one_line(err)
    assert message.startswith("config archive member ")
    assert problem in message


def test_check_members_rejects_a_symlink_chain_that_escapes(tmp_dir):
    # 'here' -> '.' and 'up' -> 'here/..': each looks inside, yet 'up' resolves to the tree's parent.
    members = [_member("here", tarfile.SYMTYPE, linkname="."), _member("up", tarfile.SYMTYPE, linkname="here/..")]
    with pytest.raises(RecoveryError):
        config_tree.check_members(_tar(tmp_dir, *members))


def test_check_members_rejects_a_file_listed_before_the_symlink_it_lies_beneath(tmp_dir):
    members = [_member("etc/passwd", data=b"x"), _member("etc", tarfile.SYMTYPE, linkname="sub")]
    with pytest.raises(RecoveryError):
        config_tree.check_members(_tar(tmp_dir, *members))


def test_check_members_rejects_an_archive_that_is_not_a_tar(tmp_dir):
    path = _touch(os.path.join(tmp_dir, "config.tar"), b"not a tar archive at all" * 40)
    with pytest.raises(RecoveryError) as err:
        config_tree.check_members(path)
    assert _one_line(err).startswith("config archive config.tar is unreadable: ")


def test_check_members_accepts_a_real_tree_and_agrees_with_its_digest(config_dir, tmp_dir):
    set_dir = os.path.join(tmp_dir, "set")
    os.mkdir(set_dir)
    metadata, files = config_tree.archive_tree(config_dir, set_dir, progress=lambda _message: None)
    members, total, digest = config_tree.check_members(os.path.join(set_dir, config_tree.ARCHIVE_FILE))
    on_disk = {name: info for name, info in config_tree.walk_tree(config_dir)}
    assert {name: kind for name, kind, _member in members} == {
        name: "dir" if stat.S_ISDIR(info.st_mode) else "link" if stat.S_ISLNK(info.st_mode) else "file"
        for name, info in on_disk.items()}
    assert total == sum(info.st_size for info in on_disk.values() if stat.S_ISREG(info.st_mode))
    digest.add("root", ".", int(metadata["root_mode"], 8))
    assert digest.hexdigest() == metadata["tree_sha256"] == config_tree.current_tree_digest(config_dir)
    assert files[config_tree.ARCHIVE_FILE][0] == os.path.getsize(os.path.join(set_dir, config_tree.ARCHIVE_FILE))


# ---------------------------------------------------------------- locking

TRY_LOCK = """
import sys
sys.path.insert(0, sys.argv[2])
from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.core.locking import DirectoryLock
try:
    with DirectoryLock(sys.argv[1]) as lock:
        print("acquired stale_holder=%s" % lock.stale_holder)
except RecoveryError as err:
    print(err)
"""


def _lock_from_another_process(directory):
    return subprocess.run([sys.executable, "-c", TRY_LOCK, directory, os.path.join(ROOT, ".collections")],
                          capture_output=True, text=True, check=True, timeout=30).stdout.strip()


def test_directory_lock_refuses_a_second_process_naming_the_holder(tmp_dir):
    with DirectoryLock(tmp_dir):
        message = _lock_from_another_process(tmp_dir)
    assert message.startswith("backup directory %s is locked by pid=%d host=" % (tmp_dir, os.getpid()))
    assert message.endswith("another backup or prune is running")
    assert _lock_from_another_process(tmp_dir) == "acquired stale_holder=None"


def test_directory_lock_reports_a_dead_holders_leftover_file_as_stale(tmp_dir):
    dead = subprocess.Popen(["true"])
    dead.wait()
    leftover = "pid=%d host=old-host since=2026-11-24T03:00:00+0000" % dead.pid
    _touch(os.path.join(tmp_dir, LOCK_NAME), (leftover + "\n").encode())
    with DirectoryLock(tmp_dir) as lock:
        assert lock.stale_holder == leftover
        with open(os.path.join(tmp_dir, LOCK_NAME), encoding="utf-8") as handle:
            assert handle.read().startswith("pid=%d " % os.getpid())
    with DirectoryLock(tmp_dir) as lock:
        assert lock.stale_holder is None


# ---------------------------------------------------------------- fsutil


def test_hashing_writer_commit_renames_into_place_with_its_digest(tmp_dir):
    path = os.path.join(tmp_dir, "redis.rdb")
    writer = HashingWriter(path)
    writer.write(b"first ")
    writer.write(b"second")
    assert writer.tell() == 12
    assert writer.commit() == (12, hashlib.sha256(b"first second").hexdigest())
    assert os.listdir(tmp_dir) == ["redis.rdb"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_hashing_writer_abort_leaves_nothing(tmp_dir):
    writer = HashingWriter(os.path.join(tmp_dir, "redis.rdb"))
    writer.write(b"half a dump")
    writer.abort()
    writer.abort()
    assert os.listdir(tmp_dir) == []


def test_write_json_atomic_replaces_with_a_private_file_whatever_the_umask(tmp_dir):
    path = _touch(os.path.join(tmp_dir, "manifest.json"), b"old")
    os.chmod(path, 0o644)
    old = os.umask(0)
    try:
        write_json_atomic(path, {"set_id": SET_ID, "name": "ordre n°"})
    finally:
        os.umask(old)
    with open(path, encoding="utf-8") as handle:
        assert json.load(handle) == {"set_id": SET_ID, "name": "ordre n°"}
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert os.listdir(tmp_dir) == ["manifest.json"]


def test_write_json_atomic_leaves_neither_temp_nor_target_when_it_fails(tmp_dir):
    path = os.path.join(tmp_dir, "manifest.json")
    with pytest.raises(TypeError):
        write_json_atomic(path, {"not json": object()})
    assert os.listdir(tmp_dir) == []


def test_filesystem_usage_reads_the_nearest_existing_directory(tmp_dir):
    usage = filesystem_usage(os.path.join(tmp_dir, "not", "yet"))
    stats = os.statvfs(tmp_dir)
    assert usage["path"] == tmp_dir and usage["size_bytes"] == stats.f_blocks * stats.f_frsize
    assert 0 < usage["free_bytes"] <= usage["size_bytes"]
    assert usage["free_percent"] == round(100.0 * usage["free_bytes"] / usage["size_bytes"], 2)


# ---------------------------------------------------------------- errors


def test_recovery_error_is_one_line_and_keeps_its_details():
    err = RecoveryError("pg_restore failed:\nERROR:  relation\r\n\t\"x\" exists  ", report={"ok": False})
    assert str(err) == 'pg_restore failed: ERROR: relation "x" exists'
    assert err.details == {"report": {"ok": False}}
    assert str(RecoveryError(ValueError("bad\nvalue"))) == "bad value"


# ---------------------------------------------------------------- commands


def test_long_child_reports_progress_while_it_runs():
    beats = []
    proc = commands.start(["sleep", "0.5"])
    commands.finish(proc, "sleep", heartbeat=lambda: beats.append(time.monotonic()), every=0.1)
    assert len(beats) >= 3


def test_failed_child_is_one_line_naming_what_failed():
    with pytest.raises(RecoveryError) as err:
        commands.run([sys.executable, "-c", "import sys; sys.stderr.write('warning: x\\nfatal: disk on fire\\n');"
                      "sys.exit(3)"], "the child")
    assert _one_line(err) == "the child failed (exit 3): fatal: disk on fire"


def test_child_does_not_outlive_its_parent(tmp_dir):
    """A SIGKILLed backup must not leave pg_dump writing into its directory."""
    script = ("import sys; sys.path.insert(0, %r); "
              "from ansible_collections.christmas.recovery.plugins.module_utils.core import commands; "
              "p = commands.start(['sleep', '30']); print(p.pid, flush=True); p.wait()"
              % os.path.join(ROOT, ".collections"))
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 5
    while os.path.exists("/proc/%d" % child) and "Z" not in _proc_state(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists("/proc/%d" % child) or "Z" in _proc_state(child)


def _proc_state(pid):
    try:
        with open("/proc/%d/stat" % pid, encoding="ascii") as handle:
            return handle.read().split(")")[-1].split()[0]
    except OSError:
        return "gone"


# ---------------------------------------------------------------- postgres preflight


def test_restore_refuses_a_target_of_an_older_postgresql_major():
    target = connection.PgTarget(host="db2", port=5433)
    with pytest.raises(RecoveryError) as err:
        restore._check_versions(target, {"version": "14.10", "version_num": 140010},
                                 {"server_version": "15.18", "server_version_num": 150018, "pg_dump_major": 15})
    assert _one_line(err) == ("target PostgreSQL 14.10 at db2:5433 is older than the backup's 15.18; "
                              "restore onto 15 or newer")

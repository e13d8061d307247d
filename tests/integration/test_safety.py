"""Safety: killed backups, retention, the lock, hostile manifests and archives, damaged sets, secrets, check mode.

Every test drives a real entry point (scripts/backup.py or ansible-playbook) against real servers and files and
asserts on what is actually on disk and in the servers afterwards.
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import tarfile
import time
from types import SimpleNamespace

import pytest
from conftest import (
    PG_BIN,
    ArgvSampler,
    append_members,
    backup_command,
    connection_vars,
    kill_group,
    live_state,
    seal_signed,
    seed_redis,
    tree_state,
)
from faults.fault_helpers import copy_set

LOCK_NAME = ".christmas-recovery.lock"
MANIFEST_NAME_RE = re.compile(r"^manifest_(\d{8}_\d{6})\.json$")


# ---------------------------------------------------------------- helpers: sets on disk


def _set_id_days_ago(days):
    return time.strftime("%Y%m%d_%H%M%S", time.gmtime(time.time() - days * 86400))


def _manifest_path(backup_dir, set_id):
    return os.path.join(backup_dir, "manifest_%s.json" % set_id)


def _set_dir(backup_dir, set_id):
    return os.path.join(backup_dir, "set_%s" % set_id)


def _complete_ids(backup_dir):
    """Ids of the manifests on disk, oldest first."""
    return sorted(m.group(1) for m in map(MANIFEST_NAME_RE.match, os.listdir(backup_dir)) if m)


def _read_json(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _write_json(path, data):
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2)


def _edit_manifest(backup_dir, set_id, edit):
    """Edit a manifest as an attacker or a careless hand would, re-sealing it so only the checks behind it can tell."""
    path = _manifest_path(backup_dir, set_id)
    manifest = _read_json(path)
    manifest.pop("manifest_sha256")
    edit(manifest)
    _write_json(path, seal_signed(manifest))


def _artifact(manifest, name):
    return next(a for a in manifest["artifacts"] if a["path"].endswith("/" + name))


def _sha256(path):
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def _flip_byte(path):
    with open(path, "r+b") as handle:
        handle.seek(os.path.getsize(path) // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0xFF]))


# ---------------------------------------------------------------- helpers: running backups and playbooks


def _script_backup(backup_dir, config=None, platform=None, redis_server=None, extra=(), expect_ok=True):
    """Run scripts/backup.py; its JSON report on success, else its one error line."""
    argv, env = backup_command(backup_dir, platform, redis_server, config, extra)
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert (proc.returncode == 0) == expect_ok, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    if expect_ok:
        return json.loads(proc.stdout)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def _task_result(result, task):
    """The result a -v run printed for the first task whose title contains ``task``."""
    lines = result.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("TASK [") and task in line)
    reply = next(line for line in lines[start + 1:] if " => {" in line)
    return json.loads(reply.split(" => ", 1)[1])


# ---------------------------------------------------------------- a platform with one complete set


@pytest.fixture
def backed_up(platform, make_redis, config_dir, tmp_dir):
    """Database, Redis and config with one complete set of all three, then damaged so that a restore would act."""
    server = make_redis(password=secrets.token_urlsafe(12))
    seed_redis(server)
    backup_dir = os.path.join(tmp_dir, "backups")
    set_id = _script_backup(backup_dir, config_dir, platform, server)["set_id"]
    platform.sql("UPDATE orders SET qty = 0")
    server.client(0).set("after-backup", "1")
    with open(os.path.join(config_dir, "app.yml"), "a", encoding="utf-8") as handle:
        handle.write("changed: after the backup\n")
    return SimpleNamespace(platform=platform, redis=server, config=config_dir, backup_dir=backup_dir, set_id=set_id,
                           set_dir=_set_dir(backup_dir, set_id), outside=os.path.join(tmp_dir, "outside"),
                           host_vars=connection_vars(platform, server, config_dir, backup_dir))


@pytest.fixture
def config_set(config_dir, tmp_dir):
    """One complete config-only set of ``config_dir``."""
    backup_dir = os.path.join(tmp_dir, "backups")
    set_id = _script_backup(backup_dir, config_dir)["set_id"]
    return SimpleNamespace(config=config_dir, backup_dir=backup_dir, set_id=set_id, tmp_dir=tmp_dir,
                           host_vars=connection_vars(None, None, config_dir, backup_dir))


# ---------------------------------------------------------------- 1. a killed backup


def _wait_for_dump_in_partial(backup_dir, proc, timeout=60):
    """Name of the backup's partial directory, as soon as pg_dump has started writing into it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dump = glob.glob(os.path.join(backup_dir, ".set_*.partial", "db.dump"))
        if dump:
            return os.path.basename(os.path.dirname(dump[0]))
        assert proc.poll() is None, "the backup ended before its partial directory was seen"
        time.sleep(0.001)
    raise AssertionError("no partial directory appeared in %s" % backup_dir)


def test_killed_backup_leaves_no_manifest_and_the_next_backup_removes_its_leftovers(
        run_playbook, platform, make_redis, config_dir, tmp_dir):
    platform.sql("CREATE TABLE ticks_big AS SELECT i, md5(i::text) AS h FROM generate_series(1, 300000) AS i")
    server = make_redis(password=secrets.token_urlsafe(12))
    seed_redis(server)
    backup_dir = os.path.join(tmp_dir, "backups")
    host_vars = connection_vars(platform, server, config_dir, backup_dir)
    complete = _script_backup(backup_dir, config_dir, platform, server)["set_id"]

    argv, env = backup_command(backup_dir, platform, server, config_dir)
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        partial = _wait_for_dump_in_partial(backup_dir, proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        kill_group(proc.pid)

    assert proc.returncode == -signal.SIGKILL
    assert _complete_ids(backup_dir) == [complete]
    assert not glob.glob(os.path.join(backup_dir, ".manifest_*"))
    assert os.path.isdir(os.path.join(backup_dir, partial))

    verify = run_playbook("verify_backup", {"christmas_backup_dir": backup_dir})
    assert "Set %s is intact" % complete in verify.stdout

    after = run_playbook("backup", host_vars, verbosity=1)
    report = _task_result(after, "Backup | Make one backup set")
    assert report["cleaned_incomplete"] == [partial]
    assert report["stale_lock_taken_over"].startswith("pid=%d " % proc.pid)
    assert not os.path.lexists(os.path.join(backup_dir, partial))
    assert _complete_ids(backup_dir) == [complete, report["set_id"]]
    assert sorted(os.listdir(backup_dir)) == sorted([LOCK_NAME, "manifest_%s.json" % complete, "set_" + complete,
                                                     "manifest_%s.json" % report["set_id"], "set_" + report["set_id"]])


def test_next_backup_removes_set_dir_without_manifest_and_temporary_manifest(config_set):
    backup_dir = config_set.backup_dir
    orphan_id, tmp_id, partial_id = _set_id_days_ago(3), _set_id_days_ago(2), _set_id_days_ago(1)
    shutil.copytree(_set_dir(backup_dir, config_set.set_id), _set_dir(backup_dir, orphan_id))
    with open(os.path.join(backup_dir, ".manifest_%s.json.tmp" % tmp_id), "w", encoding="utf-8") as handle:
        handle.write('{"format": "christmas.recovery/backup-set", "set_')
    os.makedirs(os.path.join(backup_dir, ".set_%s.partial" % partial_id, "db.dump"))
    leftovers = sorted(["set_" + orphan_id, ".manifest_%s.json.tmp" % tmp_id, ".set_%s.partial" % partial_id])

    report = _script_backup(backup_dir, config_set.config)

    assert sorted(report["cleaned_incomplete"]) == leftovers
    assert not [name for name in leftovers if os.path.lexists(os.path.join(backup_dir, name))]
    assert _complete_ids(backup_dir) == [config_set.set_id, report["set_id"]]
    assert os.path.isdir(_set_dir(backup_dir, config_set.set_id))


# ---------------------------------------------------------------- 2. retention


def _not_ours(backup_dir):
    """Files and directories an operator keeps in the backup dir, whose names look a little like ours."""
    with open(os.path.join(backup_dir, "notes.txt"), "w", encoding="utf-8") as handle:
        handle.write("restore drill on Friday\n")
    os.makedirs(os.path.join(backup_dir, "set_foo", "inner"))
    with open(os.path.join(backup_dir, "set_foo", "inner", "keep.txt"), "w", encoding="utf-8") as handle:
        handle.write("mine\n")
    _write_json(os.path.join(backup_dir, "manifest_latest.json"), {"set_id": "19990101_000000"})
    with open(os.path.join(backup_dir, "manifest_19990101_000000.json.bak"), "w", encoding="utf-8") as handle:
        handle.write("old notes\n")
    names = ["notes.txt", "set_foo", "manifest_latest.json", "manifest_19990101_000000.json.bak"]
    return {name: _entry_state(os.path.join(backup_dir, name)) for name in names}


def _entry_state(path):
    if os.path.isdir(path):
        return tree_state(path)
    with open(path, "rb") as handle:
        return handle.read()


def test_retention_deletes_only_expired_complete_sets_and_nothing_else(run_playbook, config_set):
    backup_dir = config_set.backup_dir
    expired, recent = _set_id_days_ago(40), _set_id_days_ago(10)
    copy_set(backup_dir, config_set.set_id, backup_dir, expired)
    copy_set(backup_dir, config_set.set_id, backup_dir, recent)
    run_playbook("verify_backup", config_set.host_vars, {"manifest": _manifest_path(backup_dir, expired)})
    foreign = _not_ours(backup_dir)

    report = _script_backup(backup_dir, config_set.config, extra=["--retention-days", "30"])

    assert report["pruned"] == [expired]
    assert not os.path.lexists(_manifest_path(backup_dir, expired))
    assert not os.path.lexists(_set_dir(backup_dir, expired))
    assert _complete_ids(backup_dir) == [recent, config_set.set_id, report["set_id"]]
    assert all(os.path.isdir(_set_dir(backup_dir, set_id)) for set_id in _complete_ids(backup_dir))
    assert {name: _entry_state(os.path.join(backup_dir, name)) for name in foreign} == foreign


def test_retention_zero_keeps_the_newest_complete_set_and_ignores_incomplete_ones(config_set):
    backup_dir = config_set.backup_dir
    old = _set_id_days_ago(5)
    copy_set(backup_dir, config_set.set_id, backup_dir, old)
    foreign = _not_ours(backup_dir)
    # A failed backup is an incomplete set: it must neither count as the newest nor let retention run.
    os.symlink("/etc/passwd", os.path.join(config_set.config, "escape.yml"))
    error = _script_backup(backup_dir, config_set.config, extra=["--retention-days", "0"], expect_ok=False)
    assert "escape.yml" in error
    assert _complete_ids(backup_dir) == [old, config_set.set_id]
    assert not glob.glob(os.path.join(backup_dir, ".set_*")) + glob.glob(os.path.join(backup_dir, ".manifest_*"))

    os.unlink(os.path.join(config_set.config, "escape.yml"))
    report = _script_backup(backup_dir, config_set.config, extra=["--retention-days", "0"])

    assert sorted(report["pruned"]) == [old, config_set.set_id]
    assert _complete_ids(backup_dir) == [report["set_id"]]
    assert sorted(n for n in os.listdir(backup_dir) if n.startswith("set_2")) == ["set_" + report["set_id"]]
    assert {name: _entry_state(os.path.join(backup_dir, name)) for name in foreign} == foreign


def test_a_set_that_fails_its_read_back_is_removed_and_prunes_nothing(platform, tmp_dir):
    backup_dir = os.path.join(tmp_dir, "backups")
    first = _script_backup(backup_dir, platform=platform)["set_id"]
    old = _set_id_days_ago(5)
    copy_set(backup_dir, first, backup_dir, old)
    before = {name: _entry_state(os.path.join(backup_dir, name)) for name in os.listdir(backup_dir)}
    # The dump is written by the real pg_dump; the read-back's pg_restore --list finds it unreadable.
    bin_dir = os.path.join(tmp_dir, "bin")
    os.makedirs(bin_dir)
    os.symlink(os.path.join(PG_BIN, "pg_dump"), os.path.join(bin_dir, "pg_dump"))
    with open(os.path.join(bin_dir, "pg_restore"), "w", encoding="ascii") as handle:
        handle.write('#!/bin/sh\n[ "$1" = --version ] && exec %s --version\n'
                     'echo "pg_restore: error: could not read from input file: end of file" >&2\nexit 1\n'
                     % os.path.join(PG_BIN, "pg_restore"))
    os.chmod(os.path.join(bin_dir, "pg_restore"), 0o755)

    error = _script_backup(backup_dir, platform=platform, extra=["--retention-days", "0", "--pg-bin-dir", bin_dir],
                           expect_ok=False)

    assert "the new set failed its read-back and was removed" in error
    assert "could not read from input file" in error
    assert {name: _entry_state(os.path.join(backup_dir, name)) for name in os.listdir(backup_dir)} == before
    assert _complete_ids(backup_dir) == [old, first]


def test_backup_never_prunes_the_set_it_just_made_even_behind_a_future_dated_set(config_set):
    backup_dir = config_set.backup_dir
    future = _set_id_days_ago(-2)  # written while the clock was wrong
    copy_set(backup_dir, config_set.set_id, backup_dir, future)

    report = _script_backup(backup_dir, config_set.config, extra=["--retention-days", "0"])

    assert report["set_id"] not in report["pruned"]
    assert os.path.isfile(_manifest_path(backup_dir, report["set_id"]))
    assert os.path.isdir(_set_dir(backup_dir, report["set_id"]))
    assert not os.path.lexists(_manifest_path(backup_dir, config_set.set_id))


# ---------------------------------------------------------------- 3. the lock


def test_backup_fails_clearly_while_another_holds_the_lock(run_playbook, config_set):
    backup_dir = config_set.backup_dir
    before = sorted(os.listdir(backup_dir))
    fd = os.open(os.path.join(backup_dir, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, b"pid=%d host=test-holder since=now\n" % os.getpid())
        result = run_playbook("backup", config_set.host_vars, {"skip_db": True, "skip_redis": True},
                              expect_ok=False)
        script_error = _script_backup(backup_dir, config_set.config, expect_ok=False)
    finally:
        os.close(fd)

    message = result.failure_message()
    assert "locked" in message and "pid=%d host=test-holder" % os.getpid() in message
    assert "locked" in script_error
    assert sorted(os.listdir(backup_dir)) == before


def _reaped_child_pid():
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


@pytest.mark.parametrize("content", ["stale", "not_utf8", "absurd_pid"])
def test_lock_file_left_by_a_dead_holder_does_not_block_the_next_backup(config_set, content):
    backup_dir = config_set.backup_dir
    holder = {"stale": b"pid=%d host=x since=y\n" % _reaped_child_pid(),
              "not_utf8": b"\xff\xfe\x00 pid=\xe9 host=?\n",
              "absurd_pid": b"pid=99999999999999999999999 host=x since=y\n"}[content]
    with open(os.path.join(backup_dir, LOCK_NAME), "wb") as handle:
        handle.write(holder)

    report = _script_backup(backup_dir, config_set.config)

    if content == "stale":
        assert report["stale_lock_taken_over"] == holder.decode().strip()
    assert _complete_ids(backup_dir) == [config_set.set_id, report["set_id"]]
    with open(os.path.join(backup_dir, LOCK_NAME), "rb") as handle:
        assert handle.read() == b""


def test_lock_file_replaced_by_a_symlink_is_refused_in_one_line(config_set):
    backup_dir = config_set.backup_dir
    victim = os.path.join(config_set.tmp_dir, "victim.txt")
    with open(victim, "w", encoding="utf-8") as handle:
        handle.write("do not touch\n")
    os.unlink(os.path.join(backup_dir, LOCK_NAME))
    os.symlink(victim, os.path.join(backup_dir, LOCK_NAME))

    error = _script_backup(backup_dir, config_set.config, expect_ok=False)

    assert LOCK_NAME in error
    with open(victim, encoding="utf-8") as handle:
        assert handle.read() == "do not touch\n"
    assert _complete_ids(backup_dir) == [config_set.set_id]


# ---------------------------------------------------------------- 4. a manifest naming files outside its set


def _escape_dotdot(env):
    os.rename(os.path.join(env.set_dir, "config.tar"), os.path.join(env.backup_dir, "outside.tar"))
    return "config.tar", "set_%s/../outside.tar" % env.set_id


def _escape_absolute(env):
    os.makedirs(env.outside)
    path = os.path.join(env.outside, "config.tar")
    os.rename(os.path.join(env.set_dir, "config.tar"), path)
    return "config.tar", path


def _escape_symlink(env):
    os.makedirs(env.outside)
    os.rename(os.path.join(env.set_dir, "redis.rdb"), os.path.join(env.outside, "redis.rdb"))
    os.symlink(env.outside, os.path.join(env.set_dir, "escape"))
    return "redis.rdb", "set_%s/escape/redis.rdb" % env.set_id


def _escape_other_set(env):
    other = _set_id_days_ago(1)
    copy_set(env.backup_dir, env.set_id, env.backup_dir, other)
    os.unlink(os.path.join(env.set_dir, "db_globals.json"))
    return "db_globals.json", "set_%s/db_globals.json" % other


@pytest.mark.parametrize("escape", [_escape_dotdot, _escape_absolute, _escape_symlink, _escape_other_set],
                         ids=["dotdot", "absolute", "symlink", "other_set"])
def test_manifest_naming_a_file_outside_its_set_is_refused_and_restore_changes_nothing(
        run_playbook, backed_up, escape):
    env = backed_up
    # The named file exists with the recorded size and checksum: only the path itself is wrong.
    artifact, named = escape(env)
    _edit_manifest(env.backup_dir, env.set_id, lambda m: _artifact(m, artifact).update(path=named))
    damaged = live_state(env)

    verify = run_playbook("verify_backup", env.host_vars, expect_ok=False)
    assert named in verify.failure_message()
    restore = run_playbook("restore_full", env.host_vars, expect_ok=False)
    assert named in restore.failure_message()
    assert live_state(env) == damaged


# ---------------------------------------------------------------- 5. hostile config archives


def _member(name, kind=tarfile.REGTYPE, data=b"", linkname="", devmajor=0, devminor=0):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.mtime = kind, linkname, 0o644, int(time.time())
    info.devmajor, info.devminor = devmajor, devminor
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data


def _hostile_cases(outside, config):
    """Per case: the members appended to a genuine archive, the member the refusal must name, would-be targets."""
    parent = os.path.dirname(config)
    return {
        "dotdot": ([_member("../evil", data=b"x")], "../evil", [os.path.join(parent, "evil")]),
        "absolute": ([_member(outside + "/abs-evil", data=b"x")], outside + "/abs-evil",
                     [os.path.join(outside, "abs-evil")]),
        "symlink_then_write": ([_member("escape", tarfile.SYMTYPE, linkname=outside),
                                _member("escape/evil", data=b"x")], "escape", [os.path.join(outside, "evil")]),
        "hardlink": ([_member("passwd", tarfile.LNKTYPE, linkname="/etc/passwd")], "passwd",
                     [os.path.join(config, "passwd")]),
        "char_device": ([_member("null", tarfile.CHRTYPE, devmajor=1, devminor=3)], "null",
                        [os.path.join(config, "null")]),
        "fifo": ([_member("pipe", tarfile.FIFOTYPE)], "pipe", [os.path.join(config, "pipe")]),
        "duplicate": ([_member("app.yml", data=b"evil: true\n")], "app.yml", []),
        "long_name": ([_member("n" * 300, data=b"x")], "n" * 150, []),
    }


@pytest.mark.parametrize("case", ["dotdot", "absolute", "symlink_then_write", "hardlink", "char_device", "fifo",
                                  "duplicate", "long_name"])
def test_restore_config_refuses_hostile_archive_member_and_writes_nothing(run_playbook, config_set, case):
    env = config_set
    outside = os.path.join(env.tmp_dir, "outside")
    os.makedirs(outside)
    members, named, targets = _hostile_cases(outside, env.config)[case]
    archive = append_members(os.path.join(_set_dir(env.backup_dir, env.set_id), "config.tar"), members)
    # The attacker controls the manifest too: the archive's checksums are made to match.
    _edit_manifest(env.backup_dir, env.set_id, lambda m: _artifact(m, "config.tar").update(
        size=os.path.getsize(archive), sha256=_sha256(archive)))
    passwd = _sha256("/etc/passwd")
    os.unlink(os.path.join(env.config, "run.sh"))  # so that a restore would have something to do
    before = tree_state(env.config)

    result = run_playbook("restore_config", env.host_vars, expect_ok=False)

    message = result.failure_message()
    assert named in message
    assert tree_state(env.config) == before
    assert not [path for path in targets if os.path.lexists(path)]
    assert os.listdir(outside) == []
    assert _sha256("/etc/passwd") == passwd
    assert sorted(name for name in os.listdir(env.tmp_dir) if "config" in name) == ["config"]


# ---------------------------------------------------------------- 6. damaged artifacts and broken manifests


def _largest_dump_data_file(env):
    data = glob.glob(os.path.join(env.set_dir, "db.dump", "*.dat*"))
    return max(data, key=os.path.getsize)


def _relative(env, path):
    return os.path.relpath(path, env.backup_dir)


def _db_data_byte_flipped(env):
    path = _largest_dump_data_file(env)
    _flip_byte(path)
    return [_relative(env, path), "SHA-256 mismatch"]


def _redis_byte_flipped(env):
    _flip_byte(os.path.join(env.set_dir, "redis.rdb"))
    return ["set_%s/redis.rdb" % env.set_id, "SHA-256 mismatch"]


def _config_byte_flipped(env):
    _flip_byte(os.path.join(env.set_dir, "config.tar"))
    return ["set_%s/config.tar" % env.set_id, "SHA-256 mismatch"]


def _redis_truncated(env):
    path = os.path.join(env.set_dir, "redis.rdb")
    os.truncate(path, os.path.getsize(path) // 2)
    return ["set_%s/redis.rdb" % env.set_id, "truncated"]


def _db_globals_deleted(env):
    os.unlink(os.path.join(env.set_dir, "db_globals.json"))
    return ["set_%s/db_globals.json" % env.set_id, "missing"]


def _manifest_invalid_json(env):
    path = _manifest_path(env.backup_dir, env.set_id)
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text[: len(text) // 2])
    return [os.path.basename(path), "not valid JSON"]


def _manifest_wrong_schema(env):
    _edit_manifest(env.backup_dir, env.set_id, lambda m: m.update(format_version=2))
    return ["manifest_%s.json" % env.set_id, "format_version"]


def _manifest_artifact_field_missing(env):
    _edit_manifest(env.backup_dir, env.set_id, lambda m: m["artifacts"][0].pop("sha256"))
    return ["manifest_%s.json" % env.set_id, "artifacts[0].sha256"]


def _manifest_section_field_missing(env):
    _edit_manifest(env.backup_dir, env.set_id, lambda m: m["config"].pop("tree_sha256"))
    return ["manifest_%s.json" % env.set_id, "tree_sha256"]


def _manifest_db_field_missing(env):
    _edit_manifest(env.backup_dir, env.set_id, lambda m: m["db"].pop("row_counts"))
    return ["manifest_%s.json" % env.set_id, "row_counts"]


@pytest.mark.parametrize("damage", [
    _db_data_byte_flipped, _redis_byte_flipped, _config_byte_flipped, _redis_truncated, _db_globals_deleted,
    _manifest_invalid_json, _manifest_wrong_schema, _manifest_artifact_field_missing, _manifest_section_field_missing,
    _manifest_db_field_missing,
], ids=lambda damage: damage.__name__.strip("_"))
def test_damaged_set_fails_verification_in_one_line_and_restore_leaves_everything_untouched(
        run_playbook, backed_up, damage):
    env = backed_up
    expected = damage(env)
    damaged = live_state(env)

    verify = run_playbook("verify_backup", env.host_vars, expect_ok=False)
    message = verify.failure_message()
    assert all(part in message for part in expected), message
    restore = run_playbook("restore_full", env.host_vars, expect_ok=False)
    message = restore.failure_message()
    assert all(part in message for part in expected), message
    assert live_state(env) == damaged


# ---------------------------------------------------------------- 7. secrets


def test_passwords_never_reach_argv_environ_output_manifest_or_backup_files(
        run_playbook, platform, make_redis, config_dir, tmp_dir):
    server = make_redis(password="redis-" + secrets.token_urlsafe(16))
    seed_redis(server)
    backup_dir = os.path.join(tmp_dir, "backups")
    host_vars = connection_vars(platform, server, config_dir, backup_dir)
    passwords = {"db user": platform.password, "db admin": platform.cluster.password, "redis": server.password}
    sampler = ArgvSampler()
    sampler.start()
    try:
        runs = [run_playbook("backup", host_vars, verbosity=3),
                run_playbook("backup", connection_vars(platform, server, config_dir, backup_dir, admin=False),
                             verbosity=3)]
        platform.sql("UPDATE orders SET qty = 0")
        server.client(0).flushall()
        os.unlink(os.path.join(config_dir, "run.sh"))
        runs.append(run_playbook("restore_full", host_vars, verbosity=3))
    finally:
        sampler.stop()

    argv, environ = b"\n".join(sampler.seen), b"\n".join(sampler.environ)
    # The sampler did see the PostgreSQL tools the modules start, and their environment.
    assert sampler.rounds > 100 and b"/pg_restore\x00" in argv and b"/pg_dump\x00" in argv
    assert b"PGPASSFILE=" in environ
    files = []
    for base, _dirs, names in os.walk(backup_dir):
        files += [os.path.join(base, name) for name in names]
    assert len(_complete_ids(backup_dir)) == 2 and len(files) > 10
    admin_set = _set_dir(backup_dir, _complete_ids(backup_dir)[0])
    with open(os.path.join(admin_set, "db_globals.json"), encoding="utf-8") as handle:
        assert "SCRAM-SHA-256$" in handle.read()  # hashes are expected, plaintext is not
    for what, password in passwords.items():
        secret = password.encode()
        assert secret not in argv, "%s password in a process argv" % what
        assert secret not in environ, "%s password in a process environment" % what
        for run in runs:
            assert password not in run.output, "%s password in playbook output" % what
        for path in files:
            with open(path, "rb") as handle:
                assert secret not in handle.read(), "%s password in %s" % (what, path)


# ---------------------------------------------------------------- 8. check mode


def test_backup_check_mode_writes_nothing(run_playbook, platform, make_redis, config_dir, tmp_dir):
    server = make_redis()
    seed_redis(server)
    backup_dir = os.path.join(tmp_dir, "backups")
    host_vars = connection_vars(platform, server, config_dir, backup_dir)

    run_playbook("backup", host_vars, check=True)
    assert not os.path.lexists(backup_dir)

    set_id = _script_backup(backup_dir, config_dir, platform, server)["set_id"]
    copy_set(backup_dir, set_id, backup_dir, _set_id_days_ago(40))
    os.makedirs(os.path.join(backup_dir, ".set_%s.partial" % _set_id_days_ago(1)))
    os.unlink(os.path.join(backup_dir, LOCK_NAME))
    before = tree_state(backup_dir)

    dry = run_playbook("backup", dict(host_vars, christmas_retention_days=0), check=True)
    assert "would prune 1 set(s)" in dry.stdout
    assert tree_state(backup_dir) == before



def test_backup_dir_that_is_a_file_fails_in_one_line(run_playbook, config_dir, tmp_dir):
    not_a_dir = os.path.join(tmp_dir, "backups")
    with open(not_a_dir, "w", encoding="utf-8") as handle:
        handle.write("keep me")
    # The metrics of the failed backup cannot read the backup directory either: they only warn.
    result = run_playbook("backup", {"christmas_backup_dir": not_a_dir, "christmas_config_dir": config_dir},
                          {"skip_db": True, "skip_redis": True}, expect_ok=False, allow_warnings=("Not a directory",))
    assert "File exists" in result.failure_message()
    with open(not_a_dir, encoding="utf-8") as handle:
        assert handle.read() == "keep me"

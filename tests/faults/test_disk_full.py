"""A full disk: the backup dir and a config restore destination on a small real tmpfs.

A backup that does not fit fails in one line saying there is no space, removes everything it wrote and leaves the
older set byte-identical; swept page by page over the whole footprint of a backup, the disk fills up at every write
in turn (lock file, database dump, globals, Redis keys, config archive, manifest) with the same outcome. A config
restore into a full file system fails in one line and leaves the destination as it was, with no staging dir.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest
from conftest import backup_command, script_environ, seed_redis, tree_state
from fault_helpers import (
    RESTORE_SCRIPT,
    add_market_rows,
    error_of,
    fingerprints,
    leftovers,
    make_tree,
    remove_set,
    report_of,
    run_script,
    verify_problems,
)

NO_SPACE_RE = re.compile(r"no space left on device|not enough disk space", re.IGNORECASE)
PAGE = 4096
BALLAST = "ballast.bin"  # an operator's file in the backup dir: it fills the disk and must survive untouched


@pytest.fixture
def small_tmpfs(tmp_dir):
    """Factory mounting a tmpfs of the given size on a new directory; every mount is undone afterwards."""
    mounted = []

    def mount(name, size="8m"):
        path = os.path.join(tmp_dir, name)
        os.makedirs(path)
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s,mode=0700" % size, "tmpfs", path],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            pytest.skip("cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): %s" % proc.stderr.strip())
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        if subprocess.run(["umount", path], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", path], capture_output=True, check=False)


def free_bytes(path):
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def leave_free(directory, wanted):
    """Grow or shrink the ballast file so that exactly ``wanted`` bytes (rounded to pages) stay free."""
    ballast = os.path.join(directory, BALLAST)
    current = os.path.getsize(ballast) if os.path.exists(ballast) else 0
    size = max(0, current + free_bytes(directory) - wanted)
    with open(ballast, "wb") as handle:
        if size:
            os.posix_fallocate(handle.fileno(), 0, size)
    return free_bytes(directory)


# ---------------------------------------------------------------- a backup that does not fit


def _assert_failed_cleanly(proc, backup_dir, names, older):
    error = error_of(proc)
    assert NO_SPACE_RE.search(error), error
    assert leftovers(backup_dir) == []
    assert sorted(os.listdir(backup_dir)) == names  # the older set, the lock file, the ballast: nothing new
    assert fingerprints(backup_dir) == older
    assert verify_problems(backup_dir) == {}
    return error


def test_backup_too_big_for_the_disk_fails_in_one_line_and_keeps_the_older_set(
        platform, make_redis, config_dir, tmp_dir, small_tmpfs):
    backup_dir = small_tmpfs("backups", "8m")
    older = report_of(run_script(*backup_command(backup_dir, config=config_dir)))["set_id"]
    before, names, free = fingerprints(backup_dir), sorted(os.listdir(backup_dir)), free_bytes(backup_dir)
    add_market_rows(platform, 200_000)  # about 11 MiB uncompressed: it cannot fit in 8 MiB
    server = make_redis()
    seed_redis(server)

    proc = run_script(*backup_command(backup_dir, platform, server, config_dir, ["--compress-level", "0"]))

    error = _assert_failed_cleanly(proc, backup_dir, names, before)
    assert "pg_dump" in error
    assert free_bytes(backup_dir) == free  # every byte written was given back, not just the names removed
    assert list(before) == [older]


def _footprint(backup_dir, argv, env):
    """Bytes a successful backup takes on this file system (the set is removed again afterwards)."""
    free = free_bytes(backup_dir)
    report = report_of(run_script(argv, env))
    used = free - free_bytes(backup_dir)
    remove_set(backup_dir, report["set_id"])
    return used


def _sweep_levels(footprint):
    """Every page from none to two more than the backup needs: each of its writes meets the full disk once."""
    return [page * PAGE for page in range(footprint // PAGE + 3)]


def test_disk_filling_up_at_every_write_of_a_backup_always_fails_cleanly(
        platform, make_redis, config_dir, small_tmpfs):
    backup_dir = small_tmpfs("backups", "8m")
    report_of(run_script(*backup_command(backup_dir, config=config_dir)))
    server = make_redis(password="redis-pw-full")
    seed_redis(server)
    argv, env = backup_command(backup_dir, platform, server, config_dir)
    footprint = _footprint(backup_dir, argv, env)
    older, names = fingerprints(backup_dir), sorted(os.listdir(backup_dir))
    outcomes = []
    try:
        for wanted in _sweep_levels(footprint):
            free = leave_free(backup_dir, wanted)
            proc = run_script(argv, env)
            if proc.returncode == 0:
                new = report_of(proc)["set_id"]
                assert verify_problems(backup_dir, [new]) == {} and leftovers(backup_dir) == []
                remove_set(backup_dir, new)
                outcomes.append((free, "backed up"))
            else:
                outcomes.append((free, _assert_failed_cleanly(proc, backup_dir, sorted(names + [BALLAST]), older)))
                assert free_bytes(backup_dir) == free  # every byte written was given back
            assert fingerprints(backup_dir) == older
    finally:
        print("disk-full sweep, footprint %d bytes:" % footprint)
        for free, outcome in outcomes:
            print("  %8d bytes free: %s" % (free, outcome.replace(backup_dir, "BACKUP_DIR")))

    failures = [outcome for _free, outcome in outcomes if outcome != "backed up"]
    assert failures and outcomes[-1][1] == "backed up"
    # The disk ran out in each writer at least once, and the message says which.
    for where in ("lock file", "pg_dump", "redis.rdb", "archiving config tree", "manifest_"):
        assert any(where in failure for failure in failures), (where, failures)


# ---------------------------------------------------------------- a config restore into a full file system


def _restore_config(backup_dir, dest):
    argv = [sys.executable, RESTORE_SCRIPT, "latest", "--backup-dir", backup_dir, "--skip-db", "--skip-redis",
            "--config-dir", dest]
    return subprocess.run(argv, env=script_environ(), capture_output=True, text=True, timeout=120, check=False)


def _destination(small_tmpfs, source):
    """A tmpfs holding the current config tree: a copy of ``source`` as it is now, changed."""
    mount = small_tmpfs("dest", "8m")
    dest = os.path.join(mount, "config")
    shutil.copytree(source, dest, symlinks=True)
    with open(os.path.join(dest, "local.yml"), "w", encoding="utf-8") as handle:
        handle.write("changed: after the backup\n")
    return mount, dest


@pytest.mark.parametrize("tree", ["preflight", "mid_extract"])
def test_config_restore_into_a_full_file_system_fails_in_one_line_and_changes_nothing(
        config_dir, tmp_dir, small_tmpfs, tree):
    mount, dest = _destination(small_tmpfs, config_dir)
    # preflight: the archive is larger than the free space, refused before anything is written.
    # mid_extract: 1500 tiny files pass the size estimate but need a page each, so the disk fills while extracting.
    if tree == "preflight":
        make_tree(os.path.join(config_dir, "big"), 3, 2 * 2**20, dirs=1)
    else:
        make_tree(os.path.join(config_dir, "tiny"), 1500, 16, dirs=30)
    backup_dir = os.path.join(tmp_dir, "backups")
    report_of(run_script(*backup_command(backup_dir, config=config_dir)))
    free = leave_free(mount, 3 * 2**20)
    before, beside = tree_state(dest), sorted(os.listdir(mount))

    error = error_of(_restore_config(backup_dir, dest))

    print("config restore into a full file system (%s): %s" % (tree, error))
    assert NO_SPACE_RE.search(error), error
    assert tree_state(dest) == before
    assert sorted(os.listdir(mount)) == beside  # no staging dir, no safety copy
    assert free_bytes(mount) == free  # every byte written was given back

"""Races on one backup directory: backups and prunes started at the same moment, and a lock whose holder died.

Real scripts/backup.py processes against a real PostgreSQL, Redis and config tree. While they race, a sampler lists
the directory every millisecond: never more than one set is in progress at once. Afterwards exactly one set exists
per successful run, the loser said "locked" in one line (or, with --lock-wait, waited and succeeded), every visible
set verifies deep and nothing is left behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from types import SimpleNamespace

import pytest
from conftest import backup_command, seed_redis
from fault_helpers import (
    BackupProcess,
    DirSampler,
    add_market_rows,
    error_of,
    fingerprints,
    leftovers,
    report_of,
    run_script,
    verify_problems,
)

from ansible_collections.christmas.recovery.plugins.module_utils.core.locking import LOCK_NAME
from ansible_collections.christmas.recovery.plugins.module_utils.sets.manifest import complete_set_ids

TRIALS = 3
PRUNE = ("--retention-days", "0")  # keeps only the newest set: a prune of everything else


@pytest.fixture
def race_env(platform, make_redis, config_dir, tmp_dir):
    """A platform whose backup takes most of a second (racers started together overlap), and one set of it."""
    add_market_rows(platform, 100_000)
    server = make_redis(password="redis-pw-race")
    seed_redis(server)
    backup_dir = os.path.join(tmp_dir, "backups")
    first = report_of(run_script(*backup_command(backup_dir, platform, server, config_dir)))
    return SimpleNamespace(backup_dir=backup_dir, first_id=first["set_id"],
                           command=lambda *extra: backup_command(backup_dir, platform, server, config_dir, extra))


def _race(env, *extras):
    """Start one backup per ``extras`` at the same moment, sampling the directory meanwhile; returns their runs."""
    sampler = DirSampler(env.backup_dir)
    sampler.start()
    racers = []
    try:
        racers = [BackupProcess(*env.command(*extra)) for extra in extras]
        results = [racer.result() for racer in racers]
    finally:
        for racer in racers:
            racer.kill()
            racer.finish()
        sampler.stop()
    print("race %s: exit codes %s, at most %d set(s) in progress over %d samples" % (
        [" ".join(extra) or "backup" for extra in extras], [r.returncode for r in results], sampler.most_in_progress,
        sampler.rounds))
    assert sampler.rounds > 50 and sampler.most_in_progress <= 1, sampler.most_in_progress
    return results


def _assert_directory_sound(env):
    assert leftovers(env.backup_dir) == []
    assert verify_problems(env.backup_dir) == {}


@pytest.mark.parametrize("second", ["backup", "prune"])
def test_racers_without_lock_wait_one_wins_the_other_fails_locked(race_env, second):
    env = race_env
    for trial in range(TRIALS):
        before = fingerprints(env.backup_dir)
        extras = [(), PRUNE if second == "prune" else ()]
        if trial % 2:
            extras.reverse()  # each racer gets to start first
        results = _race(env, *extras)

        won = [index for index, result in enumerate(results) if result.returncode == 0]
        assert len(won) == 1, [result.stderr[-500:] for result in results]
        winner, loser = report_of(results[won[0]]), error_of(results[1 - won[0]])
        assert "locked" in loser, loser
        assert [s for s in complete_set_ids(env.backup_dir) if s not in before] == [winner["set_id"]]
        pruned_all = extras[won[0]] == PRUNE
        assert sorted(winner["pruned"]) == (sorted(before) if pruned_all else [])
        kept = {set_id: prints for set_id, prints in fingerprints(env.backup_dir).items() if set_id in before}
        assert kept == ({} if pruned_all else before)  # what was not pruned is byte-identical
        _assert_directory_sound(env)


@pytest.mark.parametrize("second", ["backup", "prune"])
def test_racers_with_lock_wait_take_turns_and_both_succeed(race_env, second):
    env = race_env
    before = complete_set_ids(env.backup_dir)
    results = _race(env, ("--lock-wait", "60"), ("--lock-wait", "60", *(PRUNE if second == "prune" else ())))

    reports = [report_of(result) for result in results]
    first, later = sorted(reports, key=lambda report: report["set_id"])
    assert first["set_id"] < later["set_id"]
    visible = complete_set_ids(env.backup_dir)
    if second == "prune" and later is reports[1]:
        assert visible == [later["set_id"]]
        assert sorted(later["pruned"]) == sorted([*before, first["set_id"]])
    elif second == "prune":
        assert sorted(first["pruned"]) == sorted(before) and visible == [later["set_id"], first["set_id"]]
    else:
        assert visible == [later["set_id"], first["set_id"], *before]
    _assert_directory_sound(env)


# ---------------------------------------------------------------- a lock whose holder died


def test_lock_of_a_killed_backup_is_taken_over_by_the_next_one(race_env):
    env = race_env
    holder = BackupProcess(*env.command(), kill_on="dumping database")
    holder.finish()
    assert holder.killed_at is not None, holder.lines

    report = report_of(run_script(*env.command()))

    assert (report["stale_lock_taken_over"] or "").startswith("pid=%d " % holder.pid), report
    assert len(report["cleaned_incomplete"]) == 1 and report["cleaned_incomplete"][0].endswith(".partial")
    assert complete_set_ids(env.backup_dir) == [report["set_id"], env.first_id]
    _assert_directory_sound(env)


def _has_open(pid, path, timeout=30):
    """True once process ``pid`` has ``path`` open (seen in /proc/PID/fd): e.g. it is polling that lock."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            fds = os.listdir("/proc/%d/fd" % pid)
            if any(os.readlink("/proc/%d/fd/%s" % (pid, fd)) == path for fd in fds):
                return True
        except FileNotFoundError:
            pass  # a descriptor closed while we looked
        time.sleep(0.01)
    return False


def test_waiting_backup_takes_over_when_the_holder_is_killed_even_before_it_is_reaped(race_env):
    env = race_env
    holder = BackupProcess(*env.command())
    waiter = None
    try:
        assert holder.wait_line("dumping database"), holder.lines
        os.killpg(holder.pid, signal.SIGSTOP)  # frozen mid-dump, lock held, however fast the machine is
        waiter = BackupProcess(*env.command("--lock-wait", "60"))
        assert _has_open(waiter.pid, os.path.join(env.backup_dir, LOCK_NAME))
        # The holder and its pg_dump at once, as a service manager kills; the holder stays unreaped (a zombie)
        # until the waiter is done, as when its parent is slow to notice.
        os.killpg(holder.pid, signal.SIGKILL)
        result = waiter.result()
    finally:
        for racer in filter(None, (waiter, holder)):
            racer.kill()
            racer.finish()

    report = report_of(result)
    assert (report["stale_lock_taken_over"] or "").startswith("pid=%d " % holder.pid), report
    assert len(report["cleaned_incomplete"]) == 1 and report["cleaned_incomplete"][0].endswith(".partial")
    assert complete_set_ids(env.backup_dir) == [report["set_id"], env.first_id]
    _assert_directory_sound(env)


def test_stale_lock_file_of_a_dead_process_is_taken_over(race_env):
    env = race_env
    dead = subprocess.Popen(["true"])
    dead.wait()
    holder = "pid=%d host=%s since=2026-11-25T03:00:00+0000" % (dead.pid, os.uname().nodename)
    with open(os.path.join(env.backup_dir, LOCK_NAME), "w", encoding="utf-8") as handle:
        handle.write(holder + "\n")

    report = report_of(run_script(*env.command()))

    assert report["stale_lock_taken_over"] == holder
    assert complete_set_ids(env.backup_dir) == [report["set_id"], env.first_id]
    _assert_directory_sound(env)

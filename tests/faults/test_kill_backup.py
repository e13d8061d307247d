"""SIGKILL a real backup at many moments: whatever the moment, what is visible stays true and the next backup heals.

scripts/backup.py runs as a subprocess, with no test hook in the product, against a real PostgreSQL, Redis and config
tree big enough that every phase takes a moment. It is killed right after each of its progress lines, when its set
directory, temporary manifest or manifest appears (with old sets waiting to be pruned), and at 30 evenly spaced
fractions of a measured full run. After each kill, every visible set verifies deep, ``latest`` names a complete set,
the older sets are byte-identical (an expired one may be gone only once the new set is sealed), and the next backup
succeeds, cleans exactly what the kill left and leaves nothing behind.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import time
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest
from conftest import backup_command, group_members
from fault_helpers import (
    BackupProcess,
    add_market_rows,
    copy_set,
    fill_redis,
    fingerprint,
    fingerprints,
    leftovers,
    make_tree,
    remove_set,
    report_of,
    run_script,
    set_id_days_ago,
    verify_problems,
)

from ansible_collections.christmas.recovery.plugins.module_utils.sets.manifest import (
    MANIFEST_RE,
    complete_set_ids,
    resolve_manifest_path,
)
from ansible_collections.christmas.recovery.plugins.module_utils.sets.retention import expired_set_ids

ROWS, KEYS, CONFIG_FILES, CONFIG_FILE_BYTES = 200_000, 20_000, 200, 8192
EXPIRED_SETS = 100  # tiny config-only sets, 40 days old: enough that pruning them takes a moment
RETENTION_DAYS = 30
OFFSETS = 30
ATTEMPTS = 3  # a trigger aimed at a phase of a few milliseconds may land just after it on a busy machine
# --compress-level 0: the dump is large enough that checksumming it takes a moment too.
BACKUP_FLAGS = ["--retention-days", str(RETENTION_DAYS), "--compress-level", "0"]
PHASE_OF_LINE = (("dumping database", "db"), ("pg_dump:", "db"), ("taking the Redis snapshot", "redis"),
                 ("archiving config tree", "config"), ("checksumming set", "checksum"))
MUST_HIT = ("db", "redis", "config", "checksum", "manifest", "retention")
LOCK_HELD = ("db", "redis", "config", "checksum", "manifest", "retention")


@dataclass
class Moment:
    """One kill: what triggers it, and what was seen."""

    trigger: str
    line: str = None        # kill the moment a stderr line matches
    appears: str = None     # kill the moment a new entry matching this appears in the backup dir
    delay: float = 0.0      # ... this long after it appeared
    fraction: float = None  # kill at this fraction of a full backup's duration, as measured lately
    offset: float = None
    expired: bool = False   # old sets waiting to be pruned
    aim: str = None         # the phase this trigger is meant to hit: retried (as a new moment) until it does
    attempt: int = 1
    phase: str = None
    killed_at: float = None
    returncode: int = None
    left: list = field(default_factory=list)
    secrets_left: int = 0   # files in the backup's TMPDIR holding a password after the kill
    orphans: int = 0        # processes of the backup (pg_dump workers) still running after it was killed
    check_seconds: float = None
    heal_seconds: float = None
    problems: list = field(default_factory=list)


def _triggers():
    """Every kill of the run as Moment arguments; the end-of-run ones with old sets to prune."""
    triggers = [dict(trigger="line: %s" % pattern.strip(), line=pattern, aim=aim) for pattern, aim in (
        (r"dumping database", "db"), (r"taking the Redis snapshot", "redis"),
        (r"archiving config tree", "config"), (r"checksumming set", "checksum"))]
    triggers += [
        dict(trigger="appears: set dir", appears=r"^set_\d{8}_\d{6}$", aim="manifest"),
        dict(trigger="appears: temporary manifest", appears=r"^\.manifest_\d{8}_\d{6}\.json\.tmp$", aim="manifest"),
    ]
    triggers += [dict(trigger="appears: manifest +%dms" % (delay * 1000), appears=MANIFEST_RE.pattern, delay=delay,
                      expired=True, aim="retention") for delay in (0, 0.015)]
    triggers += [dict(trigger="offset %d/%d" % (i + 1, OFFSETS), fraction=(i + 0.5) / OFFSETS)
                 for i in range(OFFSETS)]
    return triggers


@pytest.fixture
def kill_env(platform, make_redis, tmp_dir):
    """The platform, one complete set of it, and a tiny config-only set to copy as expired ones."""
    add_market_rows(platform, ROWS)
    server = make_redis(password="redis-pw-kill")
    fill_redis(server, KEYS)
    server.client(3).set("other-db", "x")
    config = make_tree(os.path.join(tmp_dir, "config"), CONFIG_FILES, CONFIG_FILE_BYTES)
    backup_dir, tiny_dir = os.path.join(tmp_dir, "backups"), os.path.join(tmp_dir, "tiny-backups")
    temp = os.path.join(tmp_dir, "tmp")  # the backups' TMPDIR: a kill must leave no password there
    os.makedirs(temp)
    argv, env = backup_command(backup_dir, platform, server, config, BACKUP_FLAGS, tmpdir=temp)
    started = time.monotonic()
    report = report_of(run_script(argv, env))
    duration = time.monotonic() - started
    tiny_config = make_tree(os.path.join(tmp_dir, "tiny-config"), 2, 64)
    tiny = report_of(run_script(*backup_command(tiny_dir, config=tiny_config)))
    return SimpleNamespace(argv=argv, env=env, backup_dir=backup_dir, tiny_dir=tiny_dir, tiny_id=tiny["set_id"],
                           temp=temp, durations=[duration], first_id=report["set_id"],
                           secrets=[platform.password, platform.cluster.password, server.password])


def _duration(env):
    """A full backup's duration: the median of the latest ones, so that a slow first run or a busy moment of the
    machine does not push the late offsets past the end."""
    return statistics.median(env.durations[-5:])


def _add_expired_sets(env):
    ids = [set_id_days_ago(RETENTION_DAYS + 10, seconds=i) for i in range(EXPIRED_SETS)]
    for set_id in ids:
        copy_set(env.tiny_dir, env.tiny_id, env.backup_dir, set_id)
    return set(ids)


def _kill(env, moment, before_names):
    """Start a backup and SIGKILL it at the moment's trigger; returns the process, reaped, group gone."""
    backup = BackupProcess(env.argv, env.env, kill_on=moment.line)
    try:
        if moment.fraction is not None:
            moment.offset = round(moment.fraction * _duration(env), 3)
            time.sleep(max(0.0, moment.offset - backup.elapsed()))
            backup.kill()
        elif moment.appears:
            _kill_when_appears(backup, env.backup_dir, before_names, re.compile(moment.appears), moment.delay)
    finally:
        moment.returncode, _out = backup.finish()
    moment.orphans = backup.orphans
    # SIGKILL sent to a backup that had just exited (not yet reaped) kills nothing: it finished first.
    moment.killed_at = backup.killed_at if moment.returncode != 0 else None
    return backup


def _kill_when_appears(backup, backup_dir, before_names, pattern, delay):
    while backup.running():
        if any(pattern.match(name) for name in set(os.listdir(backup_dir)) - before_names):
            time.sleep(delay)
            backup.kill()
            return
        time.sleep(0.0002)


def _phase(backup, backup_dir, before_names, expired):
    """Where the kill landed: the last progress line, refined after "checksumming" by what is on disk."""
    phase = "startup"
    for message in backup.progress():
        phase = next((name for prefix, name in PHASE_OF_LINE if message.startswith(prefix)), phase)
    if phase != "checksum":
        return phase
    new = set(os.listdir(backup_dir)) - before_names
    if not any(MANIFEST_RE.match(name) for name in new):
        renamed = any(name.startswith(("set_", ".manifest_")) for name in new)
        return "manifest" if renamed else "checksum"
    pending = [s for s in expired if os.path.lexists(os.path.join(backup_dir, "set_%s" % s))]
    return "retention" if pending else "report"


def _check_after_kill(env, moment, before, expired):
    """Everything a reader of the backup dir relies on, while the killed backup's leftovers are still there."""
    problems = moment.problems
    visible = complete_set_ids(env.backup_dir)
    new = [set_id for set_id in visible if set_id not in before]
    sealed = bool(new)
    problems += ["visible set %s: %s" % item for item in verify_problems(env.backup_dir).items()]
    if len(new) > 1:
        problems.append("more than one new set: %s" % new)
    latest = os.path.basename(resolve_manifest_path("latest", env.backup_dir))
    if latest != "manifest_%s.json" % visible[0]:
        problems.append("latest names %s, the newest complete set is %s" % (latest, visible[0]))
    if not set(expired_set_ids(env.backup_dir, RETENTION_DAYS)) <= set(visible):
        problems.append("retention counts a set that has no manifest")
    for set_id, prints in before.items():
        now = fingerprint(env.backup_dir, set_id)
        if now is None and not (set_id in expired and sealed):
            problems.append("older set %s lost its manifest" % set_id)
        elif now is not None and now != prints:
            problems.append("older set %s changed" % set_id)
    moment.left = leftovers(env.backup_dir)


def _heal(env, moment, backup):
    """The next backup succeeds, removes exactly what the kill left, takes over the lock, and leaves nothing."""
    started = time.monotonic()
    proc = run_script(env.argv, env.env)
    moment.heal_seconds = round(time.monotonic() - started, 2)
    if not moment.expired:  # pruning a hundred sets is not part of a normal run's duration
        env.durations.append(moment.heal_seconds)
    if proc.returncode != 0 or "Traceback" in proc.stderr:
        moment.problems.append("next backup failed: %s" % (proc.stderr.strip().splitlines() or ["no output"])[-1])
        return
    report = report_of(proc)
    if sorted(report["cleaned_incomplete"]) != moment.left:
        moment.problems.append("next backup cleaned %s, the kill left %s" % (report["cleaned_incomplete"], moment.left))
    holder = report["stale_lock_taken_over"] or ""
    if moment.phase in LOCK_HELD and not holder.startswith("pid=%d " % backup.pid):
        moment.problems.append("stale lock of pid %d not reported (got %r)" % (backup.pid, holder))
    if leftovers(env.backup_dir):
        moment.problems.append("leftovers after the next backup: %s" % leftovers(env.backup_dir))
    if complete_set_ids(env.backup_dir)[0] != report["set_id"]:
        moment.problems.append("the next backup's set %s is not the newest" % report["set_id"])
    moment.problems += ["next set: %s" % p for p in verify_problems(env.backup_dir, [report["set_id"]]).values()]


def _keep_newest_only(env):
    """Between kills the test drops older sets itself, so each kill is checked against one recent complete set."""
    for set_id in complete_set_ids(env.backup_dir)[1:]:
        remove_set(env.backup_dir, set_id)


def _files_holding(root, secrets):
    """Files below ``root`` containing any of the secrets."""
    found = []
    for base, _dirs, files in os.walk(root):
        for name in files:
            with open(os.path.join(base, name), "rb") as handle:
                content = handle.read()
            if any(secret.encode() in content for secret in secrets):
                found.append(os.path.relpath(os.path.join(base, name), root))
    return found


def _run_moment(env, moment):
    _keep_newest_only(env)
    expired = _add_expired_sets(env) if moment.expired else set()
    before = fingerprints(env.backup_dir)
    before_names = set(os.listdir(env.backup_dir))
    backup = _kill(env, moment, before_names)
    moment.phase = _phase(backup, env.backup_dir, before_names, expired) if moment.killed_at is not None else "done"
    started = time.monotonic()
    _check_after_kill(env, moment, before, expired)
    moment.check_seconds = round(time.monotonic() - started, 2)
    leaked = _files_holding(env.temp, env.secrets)
    moment.secrets_left = len(leaked)
    if leaked:
        moment.problems.append("password left in TMPDIR: %s" % leaked)
        shutil.rmtree(env.temp)  # reported once, not again by every later kill
        os.makedirs(env.temp)
    if moment.killed_at is not None and moment.returncode != -9:
        moment.problems.append("exit %s after SIGKILL" % moment.returncode)
    _heal(env, moment, backup)


def _summary(moments, env, seconds):
    kills = [m for m in moments if m.phase != "done"]
    per_phase = {}
    for moment in kills:
        per_phase[moment.phase] = per_phase.get(moment.phase, 0) + 1
    lines = ["kill-backup: full backup %.2fs (median), %d moments, %d kills, %d finished first, %.1fs in all" % (
        _duration(env), len(moments), len(kills), len(moments) - len(kills), seconds)]
    lines.append("kills per phase: " + ", ".join("%s=%d" % item for item in sorted(per_phase.items())))
    lines.append("kills leaving a password in TMPDIR: %d" % sum(1 for m in kills if m.secrets_left))
    lines.append("kills after which processes of the backup still ran 50ms later: %d" % sum(
        1 for m in kills if m.orphans))
    for m in moments:
        lines.append("  %-30s #%d phase=%-9s killed_at=%-6s left=%d orphans=%d check=%ss heal=%ss %s" % (
            m.trigger, m.attempt, m.phase, "%.3f" % m.killed_at if m.killed_at is not None else "-", len(m.left),
            m.orphans, m.check_seconds, m.heal_seconds, "; ".join(m.problems) or "ok"))
    print("\n".join(lines))
    return per_phase


def test_sigkill_at_any_moment_keeps_visible_sets_true_and_the_next_backup_heals(kill_env):
    started = time.monotonic()
    moments = []
    try:
        for trigger in _triggers():
            for attempt in range(1, ATTEMPTS + 1):
                moment = Moment(attempt=attempt, **trigger)
                moments.append(moment)
                _run_moment(kill_env, moment)
                if moment.aim in (None, moment.phase):
                    break
    finally:
        per_phase = _summary(moments, kill_env, time.monotonic() - started)

    assert [(m.trigger, m.problems) for m in moments if m.problems] == []
    assert sum(per_phase.values()) >= 30
    assert [phase for phase in MUST_HIT if not per_phase.get(phase)] == [], per_phase


# ---------------------------------------------------------------- secrets after a kill


def _wait_for_pg_dump(pgid, timeout=30):
    """True once the backup's pg_dump (not its ``pg_dump --version`` probe) runs in the process group."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in group_members(pgid):
            try:
                with open("/proc/%d/cmdline" % pid, "rb") as handle:
                    if b"--format=directory" in handle.read():
                        return True
            except OSError:
                continue  # it ended while we looked
        time.sleep(0.005)
    return False


def test_killed_backup_leaves_no_database_password_on_disk(platform, tmp_dir):
    """Killed while pg_dump runs, i.e. while pg_dump needs the password: nothing in TMPDIR may hold it."""
    add_market_rows(platform, 100_000)  # pg_dump is still running when the backup is killed
    temp = os.path.join(tmp_dir, "tmp")
    os.makedirs(temp)
    argv, env = backup_command(os.path.join(tmp_dir, "backups"), platform, tmpdir=temp)
    backup = BackupProcess(argv, env)
    try:
        assert _wait_for_pg_dump(backup.pid)
        backup.kill()
    finally:
        backup.finish()

    assert backup.killed_at is not None
    assert _files_holding(temp, [platform.password, platform.cluster.password]) == []

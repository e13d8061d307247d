"""Corruption: one byte changed anywhere in a real backup set is caught before anything changes.

One real set of database, Redis and config; then, trial after trial, one byte of one file of the set (an artifact or
the manifest) is XORed with a random non-zero mask. Checksum verification and an in-process restore must both refuse
the set in one line naming the damaged file, and the live servers and config tree must be exactly as before.
"""

from __future__ import annotations

import collections
import json
import os
import random
import secrets
import shutil
from types import SimpleNamespace

import pytest
from conftest import connection_vars, live_state, seed_redis
from manifest_samples import SET_ID, valid_manifest

from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.db.connection import PgTarget
from ansible_collections.christmas.recovery.plugins.module_utils.redis.redis_keys import RedisTarget
from ansible_collections.christmas.recovery.plugins.module_utils.sets.backup_set import make_backup_set
from ansible_collections.christmas.recovery.plugins.module_utils.sets.manifest import load, manifest_name, seal
from ansible_collections.christmas.recovery.plugins.module_utils.sets.restore_set import restore_set
from ansible_collections.christmas.recovery.plugins.module_utils.sets.verify import verify_set

SEED = 20261224
TRIALS = 100
MANIFEST_SHARE = 0.25  # a quarter of the flips hit the manifest: it fails in more ways than a checksummed artifact


def _quiet(_message):
    pass


@pytest.fixture
def live(platform, make_redis, config_dir, tmp_dir):
    """One complete set of all three components, then the live data changed so that a restore would act."""
    server = make_redis(password=secrets.token_urlsafe(12))
    seed_redis(server)
    db = PgTarget(host="127.0.0.1", port=platform.cluster.port, user="christmas", password=platform.password,
                  admin_user="postgres", admin_password=platform.cluster.password)
    redis_target = RedisTarget("127.0.0.1", server.port, server.password)
    backup_dir = os.path.join(tmp_dir, "backups")
    report = make_backup_set(backup_dir, db=db, redis_target=redis_target, config_dir=config_dir, progress=_quiet)
    platform.sql("UPDATE orders SET qty = 0")
    server.client(0).set("after-backup", "1")
    with open(os.path.join(config_dir, "app.yml"), "a", encoding="utf-8") as handle:
        handle.write("changed: after the backup\n")
    return SimpleNamespace(platform=platform, redis=server, config=config_dir, backup_dir=backup_dir, db=db,
                           redis_target=redis_target, manifest=report["manifest"], set_id=report["set_id"],
                           tmp_dir=tmp_dir)


def _targets(env):
    """(relative name, kind) of every file of the set: the manifest and each artifact it lists."""
    with open(env.manifest, encoding="utf-8") as handle:
        artifacts = json.load(handle)["artifacts"]
    return [(os.path.basename(env.manifest), "manifest")] + [(a["path"], a["kind"]) for a in artifacts]


def _plan(env, trials, rng):
    """(relative name, kind, offset, mask) per trial; every artifact is hit however small, so is the manifest."""
    targets = _targets(env)
    manifest, artifacts = targets[0], targets[1:]
    share = round(trials * MANIFEST_SHARE)
    picks = [manifest] * share + [artifacts[i % len(artifacts)] for i in range(trials - share)]
    rng.shuffle(picks)
    return [(name, kind, rng.randrange(os.path.getsize(os.path.join(env.backup_dir, name))), rng.randrange(1, 256))
            for name, kind in picks]


def _flip(path, offset, mask):
    """XOR one byte; the same call again restores it."""
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)[0]
        handle.seek(offset)
        handle.write(bytes([byte ^ mask]))


def _one_line_naming(err, name):
    message = str(err)
    assert "\n" not in message and "\r" not in message, message
    assert name in message, message
    return message


def _failure_kind(message):
    """Which check caught the flip, for the summary."""
    for marker in ("SHA-256 mismatch", "not valid JSON", "checksum does not match", "is invalid"):
        if marker in message:
            return marker
    return message


def _same_content(path, original):
    """True when the flipped manifest still parses to exactly the original content (whitespace turned whitespace)."""
    try:
        with open(path, "rb") as handle:
            return json.loads(handle.read().decode("utf-8")) == original
    except (UnicodeDecodeError, ValueError):
        return False


def _attempt(env, name):
    """Verification and a full restore both refuse in one line naming ``name``; returns the restore's message."""
    with pytest.raises(RecoveryError) as verify_err:
        verify_set(env.manifest, deep=False)
    _one_line_naming(verify_err.value, name)
    with pytest.raises(RecoveryError) as restore_err:
        restore_set(env.manifest, env.backup_dir, db=env.db, redis_target=env.redis_target, config_dir=env.config,
                    progress=_quiet)
    return _one_line_naming(restore_err.value, name)


def test_every_single_byte_flip_in_a_set_is_refused_before_anything_changes(live):
    env = live
    pristine, _manifest = verify_set(env.manifest, deep=True, pg_target=env.db)
    with open(env.manifest, encoding="utf-8") as handle:
        original_manifest = json.load(handle)
    before = live_state(env)
    rng = random.Random(SEED)
    outcomes = collections.defaultdict(collections.Counter)
    files = collections.defaultdict(set)

    for name, kind, offset, mask in _plan(env, TRIALS, rng):
        path = os.path.join(env.backup_dir, name)
        _flip(path, offset, mask)
        files[kind].add(name)
        try:
            if kind == "manifest" and _same_content(path, original_manifest):
                # JSON whitespace turned into other JSON whitespace: the content the checksum seals is unchanged.
                assert verify_set(env.manifest, deep=False)[1] == original_manifest
                outcomes[kind]["content unchanged, accepted"] += 1
                continue
            message = _attempt(env, name)
            outcomes[kind]["refused: " + _failure_kind(message)] += 1
            assert live_state(env) == before, "flip of byte %d of %s (mask %#x) changed something" % (
                offset, name, mask)
        finally:
            _flip(path, offset, mask)

    assert verify_set(env.manifest, deep=False)[0]["problems"] == pristine["problems"] == []
    print("\n%d one-byte flips in set %s:" % (TRIALS, env.set_id))
    for kind in sorted(outcomes):
        print("  %-18s %3d flips over %d file(s): %s" % (kind, sum(outcomes[kind].values()), len(files[kind]),
                                                          dict(outcomes[kind])))
    assert set().union(*files.values()) == {name for name, _kind in _targets(env)}  # every file was hit
    assert sum(sum(counts.values()) for counts in outcomes.values()) == TRIALS


# ---------------------------------------------------------------- the playbooks on corrupted copies


def _corrupted_copy(env, name, offset, mask):
    """The whole backup dir copied, one byte of ``name`` flipped in the copy."""
    copy = os.path.join(env.tmp_dir, "corrupted-copy")
    shutil.copytree(env.backup_dir, copy, symlinks=True)
    _flip(os.path.join(copy, name), offset, mask)
    return copy


@pytest.mark.parametrize("which", ["artifact", "manifest"])
def test_playbooks_refuse_a_corrupted_copy_exactly_like_the_in_process_restore(run_playbook, live, which):
    env = live
    targets = _targets(env)
    name = targets[0][0] if which == "manifest" else max(
        targets[1:], key=lambda t: os.path.getsize(os.path.join(env.backup_dir, t[0])))[0]
    offset = os.path.getsize(os.path.join(env.backup_dir, name)) // 3
    copy = _corrupted_copy(env, name, offset, 0x5A)
    before = live_state(env)
    env_copy = SimpleNamespace(**dict(vars(env), backup_dir=copy, manifest=os.path.join(copy, targets[0][0])))
    expected = _attempt(env_copy, name)

    host_vars = connection_vars(env.platform, env.redis, env.config, copy)
    verify = run_playbook("verify_backup", host_vars, expect_ok=False).failure_message()
    restore = run_playbook("restore_full", host_vars, expect_ok=False).failure_message()

    assert verify == restore == expected
    assert live_state(env) == before


def test_a_flip_turning_json_whitespace_into_other_whitespace_leaves_the_sealed_content_identical(tmp_dir):
    """Not a miss: the checksum seals the manifest's content, not its layout, so that a manifest re-indented by a
    tool still verifies. Such a flip changes no value the restore reads; the trial above counts it apart."""
    path = os.path.join(tmp_dir, manifest_name(SET_ID))
    sealed = seal(valid_manifest())
    text = json.dumps(sealed, indent=2, sort_keys=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    _flip(path, text.index("\n  ") + 1, 0x20 ^ 0x09)  # the first indenting space becomes a tab

    assert load(path) == sealed

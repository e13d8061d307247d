"""Config versions between sets: a version only when the tree changed, content stored once, a restore to a time gives
that time's tree through the set restore, damaged objects and times outside the window are refused, pruning never
leaves a hole."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import stat
import threading

import pytest
from conftest import tree_state

from ansible_collections.christmas.recovery.plugins.module_utils.config import config_tree, config_versions
from ansible_collections.christmas.recovery.plugins.module_utils.config.config_restore import restore_tree
from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError

T1 = 1_800_000_000.0  # 2027-01-15T08:00:00Z: explicit times, so the window and the lookups are exact


def _quiet(_message):
    pass


def _records(repo):
    return sorted(glob.glob(os.path.join(repo, "versions", "*.json")))


def _objects(repo):
    return sorted(path for path in glob.glob(os.path.join(repo, "objects", "*", "*")))


def _write(path, text):
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def _restored(repo, version_id, tmp_dir, name):
    """The version materialized and restored with the set restore into a fresh destination; its tree state."""
    archive, metadata = config_versions.materialize(repo, version_id, os.path.join(tmp_dir, "out-" + name))
    dest = os.path.join(tmp_dir, "dest-" + name)
    restore_tree(archive, metadata, dest, "v-" + name, progress=_quiet)
    return tree_state(dest), stat.S_IMODE(os.lstat(dest).st_mode)


def _changed_v2(config_dir):
    _write(os.path.join(config_dir, "app.yml"), "api:\n  port: 9090\n")
    os.chmod(os.path.join(config_dir, "run.sh"), 0o700)
    os.unlink(os.path.join(config_dir, "current.yml"))
    os.symlink("secrets.env", os.path.join(config_dir, "current.yml"))
    os.symlink("strategies/empty", os.path.join(config_dir, "empty-link"))


def test_version_only_on_change_deduplicated_and_restored_to_a_time(config_dir, tmp_dir):
    repo = os.path.join(tmp_dir, "repo")
    shutil.copyfile(os.path.join(config_dir, "app.yml"), os.path.join(config_dir, "app-copy.yml"))
    os.chmod(config_dir, 0o750)
    first = config_versions.store_version(config_dir, repo, now=T1)
    assert first["changed"] and first["version"]
    v1_state = tree_state(config_dir)
    contents = {state[2] for state in v1_state.values() if state[0] == "file"}
    assert len(_objects(repo)) == len(contents) == 4  # app.yml and app-copy.yml share one object
    assert first["new_objects"] == 4 and first["stored_bytes"] == sum(len(content) for content in contents)

    _changed_v2(config_dir)
    second = config_versions.store_version(config_dir, repo, now=T1 + 60)
    assert second["changed"] and second["version"] != first["version"]
    assert second["new_objects"] == 1 and second["stored_bytes"] == len("api:\n  port: 9090\n")
    v2_state = tree_state(config_dir)

    unchanged = config_versions.store_version(config_dir, repo, now=T1 + 120)
    assert (unchanged["changed"], unchanged["version"], unchanged["stored_bytes"]) == (False, None, 0)
    assert len(_records(repo)) == 2 and len(_objects(repo)) == 5
    assert config_versions.versions(repo) == [(first["version"], T1), (second["version"], T1 + 60)]
    assert config_versions.window(repo) == {"start": T1, "end": T1 + 120}

    assert config_versions.version_at(repo, T1 + 59.5) == (first["version"], T1)
    assert config_versions.version_at(repo, T1 + 60) == (second["version"], T1 + 60)
    assert _restored(repo, first["version"], tmp_dir, "v1") == (v1_state, 0o750)
    assert _restored(repo, second["version"], tmp_dir, "v2") == (v2_state, 0o750)

    # The materialized section is the one a backup set records for the same tree.
    set_dir = os.path.join(tmp_dir, "set")
    os.mkdir(set_dir)
    archived, _files = config_tree.archive_tree(config_dir, set_dir, progress=_quiet)
    _archive, materialized = config_versions.materialize(repo, second["version"], os.path.join(tmp_dir, "out-v2"))
    assert materialized == archived


def test_repository_is_private_and_special_files_and_hardlinks_are_taken_as_the_archive_takes_them(config_dir,
                                                                                                    tmp_dir):
    repo = os.path.join(tmp_dir, "repo")
    os.mkfifo(os.path.join(config_dir, "strategies", "control.fifo"))
    os.link(os.path.join(config_dir, "secrets.env"), os.path.join(config_dir, "secrets-again.env"))
    old_umask = os.umask(0)
    try:
        result = config_versions.store_version(config_dir, repo, now=T1)
    finally:
        os.umask(old_umask)
    assert result["skipped"] == [{"path": "strategies/control.fifo", "type": "FIFO"}]
    modes = {os.path.relpath(os.path.join(base, name), repo): stat.S_IMODE(os.lstat(os.path.join(base, name)).st_mode)
             for base, dirs, files in os.walk(repo) for name in dirs + files}
    assert modes and all(mode == (0o700 if os.path.isdir(os.path.join(repo, path)) else 0o600)
                         for path, mode in modes.items()), modes
    assert stat.S_IMODE(os.lstat(repo).st_mode) == 0o700

    archive, metadata = config_versions.materialize(repo, result["version"], os.path.join(tmp_dir, "out"))
    set_dir = os.path.join(tmp_dir, "set")
    os.mkdir(set_dir)
    archived, _files = config_tree.archive_tree(config_dir, set_dir, progress=_quiet)
    assert metadata == archived
    assert metadata["skipped"] == result["skipped"]
    assert metadata["hardlinks"] == {"stored_as": "copies", "paths": ["secrets-again.env", "secrets.env"]}
    dest = os.path.join(tmp_dir, "dest")
    restore_tree(archive, metadata, dest, "v1", progress=_quiet)
    assert not os.path.lexists(os.path.join(dest, "strategies", "control.fifo"))
    os.unlink(os.path.join(config_dir, "strategies", "control.fifo"))  # tree_state would open it and wait
    assert tree_state(dest) == tree_state(config_dir)


def test_damaged_or_missing_object_is_refused_naming_it(config_dir, tmp_dir):
    repo = os.path.join(tmp_dir, "repo")
    version = config_versions.store_version(config_dir, repo, now=T1)["version"]
    with open(os.path.join(config_dir, "app.yml"), "rb") as handle:
        content = handle.read()
    sha = hashlib.sha256(content).hexdigest()
    damaged = os.path.join(repo, "objects", sha[:2], sha)
    with open(damaged, "r+b") as handle:
        handle.write(b"X")  # same size, other content
    out = os.path.join(tmp_dir, "out")
    for check in (lambda: config_versions.verify_version(repo, version),
                  lambda: config_versions.materialize(repo, version, out)):
        with pytest.raises(RecoveryError) as err:
            check()
        assert str(err.value) == "config version %s: object %s (app.yml) is damaged: its content does not match " \
                                 "its SHA-256" % (version, damaged)
    assert os.listdir(out) == []  # no archive, not even a partial one

    os.unlink(damaged)
    for check in (lambda: config_versions.verify_version(repo, version),
                  lambda: config_versions.materialize(repo, version, out)):
        with pytest.raises(RecoveryError, match="object %s \\(app.yml\\) is missing" % damaged):
            check()
    assert os.listdir(out) == []

    # The next version of a changed tree stores the missing content again, and the older version is whole again.
    _write(os.path.join(config_dir, "new.yml"), "x: 1\n")
    config_versions.store_version(config_dir, repo, now=T1 + 60)
    assert os.path.exists(damaged)
    assert config_versions.verify_version(repo, version)["objects"] == 4


def test_unreadable_record_is_left_out_of_the_list_and_named_by_verify(config_dir, tmp_dir):
    repo = os.path.join(tmp_dir, "repo")
    first = config_versions.store_version(config_dir, repo, now=T1)["version"]
    _changed_v2(config_dir)
    second = config_versions.store_version(config_dir, repo, now=T1 + 60)["version"]
    record = os.path.join(repo, "versions", second + ".json")
    with open(record, encoding="utf-8") as handle:
        data = json.load(handle)
    data["entries"][0]["mode"] = "777"  # a record whose entries no longer match its tree digest
    with open(record, "w", encoding="utf-8") as handle:
        json.dump(data, handle)
    assert config_versions.versions(repo) == [(first, T1)]
    assert config_versions.version_at(repo, T1 + 600) == (first, T1)
    with pytest.raises(RecoveryError) as err:
        config_versions.verify_version(repo, second)
    assert str(err.value) == "config version record %s is unreadable: its entries do not match its tree digest" % (
        record)
    with pytest.raises(RecoveryError, match="is not a version id"):
        config_versions.verify_version(repo, "../../etc/passwd")


def test_time_before_the_first_version_or_a_clock_behind_is_refused(config_dir, tmp_dir):
    repo = os.path.join(tmp_dir, "repo")
    assert config_versions.window(repo) is None
    with pytest.raises(RecoveryError, match="^%s is not a config version repository" % repo):
        config_versions.prune(repo, T1)
    with pytest.raises(RecoveryError, match="^no config version in .*: none has been stored yet$"):
        config_versions.version_at(repo, T1)
    version = config_versions.store_version(config_dir, repo, now=T1)["version"]
    with pytest.raises(RecoveryError) as err:
        config_versions.version_at(repo, T1 - 1)
    assert str(err.value) == ("no config version at or before 2027-01-15T07:59:59Z in %s: the oldest is from "
                              "2027-01-15T08:00:00Z (%s)" % (repo, version))
    assert config_versions.store_version(config_dir, repo, now=T1 + 300)["changed"] is False
    _write(os.path.join(config_dir, "app.yml"), "changed: true\n")
    with pytest.raises(RecoveryError, match="go up to 2027-01-15T08:05:00Z, after the clock's"):
        config_versions.store_version(config_dir, repo, now=T1 + 200)
    assert len(_records(repo)) == 1
    assert config_versions.window(repo) == {"start": T1, "end": T1 + 300}


def test_prune_keeps_the_version_covering_keep_from_and_drops_unused_objects(config_dir, tmp_dir):
    repo = os.path.join(tmp_dir, "repo")
    app = os.path.join(config_dir, "app.yml")
    ids = []
    for number in range(3):
        _write(app, "generation: %d\n" % number)
        ids.append(config_versions.store_version(config_dir, repo, now=T1 + 60 * number)["version"])
    assert len(_objects(repo)) == 3 + 3  # three contents of app.yml, three unchanged files

    kept_all = config_versions.prune(repo, T1 - 1)
    assert (kept_all["changed"], kept_all["removed_versions"], len(_objects(repo))) == (False, [], 6)

    result = config_versions.prune(repo, T1 + 90)  # between the second and the third version
    assert result["removed_versions"] == [ids[0]] and result["kept_versions"] == ids[1:]
    assert result["removed_objects"] == 1 and result["freed_bytes"] == len("generation: 0\n")
    assert [item[0] for item in config_versions.versions(repo)] == ids[1:]
    assert config_versions.version_at(repo, T1 + 90) == (ids[1], T1 + 60)
    assert len(_objects(repo)) == 5
    for version in ids[1:]:
        assert config_versions.verify_version(repo, version)["objects"] == 4
    state, _mode = _restored(repo, ids[1], tmp_dir, "v2")
    assert state["app.yml"][2] == b"generation: 1\n"

    newest = config_versions.prune(repo, T1 + 10_000)  # after every version: the newest stays
    assert newest["kept_versions"] == [ids[2]] and len(_objects(repo)) == 4


def test_file_rewritten_during_a_run_is_stored_whole_or_refused(config_dir, tmp_dir):
    repo = os.path.join(tmp_dir, "repo")
    busy = os.path.join(config_dir, "busy.bin")
    size = 4 * 2**20
    contents = (b"a" * size, b"b" * size)
    with open(busy, "wb") as handle:
        handle.write(contents[0])
    stop, writing = threading.Event(), threading.Event()

    def rewrite():
        number = 0
        with open(busy, "r+b", buffering=0) as handle:
            while not stop.is_set():
                number += 1
                handle.seek(0)
                handle.write(contents[number % 2])
                writing.set()

    writer = threading.Thread(target=rewrite)
    writer.start()
    try:
        assert writing.wait(timeout=30)
        try:
            result = config_versions.store_version(config_dir, repo, now=T1)
        except RecoveryError as err:
            result = None
            assert "kept changing while a version was taken" in str(err)
    finally:
        stop.set()
        writer.join()
    leftovers = glob.glob(os.path.join(repo, "objects", "*", ".*"))
    assert not leftovers
    if result is None:
        assert _records(repo) == []
        return
    config_versions.verify_version(repo, result["version"])
    state, _mode = _restored(repo, result["version"], tmp_dir, "busy")
    assert state["busy.bin"][2] in contents

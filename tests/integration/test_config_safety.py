"""Config safety: restored modes never grant more than they should, owners follow the destination, special files and
hardlinks in the tree cannot fail a backup after the dump, a mount point is restored in place, and every safety copy
has a name of its own.
"""

from __future__ import annotations

import glob
import json
import os
import socket
import stat
import subprocess
import sys
import time

import pytest
from conftest import ROOT, backup_command, connection_vars, run_module, tree_state

from ansible_collections.christmas.recovery.plugins.module_utils.sets.backup_set import make_backup_set
from ansible_collections.christmas.recovery.plugins.module_utils.sets.manifest import load
from ansible_collections.christmas.recovery.plugins.module_utils.sets.restore_set import restore_set

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="owners, device nodes and mounts need root")

# Numeric owners that need not exist: a config tree may belong to accounts of the host it came from.
DEST_UID, DEST_GID, RECORDED_UID = 23456, 34567, 45678
RISKY = {"bin/tool": 0o4755, "shared": 0o2775, "spool": 0o1777, "world.yml": 0o666}
SAFE = {"bin/tool": 0o755, "shared": 0o775, "spool": 0o775, "world.yml": 0o664}


def _quiet(_message):
    pass


def _write(path, text, mode=0o644, owner=(RECORDED_UID, RECORDED_UID)):
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chown(path, *owner)
    os.chmod(path, mode)  # after chown, which clears set-ID bits


def _risky_tree(root):
    """set-user-ID program, setgid and sticky+world-writable directories, a world-writable file, another owner."""
    os.makedirs(os.path.join(root, "bin"))
    os.mkdir(os.path.join(root, "shared"))
    os.mkdir(os.path.join(root, "spool"))
    _write(os.path.join(root, "app.yml"), "api:\n  port: 8080\n", 0o640)
    _write(os.path.join(root, "world.yml"), "open: true\n")
    _write(os.path.join(root, "bin", "tool"), "#!/bin/sh\n")
    os.symlink("app.yml", os.path.join(root, "current.yml"))
    os.lchown(os.path.join(root, "current.yml"), RECORDED_UID, RECORDED_UID)
    for name, mode in RISKY.items():
        path = os.path.join(root, name)
        os.chown(path, RECORDED_UID, RECORDED_UID)
        os.chmod(path, mode)
    os.chown(os.path.join(root, "bin"), RECORDED_UID, RECORDED_UID)
    os.chown(root, RECORDED_UID, RECORDED_UID)
    os.chmod(root, 0o750)


def _modes_and_owners(root):
    found = {".": (stat.S_IMODE(os.lstat(root).st_mode), os.lstat(root).st_uid, os.lstat(root).st_gid)}
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(base, name)
            info = os.lstat(path)
            found[os.path.relpath(path, root)] = (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid)
    return found


@pytest.fixture
def risky_set(tmp_dir):
    """A config-only set of a tree with risky modes and recorded owners; the destination then belongs to
    DEST_UID:DEST_GID and lost a file, so that a restore has something to do."""
    config = os.path.join(tmp_dir, "config")
    _risky_tree(config)
    backup_dir = os.path.join(tmp_dir, "backups")
    report = make_backup_set(backup_dir, config_dir=config, progress=_quiet)
    os.unlink(os.path.join(config, "app.yml"))
    os.chown(config, DEST_UID, DEST_GID)
    return config, backup_dir, report


def test_config_restore_removes_set_id_sticky_and_world_write_and_gives_the_destination_owner(run_playbook, risky_set):
    config, backup_dir, _report = risky_set
    host_vars = connection_vars(config=config, backup_dir=backup_dir)
    before = _modes_and_owners(config)

    dry = run_playbook("restore_config", host_vars, check=True)

    assert _modes_and_owners(config) == before
    for name, mode in RISKY.items():  # the dry run lists every mode it would change
        assert '\\"path\\": \\"%s\\", \\"recorded\\": \\"%04o\\", \\"restored\\": \\"%04o\\"' % (
            name, mode, SAFE[name]) in dry.stdout, dry.stdout[-3000:]

    run_playbook("restore_config", host_vars)

    now = _modes_and_owners(config)
    assert {name: now[name][0] for name in SAFE} == SAFE
    assert now["app.yml"][0] == 0o640 and now["."][0] == 0o750
    assert {(uid, gid) for _mode, uid, gid in now.values()} == {(DEST_UID, DEST_GID)}
    again = restore_set("latest", backup_dir, components=("config",), config_dir=config, progress=_quiet)
    assert again["components"]["config"]["changed"] is False
    assert glob.glob(config + ".pre-restore-*")


def test_config_restore_keeps_special_modes_and_owners_when_asked(tmp_dir, risky_set):
    config, backup_dir, _report = risky_set
    argv = [sys.executable, os.path.join(ROOT, "scripts", "restore.py"), "latest",
            "--backup-dir", backup_dir, "--skip-db", "--skip-redis", "--config-dir", config]

    dry = subprocess.run(argv + ["--dry-run"], capture_output=True, text=True, check=False)
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["components"]["config"]["changes_modes"] == [
        {"path": name, "recorded": "%04o" % RISKY[name], "restored": "%04o" % SAFE[name]} for name in sorted(RISKY)]
    kept = subprocess.run(argv + ["--config-keep-special-modes", "--config-keep-owners"], capture_output=True,
                          text=True, check=False)
    assert kept.returncode == 0, kept.stderr

    now = _modes_and_owners(config)
    assert {name: now[name][0] for name in RISKY} == RISKY
    assert {(uid, gid) for _mode, uid, gid in now.values()} == {(RECORDED_UID, RECORDED_UID)}


def _special_tree(root):
    """A FIFO, a listening unix socket, a character device (like /dev/null) and a hardlink pair."""
    os.makedirs(os.path.join(root, "run"))
    _write(os.path.join(root, "app.yml"), "api:\n  port: 8080\n", owner=(0, 0))
    os.link(os.path.join(root, "app.yml"), os.path.join(root, "app-hardlink.yml"))
    os.mkfifo(os.path.join(root, "run", "control.fifo"))
    os.mknod(os.path.join(root, "run", "null"), 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(os.path.join(root, "run", "app.sock"))
    server.listen(1)
    return server


def test_backup_skips_special_files_with_a_warning_naming_each_and_stores_hardlinks_as_copies(tmp_dir, config_dir):
    server = _special_tree(config_dir)
    try:
        backup_dir = os.path.join(tmp_dir, "backups")
        specials = ["run/app.sock", "run/control.fifo", "run/null"]

        result, output = run_module(tmp_dir, "christmas_backup", {
            "backup_dir": backup_dir, "skip_db": True, "skip_redis": True, "config_dir": config_dir},
            allow_warnings=["config entry run/"])

        assert result.get("failed") is not True, result
        for name, kind in zip(specials, ["socket", "FIFO", "character device"], strict=True):
            assert "config entry %s is a %s: skipped" % (name, kind) in output
        manifest = load(result["manifest"])
        assert [item["path"] for item in manifest["config"]["skipped"]] == specials
        assert manifest["config"]["hardlinks"] == {"stored_as": "copies", "paths": ["app-hardlink.yml", "app.yml"]}

        os.unlink(os.path.join(config_dir, "app.yml"))
        restore_set(result["manifest"], components=("config",), config_dir=config_dir, progress=_quiet)

        for name in ("app.yml", "app-hardlink.yml"):
            info = os.lstat(os.path.join(config_dir, name))
            assert stat.S_ISREG(info.st_mode) and info.st_nlink == 1
            with open(os.path.join(config_dir, name), encoding="utf-8") as handle:
                assert handle.read() == "api:\n  port: 8080\n"
        assert sorted(os.listdir(os.path.join(config_dir, "run"))) == []
    finally:
        server.close()


def test_backup_refuses_a_config_tree_it_cannot_archive_before_the_database_is_dumped(platform, tmp_dir, config_dir):
    os.symlink("/etc/passwd", os.path.join(config_dir, "escape.yml"))
    backup_dir = os.path.join(tmp_dir, "backups")
    argv, env = backup_command(backup_dir, platform, None, config_dir)

    proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)

    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors == ["error: config symlink escape.yml -> /etc/passwd points outside %s; it could not be restored "
                      "safely (make it relative and inside the tree)" % config_dir], proc.stderr
    assert "dumping database" not in proc.stderr and "pg_dump" not in proc.stderr, proc.stderr
    assert not glob.glob(os.path.join(backup_dir, "*", "db.dump")) + glob.glob(os.path.join(backup_dir, "*set_*"))


@pytest.fixture
def tmpfs_config(tmp_dir):
    """The config directory is a tmpfs mount point, unmounted after the test whatever happened."""
    mount_point = os.path.join(tmp_dir, "mounted-config")
    os.mkdir(mount_point)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", mount_point], check=True, capture_output=True)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", mount_point], check=False, capture_output=True)


def test_config_restore_into_a_mount_point_replaces_its_contents_in_place_and_keeps_a_safety_copy(
        tmp_dir, config_dir, tmpfs_config):
    backup_dir = os.path.join(tmp_dir, "backups")
    report = make_backup_set(backup_dir, config_dir=config_dir, progress=_quiet)
    subprocess.run(["cp", "-a", config_dir + "/.", tmpfs_config], check=True)
    with open(os.path.join(tmpfs_config, "app.yml"), "w", encoding="utf-8") as handle:
        handle.write("broken: [")
    with open(os.path.join(tmpfs_config, "stray.yml"), "w", encoding="utf-8") as handle:
        handle.write("stray: true\n")
    old = tree_state(tmpfs_config)

    plan = restore_set(report["manifest"], components=("config",), config_dir=tmpfs_config, check_mode=True,
                       progress=_quiet)
    assert tree_state(tmpfs_config) == old

    result = restore_set(report["manifest"], components=("config",), config_dir=tmpfs_config, progress=_quiet)

    assert plan["components"]["config"]["placement"] == result["components"]["config"]["placement"] == "in place"

    assert os.path.ismount(tmpfs_config)
    assert tree_state(tmpfs_config) == tree_state(config_dir)
    safety = result["components"]["config"]["safety_copy"]
    assert glob.glob(tmpfs_config + ".pre-restore-*") == [safety]
    assert tree_state(safety) == old


def _start_of_a_second():
    """Wait (polling the clock, with a deadline) until a second has just begun, so two quick restores share it."""
    deadline = time.monotonic() + 5
    while time.time() % 1 > 0.2:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return int(time.time())


def test_two_config_restores_in_the_same_second_keep_two_safety_copies(tmp_dir, config_dir):
    backup_dir = os.path.join(tmp_dir, "backups")
    report = make_backup_set(backup_dir, config_dir=config_dir, progress=_quiet)
    for _attempt in range(5):
        for old in glob.glob(config_dir + ".pre-restore-*"):
            subprocess.run(["rm", "-rf", old], check=True)
        second, trees, copies = _start_of_a_second(), [], []
        for content in ("first: 1\n", "second: 2\n"):
            with open(os.path.join(config_dir, "app.yml"), "w", encoding="utf-8") as handle:
                handle.write(content)
            trees.append(tree_state(config_dir))
            result = restore_set(report["manifest"], components=("config",), config_dir=config_dir,
                                 progress=_quiet)
            copies.append(result["components"]["config"]["safety_copy"])
        if int(time.time()) == second:
            break
    else:
        pytest.fail("two restores never fitted in one second")
    assert sorted(glob.glob(config_dir + ".pre-restore-*")) == sorted(copies) and len(set(copies)) == 2
    assert [tree_state(copy) for copy in copies] == trees

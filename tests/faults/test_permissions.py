"""Permissions: a backup is private whatever the umask and whoever runs it; a config restore as root asked to keep
them gives every entry back its recorded mode and owner, special bits included.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import stat
import subprocess
import sys
import tempfile

import pytest
from conftest import BACKUP_SCRIPT, ROOT

from ansible_collections.christmas.recovery.plugins.module_utils.sets.backup_set import make_backup_set
from ansible_collections.christmas.recovery.plugins.module_utils.sets.restore_set import restore_set

# Numeric owners that need not exist: a config tree may belong to accounts of the host it came from.
OTHER_UID, OTHER_GID, THIRD_UID = 23456, 34567, 45678

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="creating users and setting owners needs root")


def _quiet(_message):
    pass


@pytest.fixture
def system_user():
    """A throwaway system account (and its group), removed after the test whatever happened."""
    name = "chrfault%s" % secrets.token_hex(4)
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                   check=True, capture_output=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)
        subprocess.run(["groupdel", name], check=False, capture_output=True)  # gone already with USERGROUPS_ENAB


def _python_for(user):
    """An interpreter the user may run: the venv's may live below a home directory closed to others. Backing up
    config only needs the standard library."""
    for candidate in (sys.executable, "/usr/bin/python3"):
        probe = subprocess.run(["runuser", "-u", user.pw_name, "--", candidate, "-c", "import tarfile"],
                               capture_output=True, check=False)
        if probe.returncode == 0:
            return candidate
    pytest.skip("no Python interpreter runnable by %s" % user.pw_name)
    return None


def _chown_tree(root, uid, gid):
    os.lchown(root, uid, gid)
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            os.lchown(os.path.join(base, name), uid, gid)


def _run_backup_as(user, backup_dir, config):
    """scripts/backup.py as ``user`` under umask 000: only the code's own modes stand between the set and others."""
    key = os.path.join(tempfile.mkdtemp(prefix="key-", dir=os.path.dirname(config)), "signing.key")  # the user's own
    os.chown(os.path.dirname(key), user.pw_uid, user.pw_gid)
    argv = ["runuser", "-u", user.pw_name, "--", "/bin/sh", "-c", 'umask 000 && exec "$@"', "sh", _python_for(user),
            BACKUP_SCRIPT, "--backup-dir", backup_dir, "--skip-db", "--skip-redis", "--config-dir", config,
            "--signing-key-file", key]
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONDONTWRITEBYTECODE": "1", "LANG": "C.UTF-8"}
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _modes_and_owners(root):
    """(type, permission bits, uid, gid) of every entry below ``root`` and of ``root`` itself, from lstat."""
    entries = {".": os.lstat(root)}
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(base, name)
            entries[os.path.relpath(path, root)] = os.lstat(path)
    return {name: (stat.S_IFMT(info.st_mode), oct(stat.S_IMODE(info.st_mode)), info.st_uid, info.st_gid)
            for name, info in entries.items()}


def test_backup_as_another_user_under_umask_000_is_private_and_owned_by_that_user(system_user, config_dir, tmp_dir):
    user = system_user
    os.chmod(tmp_dir, 0o755)  # the user must reach its config tree and its directory
    _chown_tree(config_dir, user.pw_uid, user.pw_gid)
    owned = os.path.join(tmp_dir, "owned")
    os.mkdir(owned, 0o755)
    os.chown(owned, user.pw_uid, user.pw_gid)
    backup_dir = os.path.join(owned, "backups")

    report = _run_backup_as(user, backup_dir, config_dir)

    entries = _modes_and_owners(backup_dir)
    assert {name for name in entries if name.startswith("set_")} == {"set_" + report["set_id"],
                                                                     "set_%s/config.tar" % report["set_id"]}
    wrong = {name: entry for name, entry in entries.items() if entry[1:] != (
        "0o700" if entry[0] == stat.S_IFDIR else "0o600", user.pw_uid, user.pw_gid)}
    assert wrong == {}, "not private to %s: %s" % (user.pw_name, wrong)
    assert all(entry[0] in (stat.S_IFDIR, stat.S_IFREG) for entry in entries.values())


def test_backup_dir_parents_created_by_the_backup_are_not_writable_by_others(system_user, config_dir, tmp_dir):
    user = system_user
    os.chmod(tmp_dir, 0o755)
    _chown_tree(config_dir, user.pw_uid, user.pw_gid)
    owned = os.path.join(tmp_dir, "owned")
    os.mkdir(owned, 0o755)
    os.chown(owned, user.pw_uid, user.pw_gid)

    _run_backup_as(user, os.path.join(owned, "site", "nightly", "backups"), config_dir)

    for created in (os.path.join(owned, "site"), os.path.join(owned, "site", "nightly")):
        mode = stat.S_IMODE(os.lstat(created).st_mode)
        assert not mode & (stat.S_IWGRP | stat.S_IWOTH), "%s is %o: others could swap the backup dir" % (
            created, mode)


# ---------------------------------------------------------------- restore as root, asked to, keeps modes and owners


def _write(path, text, mode, uid, gid):
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chown(path, uid, gid)
    os.chmod(path, mode)  # after chown, which clears set-user-ID and set-group-ID bits


def _mkdir(path, mode, uid, gid):
    os.mkdir(path)
    os.chown(path, uid, gid)
    os.chmod(path, mode)


def _owned_tree(root, user):
    """A config tree of mixed owners and modes: 0640, 0755, 0600 in a 0700 dir, a setgid shared dir, a sticky
    dir, a set-user-ID program, an empty 0711 dir and symlinks owned by someone other than root."""
    uid, gid = user.pw_uid, user.pw_gid
    _mkdir(root, 0o2750, uid, OTHER_GID)
    _write(os.path.join(root, "app.yml"), "api:\n  port: 8080\n", 0o640, uid, OTHER_GID)
    _write(os.path.join(root, "run.sh"), "#!/bin/sh\n", 0o755, 0, OTHER_GID)
    _mkdir(os.path.join(root, "private"), 0o700, OTHER_UID, OTHER_UID)
    _write(os.path.join(root, "private", "key.pem"), "not a key\n", 0o600, OTHER_UID, gid)
    _mkdir(os.path.join(root, "shared"), 0o2775, 0, OTHER_GID)
    _write(os.path.join(root, "shared", "data.csv"), "a,b\n1,2\n", 0o664, THIRD_UID, OTHER_GID)
    _mkdir(os.path.join(root, "shared", "sub"), 0o755, THIRD_UID, THIRD_UID)
    _mkdir(os.path.join(root, "spool"), 0o1777, 0, 0)
    _mkdir(os.path.join(root, "bin"), 0o750, 0, gid)
    _write(os.path.join(root, "bin", "tool"), "#!/bin/sh\n", 0o4750, uid, gid)
    _mkdir(os.path.join(root, "empty"), 0o711, OTHER_UID, OTHER_GID)
    os.symlink("app.yml", os.path.join(root, "current.yml"))
    os.lchown(os.path.join(root, "current.yml"), uid, OTHER_GID)
    os.symlink("../app.yml", os.path.join(root, "shared", "app-link.yml"))
    os.lchown(os.path.join(root, "shared", "app-link.yml"), THIRD_UID, THIRD_UID)


def _damage_modes_and_content(root):
    os.chmod(os.path.join(root, "app.yml"), 0o666)
    os.chmod(os.path.join(root, "shared"), 0o755)  # setgid lost
    os.unlink(os.path.join(root, "private", "key.pem"))
    os.chmod(os.path.join(root, "bin", "tool"), 0o755)  # set-user-ID lost
    os.chmod(root, 0o755)


def _damage_owners_only(root):
    """Owners changed, nothing else: the tree's checksum (types, names, modes, contents) stays the same."""
    for name in ("app.yml", os.path.join("shared", "data.csv"), "private", "current.yml"):
        os.lchown(os.path.join(root, name), 0, 0)
    os.chown(root, 0, 0)
    # chown clears set-ID bits of files (not of directories); put them back so that only owners differ
    os.chmod(root, 0o2750)


@pytest.mark.parametrize("damage", [_damage_modes_and_content, _damage_owners_only],
                         ids=["modes_and_content", "owners_only"])
def test_config_restore_as_root_keeping_modes_and_owners_gives_back_every_recorded_one(system_user, tmp_dir, damage):
    config = os.path.join(tmp_dir, "etc-christmas")
    _owned_tree(config, system_user)
    original = _modes_and_owners(config)
    backup_dir = os.path.join(tmp_dir, "backups")
    report = make_backup_set(backup_dir, config_dir=config, progress=_quiet)
    damage(config)
    assert _modes_and_owners(config) != original

    keep = {"config_keep_special_modes": True, "config_keep_owners": True}
    result = restore_set(report["manifest"], backup_dir, components=("config",), config_dir=config, progress=_quiet,
                         **keep)

    assert result["components"]["config"]["changed"] is True
    restored = _modes_and_owners(config)
    assert {name: (restored.get(name), entry) for name, entry in original.items() if restored.get(name) != entry} == {}
    assert restored == original
    again = restore_set(report["manifest"], backup_dir, components=("config",), config_dir=config, progress=_quiet,
                        **keep)
    assert again["components"]["config"]["changed"] is False

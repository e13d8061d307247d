"""The pure parts of the offsite copies: what rsync and ssh are given, which sets go, which line explains a failure."""

from __future__ import annotations

import os
import shlex

import pytest
from conftest import file_contents
from faults.fault_helpers import set_id_days_ago

from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.sets import encryption
from ansible_collections.christmas.recovery.plugins.module_utils.transport import history, offsite


def _remote(tmp_path, **changes):
    key, known = tmp_path / "key", tmp_path / "known_hosts"
    key.write_text("k")
    known.write_text("h")
    return offsite.Remote(host="vault-01", port=2222, user="christmas-vault", directory="/srv/vault/db1",
                          key_file=str(key), known_hosts=str(known), connect_timeout=7)._replace(**changes)


def test_ssh_uses_only_the_given_key_and_known_hosts_and_never_prompts(tmp_path):
    remote = _remote(tmp_path)
    argv = shlex.split(offsite.ssh_command(remote))
    assert argv[:5] == ["ssh", "-p", "2222", "-i", remote.key_file]
    assert {"IdentitiesOnly=yes", "BatchMode=yes", "StrictHostKeyChecking=yes", "ConnectTimeout=7",
            "UserKnownHostsFile=%s" % remote.known_hosts} <= set(argv)


def test_rsync_keeps_modes_resumes_and_protects_the_names(tmp_path):
    argv = offsite.rsync_argv(_remote(tmp_path), ["/b/./manifest_x.json"], "u@h:/d/")
    assert os.path.basename(argv[0]) == "rsync"
    assert {"--archive", "--relative", "--partial", "--mkpath", "--protect-args"} <= set(argv)
    assert argv[-3:] == ["--", "/b/./manifest_x.json", "u@h:/d/"]


@pytest.mark.parametrize("changes, message", [
    ({"host": "-oProxyCommand=touch /tmp/x"}, "vault_host '-oProxyCommand=touch /tmp/x' is not a host or user name"),
    ({"user": "a b"}, "vault_user 'a b' is not a host or user name"),
    ({"key_file": "/tmp/it's"}, "ssh_key_file \"/tmp/it's\" must not contain quotes"),
    ({"known_hosts": "/nonexistent/known_hosts"}, "known_hosts_file /nonexistent/known_hosts does not exist"),
    ({"directory": "vault/db1"}, "vault_dir vault/db1 must be an absolute path"),
])
def test_a_remote_that_could_not_be_passed_safely_is_refused_before_anything_runs(tmp_path, changes, message):
    with pytest.raises(RecoveryError, match="^" + message.replace("(", "\\(")):
        offsite.send_sets(str(tmp_path), _remote(tmp_path, **changes), 30)


def test_an_ipv6_vault_is_written_in_brackets(tmp_path):
    assert offsite.remote_spec(_remote(tmp_path, host="fd00::5"), "/d/") == "christmas-vault@[fd00::5]:/d/"


def test_sets_to_send_are_the_missing_unexpired_ones_oldest_first(tmp_path):
    """Only the manifests' names count here: a set is complete when its manifest exists."""
    backup_dir = str(tmp_path / "backups")
    os.mkdir(backup_dir)
    ids = [set_id_days_ago(days) for days in (40, 10, 2, 0)]
    for set_id in ids:
        with open(os.path.join(backup_dir, "manifest_%s.json" % set_id), "w", encoding="utf-8") as handle:
            handle.write("{}")
    assert offsite.sets_to_send(backup_dir, 30, present={ids[2]}) == [ids[1], ids[3]]
    assert offsite.sets_to_send(backup_dir, 0, present=set()) == [ids[3]]


@pytest.mark.parametrize("stderr, line", [
    ("@@@@@@@@@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\nIt is also possible that a host key "
     "has just been changed.\nHost key verification failed.\nrsync: connection unexpectedly closed (0 bytes received "
     "so far) [sender]\nrsync error: unexplained error (code 255) at io.c(232) [sender=3.2.7]\n",
     "Host key verification failed."),
    ("christmas-vault@10.0.0.5: Permission denied (publickey).\nrsync error: unexplained error (code 255)\n",
     "christmas-vault@10.0.0.5: Permission denied (publickey)."),
    ('rsync: [sender] link_stat "/srv/x/manifest_1.json" failed: No such file or directory (2)\n'
     "rsync error: some files/attrs were not transferred (code 23)\n",
     'rsync: [sender] link_stat "/srv/x/manifest_1.json" failed: No such file or directory (2)'),
    ("ssh: connect to host 10.0.0.5 port 22: Connection refused\nrsync error: unexplained error (code 255)\n",
     "ssh: connect to host 10.0.0.5 port 22: Connection refused"),
])
def test_a_failed_copy_is_explained_by_what_ssh_or_the_far_side_said(stderr, line):
    assert offsite.rsync_cause(stderr) == line


def test_the_sealed_copy_of_the_history_reseals_only_what_changed_and_opens_only_in_its_place(tmp_path):
    key = bytes(range(32))
    source, mirror, opened = (str(tmp_path / name) for name in ("pitr", "sealed", "opened"))
    os.makedirs(os.path.join(source, "redis"))
    os.makedirs(os.path.join(source, "config", "objects"))
    for name, data in (("redis/index.json", b'{"secret": "marker"}'), ("config/objects/ab", b"marker " * 1000),
                       ("redis/.christmas-recovery.lock", b"")):
        with open(os.path.join(source, name), "wb") as handle:
            handle.write(data)

    assert history.seal_tree(source, mirror, key) == 2
    sealed = file_contents(mirror)
    assert sorted(sealed) == ["KEY_ID", "config/objects/ab", "redis/index.json"]  # never the lock
    assert not any(b"marker" in data for data in sealed.values())
    assert history.seal_tree(source, mirror, key) == 0
    with open(os.path.join(source, "redis", "index.json"), "wb") as handle:
        handle.write(b'{"secret": "marker", "more": 1}')
    os.unlink(os.path.join(source, "config", "objects", "ab"))
    assert history.seal_tree(source, mirror, key) == 1
    assert sorted(file_contents(mirror)) == ["KEY_ID", "redis/index.json"]

    history.open_tree(mirror, opened, key, encryption.key_id(key), "vault")
    assert file_contents(opened) == {"redis/index.json": b'{"secret": "marker", "more": 1}'}
    with pytest.raises(RecoveryError, match="does not match the AOF and config history on vault"):
        history.open_tree(mirror, str(tmp_path / "wrong"), bytes(32), encryption.key_id(key), "vault")
    os.rename(os.path.join(mirror, "redis", "index.json"), os.path.join(mirror, "config", "index.json"))
    with pytest.raises(RecoveryError, match="config/index.json is damaged or was tampered with"):
        history.open_tree(mirror, str(tmp_path / "moved"), key, encryption.key_id(key), "vault")

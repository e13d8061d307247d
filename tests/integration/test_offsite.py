"""Sets to a vault and back over real SSH and rsync: the vault is a lab container running sshd (vault_host), with its
vault directory bind-mounted from a temp dir so the receiving side's checks run here on the same files."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess

import pytest
from conftest import file_contents, set_files
from faults.fault_helpers import copy_set, set_id_days_ago

from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.sets import encryption
from ansible_collections.christmas.recovery.plugins.module_utils.sets.backup_set import make_backup_set
from ansible_collections.christmas.recovery.plugins.module_utils.sets.manifest import (
    complete_set_ids,
    manifest_name,
    set_dir_name,
)
from ansible_collections.christmas.recovery.plugins.module_utils.sets.verify import verify_set
from ansible_collections.christmas.recovery.plugins.module_utils.transport import offsite

pytestmark = pytest.mark.xdist_group("podman")

MARKER = "offsite-marker-%s" % secrets.token_hex(8)


@pytest.fixture
def remote(vault, tmp_dir):
    """A fresh vault directory per test: the Remote to reach it, and its path on this machine."""
    name = "db-%s" % secrets.token_hex(4)
    path = os.path.join(vault["store"], name)
    yield (offsite.Remote(host="127.0.0.1", port=vault["port"], user="root", directory="/vault/%s" % name,
                          key_file=vault["key"], known_hosts=vault["known_hosts"], connect_timeout=10), path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def local_set(tmp_dir):
    """One complete config set holding MARKER, in its own backup dir."""
    config = os.path.join(tmp_dir, "config")
    os.makedirs(os.path.join(config, "strategies"))
    with open(os.path.join(config, "strategies", "secret.yml"), "w", encoding="utf-8") as handle:
        handle.write("api_key: %s\n" % MARKER)
    backup_dir = os.path.join(tmp_dir, "backups")
    report = make_backup_set(backup_dir, config_dir=config, progress=lambda _m: None)
    return backup_dir, report["set_id"]


def _modes(root):
    return {os.path.relpath(os.path.join(base, name), root): os.lstat(os.path.join(base, name)).st_mode & 0o777
            for base, dirs, files in os.walk(root) for name in dirs + files}


def _quiet(_message):
    return None


def test_a_sent_set_becomes_complete_on_the_vault_only_after_its_check(local_set, remote):
    backup_dir, set_id = local_set
    target, vault_dir = remote

    report = offsite.send_sets(backup_dir, target, 30, progress=_quiet)

    assert report["sent"] == [set_id] and report["bytes"] > 0
    assert complete_set_ids(vault_dir) == []  # arrived, not published
    incoming = os.path.join(vault_dir, offsite.INCOMING, set_id)
    assert file_contents(incoming) == set_files(backup_dir, set_id)

    received = offsite.receive_sets(vault_dir, retention_days=30, progress=_quiet)

    assert received["received"] == [set_id] and complete_set_ids(vault_dir) == [set_id]
    assert not os.path.exists(incoming)
    verify_set(manifest_name(set_id), vault_dir, deep=True)
    modes = _modes(vault_dir)
    assert {mode for name, mode in modes.items() if name.startswith(set_dir_name(set_id))} <= {0o600, 0o700}
    assert modes[manifest_name(set_id)] == 0o600
    again = offsite.send_sets(backup_dir, target, 30, present=complete_set_ids(vault_dir), progress=_quiet)
    assert again["sent"] == [] and not again["changed"]
    assert not offsite.receive_sets(vault_dir, retention_days=30, progress=_quiet)["changed"]


def test_check_mode_sends_and_publishes_nothing(local_set, remote):
    backup_dir, set_id = local_set
    target, vault_dir = remote

    assert offsite.send_sets(backup_dir, target, 30, check_mode=True, progress=_quiet)["sent"] == [set_id]
    assert not os.path.exists(vault_dir)
    offsite.send_sets(backup_dir, target, 30, progress=_quiet)
    assert offsite.receive_sets(vault_dir, 30, check_mode=True, progress=_quiet)["received"] == [set_id]
    assert complete_set_ids(vault_dir) == []


def test_a_damaged_arrival_is_discarded_and_never_published(local_set, remote):
    backup_dir, set_id = local_set
    target, vault_dir = remote
    offsite.send_sets(backup_dir, target, 30, progress=_quiet)
    arrived = os.path.join(vault_dir, offsite.INCOMING, set_id, set_dir_name(set_id), "config.tar")
    with open(arrived, "r+b") as handle:
        handle.seek(100)
        byte = handle.read(1)
        handle.seek(100)
        handle.write(bytes([byte[0] ^ 1]))

    with pytest.raises(RecoveryError,
                       match="set %s arrived damaged or unsigned and was discarded: .*SHA-256 mismatch" % set_id):
        offsite.receive_sets(vault_dir, retention_days=30, progress=_quiet)

    assert complete_set_ids(vault_dir) == []
    assert not os.path.lexists(os.path.join(vault_dir, set_dir_name(set_id)))
    assert not os.path.exists(os.path.join(vault_dir, offsite.INCOMING, set_id))
    offsite.send_sets(backup_dir, target, 30, progress=_quiet)  # the next run sends it again
    assert offsite.receive_sets(vault_dir, retention_days=30, progress=_quiet)["received"] == [set_id]


def test_the_vault_keeps_the_retention_and_expired_sets_are_not_sent(local_set, remote):
    backup_dir, set_id = local_set
    target, vault_dir = remote
    old, recent = set_id_days_ago(40), set_id_days_ago(10)
    copy_set(backup_dir, set_id, backup_dir, old)
    copy_set(backup_dir, set_id, backup_dir, recent)

    report = offsite.send_sets(backup_dir, target, 30, progress=_quiet)

    assert report["sent"] == [recent, set_id]  # oldest first; the 40-day-old set would be pruned on arrival
    offsite.receive_sets(vault_dir, retention_days=30, progress=_quiet)
    assert complete_set_ids(vault_dir) == [set_id, recent]
    copy_set(vault_dir, recent, vault_dir, old)  # a set the vault kept from before
    pruned = offsite.receive_sets(vault_dir, retention_days=30, progress=_quiet)
    assert pruned["pruned"] == [old] and complete_set_ids(vault_dir) == [set_id, recent]
    assert offsite.receive_sets(vault_dir, retention_days=0, progress=_quiet)["pruned"] == [recent]
    assert complete_set_ids(vault_dir) == [set_id]  # the newest always stays


def test_a_fetched_set_is_read_back_before_it_is_published_and_fetched_once(local_set, remote, tmp_dir):
    backup_dir, set_id = local_set
    target, vault_dir = remote
    offsite.send_sets(backup_dir, target, 30, progress=_quiet)
    offsite.receive_sets(vault_dir, retention_days=30, progress=_quiet)
    new_host = os.path.join(tmp_dir, "new-host")

    fetched = offsite.fetch_set(new_host, target, set_id, progress=_quiet)

    assert fetched["changed"] and complete_set_ids(new_host) == []
    received = offsite.receive_sets(new_host, decrypt=True, deep=True, progress=_quiet)
    assert received["received"] == [set_id] and received["decrypted"] == []
    assert set_files(new_host, set_id) == set_files(backup_dir, set_id)
    again = offsite.fetch_set(new_host, target, set_id, progress=_quiet)
    assert again == {"changed": False, "set_id": set_id, "already_present": True}
    with pytest.raises(RecoveryError, match="rsync of set 20200101_000000 from 127.0.0.1 failed .*No such file"):
        offsite.fetch_set(new_host, target, "20200101_000000", progress=_quiet)
    assert complete_set_ids(new_host) == [set_id]


def test_an_encrypted_set_leaves_as_ciphertext_and_comes_back_only_with_its_key(local_set, remote, tmp_dir):
    backup_dir, set_id = local_set
    target, vault_dir = remote
    key, wrong = os.urandom(32), os.urandom(32)

    sent = offsite.send_sets(backup_dir, target, 30, key=key, progress=_quiet)
    offsite.receive_sets(vault_dir, retention_days=30, progress=_quiet)

    assert sent["encrypted"] and sent["key_id"] == encryption.key_id(key)
    assert not os.path.exists(os.path.join(backup_dir, offsite.STAGING, set_dir_name(set_id)))
    assert all(MARKER.encode() not in data for data in file_contents(vault_dir).values())
    report, _manifest = verify_set(manifest_name(set_id), vault_dir)  # checksums need no key
    assert report["ok"]
    assert offsite.list_sets(vault_dir)[0]["key_id"] == encryption.key_id(key)
    new_host = os.path.join(tmp_dir, "new-host")
    for given, message in ((None, "set %s is encrypted \\(key %s\\): bringing it back needs the encryption key" % (
            set_id, encryption.key_id(key))), (wrong, "does not match set %s" % set_id)):
        offsite.fetch_set(new_host, target, set_id, progress=_quiet)
        with pytest.raises(RecoveryError, match=message):
            offsite.receive_sets(new_host, decrypt=True, key=given, deep=True, progress=_quiet)
        assert complete_set_ids(new_host) == [] and os.listdir(os.path.join(new_host, offsite.INCOMING)) == []

    offsite.fetch_set(new_host, target, set_id, progress=_quiet)
    received = offsite.receive_sets(new_host, decrypt=True, key=key, deep=True, progress=_quiet)

    assert received["decrypted"] == [set_id]
    assert set_files(new_host, set_id) == set_files(backup_dir, set_id)


def test_a_vault_with_another_host_key_is_refused(local_set, remote, vault, tmp_dir):
    backup_dir, _set_id = local_set
    target, vault_dir = remote
    other = os.path.join(tmp_dir, "other_key")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", other], check=True)
    known_hosts = os.path.join(tmp_dir, "known_hosts")
    with open(other + ".pub", encoding="utf-8") as handle:
        key_type, key_text = handle.read().split()[:2]
    with open(known_hosts, "w", encoding="utf-8") as handle:
        handle.write("[127.0.0.1]:%d %s %s\n" % (vault["port"], key_type, key_text))

    with pytest.raises(RecoveryError, match="rsync of set .* failed \\(exit \\d+\\): Host key verification failed"):
        offsite.send_sets(backup_dir, target._replace(known_hosts=known_hosts), 30, progress=_quiet)

    assert not os.path.exists(vault_dir)


def test_a_killed_runs_encrypted_copy_is_reused_for_its_set_and_others_are_removed(local_set, remote):
    backup_dir, set_id = local_set
    target, vault_dir = remote
    key = os.urandom(32)
    staging = os.path.join(backup_dir, offsite.STAGING)
    staged = encryption.encrypt_set(backup_dir, set_id, staging, key)  # what a run killed during its rsync leaves
    stale = os.path.join(staging, set_dir_name("20200101_000000"))
    os.makedirs(stale)
    before = set_files(staging, set_id)

    offsite.send_sets(backup_dir, target, 30, key=key, progress=_quiet)
    offsite.receive_sets(vault_dir, retention_days=30, progress=_quiet)

    assert staged["changed"] and set_files(vault_dir, set_id) == before  # the same ciphertext: reused, not redone
    assert os.listdir(staging) == []

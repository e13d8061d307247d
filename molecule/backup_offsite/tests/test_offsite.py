"""After offsite.yml: the vault holds the platform's newest set byte for byte, privately, published complete; the
older set it had was pruned by its retention (0 days: newest only); the platform kept both."""

from __future__ import annotations

import pytest

testinfra_hosts = ["vault"]

BACKUP_DIR = "/var/backups/christmas"
VAULT_DIR = "/srv/christmas-vault/platform"


@pytest.fixture(scope="module")
def platform(lab_host):
    return lab_host("platform")


def _set_ids(host, directory):
    names = host.run("ls %s", directory).stdout.split()
    return sorted(name[len("manifest_"):-len(".json")] for name in names if name.startswith("manifest_"))


def test_the_vault_holds_exactly_the_newest_set_identical_to_the_platforms(host, platform, set_files):
    local = _set_ids(platform, BACKUP_DIR)
    assert len(local) == 2, local
    assert _set_ids(host, VAULT_DIR) == local[-1:]
    newest = {path: digest for path, digest in set_files(platform, BACKUP_DIR).items() if local[-1] in path}
    assert newest and set_files(host, VAULT_DIR) == newest


def test_nothing_is_left_half_arrived_or_staged(host, platform):
    assert not host.file(VAULT_DIR + "/.incoming").exists
    assert platform.run("find %s/.offsite -mindepth 1", BACKUP_DIR).stdout.strip() == ""


def test_the_vault_copy_is_private_and_owned_by_the_vault_account(host):
    entries = host.check_output("find %s ! -name .christmas-recovery.lock -printf '%%u %%m %%y %%p\\n'",
                                VAULT_DIR).splitlines()
    wrong = [line for line in entries if not (line.startswith("christmas-vault 600 f ")
                                               or line.startswith("christmas-vault 700 d "))]
    assert not wrong


def test_the_platform_logs_in_with_its_own_restricted_key_and_checks_the_vault_host_key(host, platform):
    public_key = platform.file("/root/.ssh/christmas_vault_ed25519.pub").content_string.split()[:2]
    authorized = host.file("/home/christmas-vault/.ssh/authorized_keys")
    assert authorized.mode == 0o600 and authorized.user == "christmas-vault"
    assert authorized.content_string.split()[:3] == ["restrict", *public_key]
    host_key = host.file("/etc/ssh/ssh_host_ed25519_key.pub").content_string.split()[:2]
    known = platform.file("/root/.ssh/christmas_vault_known_hosts").content_string.split()
    assert known[1:3] == host_key and platform.file("/root/.ssh/christmas_vault_ed25519").mode == 0o600

"""With encryption on: the vault holds only ciphertext that checksums verify without the key; the restore host got
the set back byte for byte (its manifest identical to the platform's) and restored exactly what the platform held;
another key was refused before anything was copied."""

from __future__ import annotations

import json
import os

import pytest

testinfra_hosts = ["restorehost"]

BACKUP_DIR = "/var/backups/christmas"
VAULT_DIR = "/srv/christmas-vault/platform"


@pytest.fixture(scope="module")
def vault(lab_host):
    return lab_host("vault")


@pytest.fixture(scope="module")
def platform(lab_host):
    return lab_host("platform")


def test_the_vault_holds_ciphertext_only(vault, hostvars):
    manifest_name = vault.check_output("ls %s | grep '^manifest_'", VAULT_DIR)
    manifest = json.loads(vault.file("%s/%s" % (VAULT_DIR, manifest_name)).content_string)
    assert manifest["encryption"]["scheme"] == "aes-256-gcm-stream-v1"
    assert len(manifest["encryption"]["key_id"]) == 16
    found = vault.run("grep -r -l -F %s %s", hostvars["lab_marker"], VAULT_DIR)
    assert found.rc == 1 and found.stdout == ""  # no file holds the marker written into the DB, Redis and config


def test_the_vault_copy_checks_out_without_the_key(vault, platform, set_files):
    local, remote = set_files(platform, BACKUP_DIR), set_files(vault, VAULT_DIR)
    assert sorted(local) == sorted(remote)  # the same files, other bytes
    assert not set(local.items()) & set(remote.items())


def test_the_fetched_set_is_the_platforms_set_byte_for_byte(host, platform, set_files):
    assert set_files(host, BACKUP_DIR) == set_files(platform, BACKUP_DIR)


def test_the_restored_servers_hold_what_the_platform_held(host, hostvars):
    with open(os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "source_state.json"), encoding="utf-8") as f:
        source = json.load(f)
    state = host.run("PGPASSWORD=%s REDISCLI_AUTH=%s lab-platform-state %s", hostvars["christmas_db_password"],
                     hostvars["christmas_redis_password"], hostvars["christmas_config_dir"])
    assert state.rc == 0, state.stderr
    assert json.loads(state.stdout) == source


def test_another_key_left_nothing_behind(host):
    assert not host.file("/var/backups/wrong-key").exists

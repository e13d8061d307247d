"""Signed sets: a set someone without the platform host's key changed is refused by every consumer, naming the set;
allow_unsigned uses it with a loud warning; the key is made 0600 once; a host with the public key only can check
but never sign; the manifest is parsed strictly."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys

import pytest
from conftest import ROOT, tree_state
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.db.connection import PgTarget
from ansible_collections.christmas.recovery.plugins.module_utils.sets import encryption, manifest, signing
from ansible_collections.christmas.recovery.plugins.module_utils.sets.backup_set import make_backup_set
from ansible_collections.christmas.recovery.plugins.module_utils.sets.restore_set import restore_set
from ansible_collections.christmas.recovery.plugins.module_utils.sets.verify import verify_set
from ansible_collections.christmas.recovery.plugins.module_utils.transport.offsite import INCOMING, receive_sets


def _restore_cli(manifest_path, platform, config, *extra):
    argv = [sys.executable, os.path.join(ROOT, "scripts", "restore.py"), manifest_path, "--db-host", "127.0.0.1",
            "--db-port", str(platform.cluster.port), "--db-admin-user", "postgres", "--skip-redis",
            "--config-dir", config, "--force", *extra]
    env = dict(os.environ, CHRISTMAS_DB_ADMIN_PASSWORD=platform.cluster.password)
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300, check=False)


def _forge_globals(manifest_path):
    """What someone who can write the backup directory but holds no key can do: change db_globals.json, fix its
    size and SHA-256 in the manifest and seal the manifest again."""
    data = manifest.load(manifest_path)
    root = os.path.dirname(manifest_path)
    entry = next(a for a in data["artifacts"] if a["kind"] == "pg_globals")
    path = os.path.join(root, entry["path"])
    with open(path, encoding="utf-8") as handle:
        text = json.dumps(json.load(handle), indent=4)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    entry.update(size=len(text.encode()), sha256=hashlib.sha256(text.encode()).hexdigest())
    with open(manifest_path, "w", encoding="utf-8") as handle:
        json.dump(manifest.seal(data), handle)
    return data["set_id"]


@pytest.fixture
def forged(platform, config_dir, tmp_dir):
    backup_dir = os.path.join(tmp_dir, "backups")
    report = make_backup_set(backup_dir, db=_target(platform), config_dir=config_dir, progress=lambda _m: None)
    set_id = _forge_globals(report["manifest"])
    return backup_dir, report["manifest"], set_id


def _target(platform):
    return PgTarget(host="127.0.0.1", port=platform.cluster.port, dbname="christmas", user="christmas",
                    password=platform.password, admin_user="postgres", admin_password=platform.cluster.password)


def test_forged_set_is_refused_by_restore_verify_and_receive_and_nothing_changes(forged, platform, config_dir,
                                                                                 tmp_dir):
    backup_dir, manifest_path, set_id = forged
    platform.sql("UPDATE orders SET qty = 0")
    before, config_before = platform.snapshot(), tree_state(config_dir)
    proc = _restore_cli(manifest_path, platform, config_dir)
    assert proc.returncode == 1 and proc.stdout == ""
    last = proc.stderr.splitlines()[-1]
    assert "set %s" % set_id in last and "does not match key" in last and "christmas_allow_unsigned" in last
    assert platform.snapshot() == before and tree_state(config_dir) == config_before
    with pytest.raises(RecoveryError, match="set %s has a signature that does not match" % set_id):
        verify_set(manifest_path)
    vault = os.path.join(tmp_dir, "vault")
    arrival = os.path.join(vault, INCOMING, set_id)
    os.makedirs(arrival)
    shutil.copy2(manifest_path, arrival)
    shutil.copytree(os.path.join(backup_dir, manifest.set_dir_name(set_id)),
                    os.path.join(arrival, manifest.set_dir_name(set_id)))
    with pytest.raises(RecoveryError, match="set %s arrived damaged or unsigned" % set_id):
        receive_sets(vault, progress=lambda _m: None)
    assert manifest.complete_set_ids(vault) == []


def test_allow_unsigned_restores_the_set_and_says_so_loudly(forged, platform, config_dir):
    _backup_dir, manifest_path, set_id = forged
    expected = platform.snapshot()
    platform.sql("UPDATE orders SET qty = 0")
    proc = _restore_cli(manifest_path, platform, config_dir, "--allow-unsigned")
    assert proc.returncode == 0, proc.stderr
    assert "UNSIGNED SET USED: set %s" % set_id in proc.stderr
    assert json.loads(proc.stdout)["unsigned_allowed"] is True
    assert platform.snapshot() == expected


def test_unsigned_old_set_is_refused_naming_it(forged):
    _backup_dir, manifest_path, set_id = forged
    data = manifest.load(manifest_path)
    del data["signature"]
    with open(manifest_path, "w", encoding="utf-8") as handle:
        json.dump(manifest.seal(data), handle)
    with pytest.raises(RecoveryError, match=r"set %s is not signed \(manifest_%s.json has no signature\)" % (
            set_id, set_id)):
        verify_set(manifest_path)
    assert verify_set(manifest_path, trust=signing.Trust(allow_unsigned=True))[0]["signature"]["unsigned_allowed"]


def test_key_is_made_0600_by_the_first_backup_and_reused(config_dir, tmp_dir):
    key_file = os.path.join(tmp_dir, "keys", "signing.key")
    first = make_backup_set(os.path.join(tmp_dir, "b"), config_dir=config_dir, signing_key_file=key_file,
                            progress=lambda _m: None)
    assert stat.S_IMODE(os.lstat(key_file).st_mode) == 0o600
    assert stat.S_IMODE(os.lstat(os.path.dirname(key_file)).st_mode) == 0o700
    with open(key_file, "rb") as handle:
        pem = handle.read()
    second = make_backup_set(os.path.join(tmp_dir, "b2"), config_dir=config_dir, signing_key_file=key_file,
                             progress=lambda _m: None)
    with open(key_file, "rb") as handle:
        assert handle.read() == pem
    assert first["signing"]["key_created"] and not second["signing"]["key_created"]
    assert manifest.load(second["manifest"])["signature"]["key_id"] == first["signing"]["key_id"]
    # Signed by another key than the tests' own: refused, naming both keys.
    with pytest.raises(RecoveryError, match="is signed by another key"):
        verify_set(second["manifest"])
    os.chmod(key_file, 0o644)
    with pytest.raises(RecoveryError, match="has mode 0644: it must be 0600"):
        make_backup_set(os.path.join(tmp_dir, "b3"), config_dir=config_dir, signing_key_file=key_file)
    assert not os.path.exists(os.path.join(tmp_dir, "b3"))


def test_a_host_with_the_public_key_only_verifies_but_cannot_sign(config_dir, tmp_dir, signing_key_file):
    report = make_backup_set(os.path.join(tmp_dir, "b"), config_dir=config_dir, progress=lambda _m: None)
    public_file = os.path.join(tmp_dir, "signing.pub")
    with open(public_file, "w", encoding="utf-8") as handle:
        handle.write(signing.public_key_pem(signing.load_private_key(signing_key_file).public_key()))
    os.chmod(public_file, 0o600)
    trust = signing.Trust(os.path.join(tmp_dir, "no-such.key"), public_file)
    assert verify_set(report["manifest"], trust=trust)[0]["signature"]["signed"] is True
    with pytest.raises(RecoveryError, match="does not hold an Ed25519 private key"):
        make_backup_set(os.path.join(tmp_dir, "b2"), config_dir=config_dir, signing_key_file=public_file)
    with pytest.raises(RecoveryError, match="does not hold an Ed25519 private key"):
        encryption.encrypt_set(os.path.join(tmp_dir, "b"), report["set_id"], os.path.join(tmp_dir, "enc"),
                               b"k" * 32, signer=signing.Signer(public_file), trust=trust)
    assert not os.path.exists(os.path.join(tmp_dir, "enc", manifest.manifest_name(report["set_id"])))


def test_a_vault_given_the_public_key_as_a_value_checks_with_it_and_refuses_another(config_dir, tmp_dir,
                                                                                 signing_key_file):
    """What the offsite copy does: the sending host hands the vault the key it checked the set with."""
    report = make_backup_set(os.path.join(tmp_dir, "b"), config_dir=config_dir, progress=lambda _m: None)
    mine = signing.public_key_pem(signing.load_private_key(signing_key_file).public_key())
    other = signing.public_key_pem(Ed25519PrivateKey.generate().public_key())
    no_key = os.path.join(tmp_dir, "no-such.key")
    assert verify_set(report["manifest"], trust=signing.Trust(no_key, public_key=mine))[0]["signature"]["signed"]
    with pytest.raises(RecoveryError, match="is signed by another key"):
        verify_set(report["manifest"], trust=signing.Trust(no_key, public_key=other))
    with pytest.raises(RecoveryError, match="signing_public_key does not hold an Ed25519 public key"):
        verify_set(report["manifest"], trust=signing.Trust(no_key, public_key="not a key"))


def test_restore_never_uses_the_manifests_source_dir(config_dir, tmp_dir):
    report = make_backup_set(os.path.join(tmp_dir, "b"), config_dir=config_dir, progress=lambda _m: None)
    before = tree_state(config_dir)
    with pytest.raises(RecoveryError, match="restoring config needs config_dir"):
        restore_set(report["manifest"], components=("config",), force=True, progress=lambda _m: None)
    assert tree_state(config_dir) == before


@pytest.mark.parametrize(("edit", "problem"), [
    (lambda raw: raw.replace(b'"host":', b'"host": "evil", "host":', 1), "duplicate key 'host'"),
    (lambda raw: raw.replace(b'"host":', b'"shell": "x", "host":', 1), "unknown field shell"),
    (lambda raw: raw.replace(b'"root_mode":', b'"run_as": 0, "root_mode":', 1), "unknown field config.run_as"),
    (lambda raw: raw.replace(b'"size": ', b'"size": -', 1), "artifacts[0].size is not a size"),
])
def test_strict_manifest_refuses_naming_the_field(config_dir, tmp_dir, edit, problem):
    report = make_backup_set(os.path.join(tmp_dir, "b"), config_dir=config_dir, progress=lambda _m: None)
    with open(report["manifest"], "rb") as handle:
        raw = handle.read()
    # A duplicate key stops the parser itself; the other edits are sealed again, as a forger would.
    raw = edit(raw) if "duplicate" in problem else json.dumps(manifest.seal(json.loads(edit(raw)))).encode()
    with open(report["manifest"], "wb") as handle:
        handle.write(raw)
    with pytest.raises(RecoveryError, match="is invalid|not valid JSON") as err:
        verify_set(report["manifest"])
    assert problem in str(err.value)


def test_sizes_are_checked_against_the_files_before_the_encryptions_disk_room_check(config_dir, tmp_dir):
    report = make_backup_set(os.path.join(tmp_dir, "b"), config_dir=config_dir, progress=lambda _m: None)
    data = manifest.load(report["manifest"])
    data["artifacts"][0]["size"] = 2**52  # would ask for a petabyte of room
    with open(report["manifest"], "w", encoding="utf-8") as handle:
        json.dump(manifest.seal(signing.Signer().sign(data)), handle)
    with pytest.raises(RecoveryError, match="its manifest says 4503599627370496 .truncated or altered"):
        encryption.encrypt_set(os.path.join(tmp_dir, "b"), report["set_id"], os.path.join(tmp_dir, "enc"), b"k" * 32)

"""Encrypted copies of a real set made from real servers: nothing readable without the key, checksums verified
without it, read back deeply with it, decrypted into the original set that restores, refused by the restore itself."""

from __future__ import annotations

import base64
import json
import os
import secrets
from types import SimpleNamespace

import pytest
from conftest import redis_state, seed_redis, tree_state
from sandbox import PG_BIN

from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.core.locking import LOCK_NAME
from ansible_collections.christmas.recovery.plugins.module_utils.db.connection import PgTarget
from ansible_collections.christmas.recovery.plugins.module_utils.redis.redis_keys import RedisTarget
from ansible_collections.christmas.recovery.plugins.module_utils.sets.backup_set import make_backup_set
from ansible_collections.christmas.recovery.plugins.module_utils.sets.encryption import decrypt_set, encrypt_set, key_id
from ansible_collections.christmas.recovery.plugins.module_utils.sets.restore_set import restore_set
from ansible_collections.christmas.recovery.plugins.module_utils.sets.verify import verify_set

KEY = secrets.token_bytes(32)
KEY_TEXT = base64.b64encode(KEY).decode("ascii")
WRONG_KEY = secrets.token_bytes(32)
ROW_MARKER = "row-marker-4c1e9a"
REDIS_MARKER = "redis-marker-77d2"  # under 20 bytes: Redis stores it uncompressed in the snapshot
CONFIG_MARKER = "config-marker-b05f"


def _entries(directory):
    """What a directory holds besides the lock file readers and backups share (it stays, as a backup's does)."""
    return sorted(name for name in os.listdir(directory) if name != LOCK_NAME)


def _quiet(_message):
    pass


def _read(path):
    with open(path, "rb") as handle:
        return handle.read()


def _all_bytes(root):
    """Every file below ``root`` concatenated: where a marker must (or must not) be found."""
    return b"".join(_read(os.path.join(base, name)) for base, _dirs, files in os.walk(root) for name in sorted(files))


def _one_line(err):
    message = str(err.value)
    assert message and "\n" not in message, repr(message)
    return message


@pytest.fixture
def env(platform, make_redis, config_dir, tmp_dir):
    """A platform holding a known row, Redis value and config line; a plaintext set of it (the dump uncompressed, so
    the markers are there to find) and its encrypted copy in a vault directory."""
    platform.sql("INSERT INTO orders (symbol, side, qty, note) VALUES ('SYM1', 'buy', 1, '%s')" % ROW_MARKER)
    server = make_redis(password="redis-encryption-pass")
    seed_redis(server)
    server.client(0).set("marker", REDIS_MARKER)
    with open(os.path.join(config_dir, "app.yml"), "a", encoding="utf-8") as handle:
        handle.write("marker: %s\n" % CONFIG_MARKER)
    db = PgTarget(host="127.0.0.1", port=platform.cluster.port, password=platform.password, admin_user="postgres",
                  admin_password=platform.cluster.password, bin_dir=PG_BIN)
    redis_target = RedisTarget("127.0.0.1", server.port, server.password)
    backup_dir, vault_dir = os.path.join(tmp_dir, "backups"), os.path.join(tmp_dir, "vault")
    backup = make_backup_set(backup_dir, db=db, redis_target=redis_target, config_dir=config_dir, compress_level=0,
                             progress=_quiet)
    encrypted = encrypt_set(backup_dir, backup["set_id"], vault_dir, KEY)
    return SimpleNamespace(platform=platform, redis=server, config=config_dir, db=db, redis_target=redis_target,
                           backup_dir=backup_dir, vault_dir=vault_dir, set_id=backup["set_id"],
                           manifest=backup["manifest"], encrypted=encrypted["manifest"], tmp_dir=tmp_dir)


def _state(env):
    return {"db": env.platform.snapshot(), "redis": redis_state(env.redis), "config": tree_state(env.config)}


def _damage(env):
    env.platform.sql("DELETE FROM orders WHERE note = '%s'" % ROW_MARKER)
    env.redis.client(0).delete("marker")
    with open(os.path.join(env.config, "app.yml"), "w", encoding="utf-8") as handle:
        handle.write("broken: [")


def test_an_encrypted_set_holds_no_row_key_value_or_config_line_in_any_byte(env):
    plaintext = _all_bytes(env.backup_dir)
    ciphertext = _all_bytes(env.vault_dir)
    for marker in (ROW_MARKER, REDIS_MARKER, CONFIG_MARKER):
        assert marker.encode() in plaintext, marker  # else the test below proves nothing
        assert marker.encode() not in ciphertext, marker
    assert KEY not in ciphertext and KEY_TEXT.encode() not in ciphertext


def test_an_encrypted_set_verifies_by_checksum_without_the_key_and_deeply_only_with_it(env):
    vault_before = _entries(env.vault_dir)
    plain, _manifest = verify_set(env.manifest)
    assert plain["encrypted"] is False and "key_id" not in plain
    checked, _manifest = verify_set(env.encrypted)
    assert checked["ok"] and checked["encrypted"] is True and checked["key_id"] == key_id(KEY)
    with pytest.raises(RecoveryError) as err:
        verify_set(env.encrypted, deep=True, pg_target=env.db)
    assert _one_line(err) == "set %s is encrypted (key %s): deep verification needs the encryption key" % (
        env.set_id, key_id(KEY))
    deep, _manifest = verify_set(env.encrypted, deep=True, pg_target=env.db, encryption_key=KEY)
    assert deep["ok"] and deep["deep"] is True and deep["encrypted"] is True
    with pytest.raises(RecoveryError) as err:
        verify_set(env.encrypted, deep=True, pg_target=env.db, encryption_key=WRONG_KEY)
    assert _one_line(err) == "encryption key %s does not match set %s (encrypted with key %s)" % (
        key_id(WRONG_KEY), env.set_id, key_id(KEY))
    assert _entries(env.vault_dir) == vault_before  # no decrypted copy left behind


def test_a_decrypted_set_is_the_original_and_restores_the_platform(env):
    before = _state(env)
    back_dir = os.path.join(env.tmp_dir, "fetched")
    decrypted = decrypt_set(env.vault_dir, env.set_id, back_dir, KEY)
    assert _read(decrypted["manifest"]) == _read(env.manifest)
    verify_set(decrypted["manifest"], deep=True, pg_target=env.db)
    _damage(env)
    assert _state(env) != before
    restore_set(decrypted["manifest"], db=env.db, redis_target=env.redis_target, config_dir=env.config,
                progress=_quiet)
    assert _state(env) == before


def test_restore_refuses_an_encrypted_set_before_anything_happens(env):
    _damage(env)
    damaged = _state(env)
    vault_before = _entries(env.vault_dir)
    for check_mode in (True, False):
        with pytest.raises(RecoveryError) as err:
            restore_set(env.encrypted, db=env.db, redis_target=env.redis_target, config_dir=env.config,
                        check_mode=check_mode, progress=_quiet)
        assert _one_line(err) == "set %s is encrypted: bring it back with fetch_backup.yml and its key, which " \
            "decrypts it" % env.set_id
    assert _state(env) == damaged
    assert _entries(env.vault_dir) == vault_before  # not even a restore journal


def test_a_corrupted_encrypted_artifact_fails_checksums_and_decryption_and_nothing_is_left(env):
    artifact = "set_%s/redis.rdb" % env.set_id
    path = os.path.join(env.vault_dir, artifact)
    data = bytearray(_read(path))
    data[len(data) // 2] ^= 0x04
    with open(path, "wb") as handle:
        handle.write(data)
    with pytest.raises(RecoveryError) as err:
        verify_set(env.encrypted)
    assert _one_line(err) == "backup set %s failed verification: %s: SHA-256 mismatch (corrupted)" % (
        env.set_id, artifact)
    back_dir = os.path.join(env.tmp_dir, "fetched")
    with pytest.raises(RecoveryError) as err:
        decrypt_set(env.vault_dir, env.set_id, back_dir, KEY)
    assert _one_line(err).startswith("encrypted file %s is damaged or was tampered with: chunk " % path)
    assert os.listdir(back_dir) == []


def test_manifest_verify_reads_an_encrypted_set_deeply_with_its_key_and_never_shows_the_key(run_playbook, env):
    key_file = os.path.join(env.tmp_dir, "backup.key")
    with open(key_file, "w", encoding="utf-8") as handle:
        handle.write(KEY_TEXT + "\n")
    result_path = os.path.join(env.tmp_dir, "verify-results.json")
    common = {"manifest": env.encrypted, "pg_bin_dir": PG_BIN}
    cases = {
        "checksums": common,
        "deep_with_key": dict(common, deep=True, encryption_key=KEY_TEXT),
        "deep_with_key_file": dict(common, deep=True, encryption_key_file=key_file),
        "deep_without_key": dict(common, deep=True),
        "deep_with_wrong_key": dict(common, deep=True, encryption_key=base64.b64encode(WRONG_KEY).decode()),
        "both_keys": dict(common, encryption_key=KEY_TEXT, encryption_key_file=key_file),
    }
    tasks = [{"name": "Verify: " + name, "christmas.recovery.manifest_verify": args, "register": name,
              "ignore_errors": True} for name, args in cases.items()]
    tasks.append({"name": "Keep the results", "check_mode": False, "ansible.builtin.copy": {
        "dest": result_path, "mode": "0600",
        "content": "{{ {%s} | to_json }}" % ", ".join("'%s': %s" % (name, name) for name in cases)}})
    playbook = os.path.join(env.tmp_dir, "verify-encrypted")
    with open(playbook + ".yml", "w", encoding="utf-8") as handle:
        json.dump([{"name": "Verify an encrypted set", "hosts": "christmas", "gather_facts": False,
                    "tasks": tasks}], handle)
    run = run_playbook(playbook, {}, verbosity=3)
    results = json.loads(_read(result_path))

    assert results["checksums"]["ok"] is True and results["checksums"]["encrypted"] is True
    for name in ("deep_with_key", "deep_with_key_file"):
        assert results[name]["ok"] is True and results[name]["deep"] is True, results[name]
        assert results[name]["key_id"] == key_id(KEY) and results[name]["changed"] is False
    assert results["deep_without_key"]["msg"] == "set %s is encrypted (key %s): deep verification needs the " \
        "encryption key" % (env.set_id, key_id(KEY))
    assert results["deep_with_wrong_key"]["msg"] == "encryption key %s does not match set %s (encrypted with key " \
        "%s)" % (key_id(WRONG_KEY), env.set_id, key_id(KEY))
    assert results["both_keys"]["msg"] == "parameters are mutually exclusive: encryption_key|encryption_key_file"
    assert "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER" in run.output  # -vvv showed the option, masked
    assert KEY_TEXT not in run.output and KEY_TEXT not in json.dumps(results)
    assert _entries(env.vault_dir) == ["manifest_%s.json" % env.set_id, "set_%s" % env.set_id]

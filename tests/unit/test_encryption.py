"""Encrypted sets on real files: the round trip, every kind of tampering refused in one line naming the file, key
loading that never shows the key, and the manifest's encryption section."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import stat

import pytest
from conftest import seal_signed

from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.core.fsutil import write_json_atomic
from ansible_collections.christmas.recovery.plugins.module_utils.sets.encryption import (
    CHUNK_BYTES,
    HEADER_BYTES,
    SCHEME,
    TAG_BYTES,
    decrypt_set,
    encrypt_set,
    is_encrypted,
    key_id,
    load_key,
)
from ansible_collections.christmas.recovery.plugins.module_utils.sets.manifest import (
    FORMAT,
    FORMAT_VERSION,
    check_artifacts,
    check_schema,
    load,
)
from ansible_collections.christmas.recovery.plugins.module_utils.sets.retention import remove_incomplete_leftovers
from ansible_collections.christmas.recovery.plugins.module_utils.sets.verify import verify_set

SET_ID = "20261124_030000"
KEY = bytes(range(32))
KEY_TEXT = base64.b64encode(KEY).decode("ascii")
OTHER_KEY = bytes(range(1, 33))
MULTI_CHUNK = "set_%s/redis.rdb" % SET_ID
# Every size class a stream must get right: empty, one short chunk, exactly one chunk, several and a short last one.
CONTENTS = {
    "db.dump/toc.dat": b"",
    "db.dump/3456.dat.gz": b"marker-row-in-the-dump " * 7,
    "db_globals.json": os.urandom(CHUNK_BYTES),
    "redis.rdb": os.urandom(2 * CHUNK_BYTES + 12345),
    "config.tar": b"API_KEY=marker-config-line\n" * 40,
}
KINDS = {"db.dump/toc.dat": ("db", "pg_dump_directory"), "db.dump/3456.dat.gz": ("db", "pg_dump_directory"),
         "db_globals.json": ("db", "pg_globals"), "redis.rdb": ("redis", "redis_rdb"),
         "config.tar": ("config", "config_tar")}


def make_plain_set(backup_dir, contents=None):
    """A complete plaintext set on disk, laid out and sealed as make_backup_set leaves one; returns the manifest."""
    contents = contents or CONTENTS
    set_root = os.path.join(backup_dir, "set_" + SET_ID)
    artifacts = []
    for relative, data in sorted(contents.items()):
        path = os.path.join(set_root, relative)
        os.makedirs(os.path.dirname(path), 0o700, exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(data)
        os.chmod(path, 0o600)
        component, kind = KINDS[relative]
        artifacts.append({"path": "set_%s/%s" % (SET_ID, relative), "size": len(data),
                          "sha256": hashlib.sha256(data).hexdigest(), "component": component, "kind": kind})
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "set_id": SET_ID,
        "started_at": "2026-11-24T03:00:00Z", "finished_at": "2026-11-24T03:00:09Z", "host": "platform.example",
        "components": ["db", "redis", "config"], "artifacts": artifacts,
        "tools": {"christmas.recovery": "0.1.0", "python": "3.11.2", "platform": "Linux"},
        "db": {"server_version": "15.8", "server_version_num": 150008, "pg_dump_major": 15, "size_bytes": 8388608,
               "row_counts": {"public.orders": 700}, "extensions": {}, "roles": ["christmas"]},
        "redis": {"version": "7.0.15", "rdb_version": 10},
        "config": {"source_dir": "/srv/christmas/config", "root_mode": "755", "root_owner": [0, 0],
                   "tree_sha256": "ab" * 32},
    }
    path = os.path.join(backup_dir, "manifest_%s.json" % SET_ID)
    write_json_atomic(path, seal_signed(manifest))
    return path


def one_line(err):
    message = str(err.value)
    assert message and "\n" not in message, repr(message)
    return message


def read(path):
    with open(path, "rb") as handle:
        return handle.read()


def write(path, data):
    with open(path, "wb") as handle:
        handle.write(data)


def entries(root):
    """Every name below ``root``, relative, with its permission bits."""
    found = {}
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(base, name)
            found[os.path.relpath(path, root)] = stat.S_IMODE(os.lstat(path).st_mode)
    return found


@pytest.fixture
def sets(tmp_dir):
    """A plaintext set, its encrypted copy, and where a decrypted copy goes."""
    plain_dir, vault_dir, back_dir = (os.path.join(tmp_dir, name) for name in ("plain", "vault", "back"))
    os.mkdir(plain_dir, 0o700)
    make_plain_set(plain_dir)
    report = encrypt_set(plain_dir, SET_ID, vault_dir, KEY)
    return plain_dir, vault_dir, back_dir, report


# ---------------------------------------------------------------- round trip


def test_round_trip_gives_back_every_file_and_the_original_manifest_byte_for_byte(sets):
    plain_dir, vault_dir, back_dir, report = sets
    assert report["changed"] is True and report["key_id"] == key_id(KEY) and report["artifact_count"] == 5
    decrypted = decrypt_set(vault_dir, SET_ID, back_dir, KEY, jobs=3)
    assert decrypted["changed"] is True
    assert decrypted["total_bytes"] == sum(len(data) for data in CONTENTS.values())
    assert entries(back_dir) == entries(plain_dir)
    for name in entries(plain_dir):
        if not os.path.isdir(os.path.join(plain_dir, name)):
            assert read(os.path.join(back_dir, name)) == read(os.path.join(plain_dir, name)), name
    verify_set(decrypted["manifest"])


def test_encrypted_set_keeps_layout_and_metadata_and_checksums_its_encrypted_bytes(sets):
    plain_dir, vault_dir, _back_dir, report = sets
    plain, encrypted = load(os.path.join(plain_dir, "manifest_%s.json" % SET_ID)), load(report["manifest"])
    assert is_encrypted(encrypted) and not is_encrypted(plain)
    for field in ("format", "format_version", "set_id", "components", "started_at", "finished_at", "host", "tools",
                  "db", "redis", "config"):
        assert encrypted[field] == plain[field], field
    assert [(a["path"], a["component"], a["kind"]) for a in encrypted["artifacts"]] == \
        [(a["path"], a["component"], a["kind"]) for a in plain["artifacts"]]
    for sealed, original in zip(encrypted["artifacts"], plain["artifacts"], strict=True):
        chunks = max(1, -(-original["size"] // CHUNK_BYTES))
        assert sealed["size"] == HEADER_BYTES + original["size"] + chunks * TAG_BYTES, sealed["path"]
    assert encrypted["encryption"]["scheme"] == SCHEME and encrypted["encryption"]["chunk_bytes"] == CHUNK_BYTES
    assert check_artifacts(vault_dir, encrypted) == {}
    assert entries(vault_dir) == entries(plain_dir)  # same names, files 0600, directories 0700
    ciphertext = b"".join(read(os.path.join(vault_dir, a["path"])) for a in encrypted["artifacts"])
    ciphertext += read(report["manifest"])
    for marker in (b"marker-row-in-the-dump", b"marker-config-line", CONTENTS["redis.rdb"][:32], KEY,
                   KEY_TEXT.encode()):
        assert marker not in ciphertext


def test_encrypting_or_decrypting_again_changes_nothing_and_another_key_is_refused(sets):
    plain_dir, vault_dir, back_dir, report = sets
    before = {name: read(os.path.join(vault_dir, name)) for name in entries(vault_dir)
              if not os.path.isdir(os.path.join(vault_dir, name))}
    again = encrypt_set(plain_dir, SET_ID, vault_dir, KEY)
    assert again == dict(report, changed=False)
    assert {name: read(os.path.join(vault_dir, name)) for name in before} == before
    with pytest.raises(RecoveryError) as err:
        encrypt_set(plain_dir, SET_ID, vault_dir, OTHER_KEY)
    assert one_line(err) == "%s already holds set %s, encrypted with key %s; remove it to encrypt the set again" % (
        vault_dir, SET_ID, key_id(KEY))
    assert decrypt_set(vault_dir, SET_ID, back_dir, KEY)["changed"] is True
    assert decrypt_set(vault_dir, SET_ID, back_dir, KEY)["changed"] is False


def test_an_encrypted_set_is_not_encrypted_twice(sets):
    _plain_dir, vault_dir, back_dir, _report = sets
    with pytest.raises(RecoveryError) as err:
        encrypt_set(vault_dir, SET_ID, back_dir, KEY)
    assert one_line(err) == "set %s in %s is already encrypted" % (SET_ID, vault_dir)
    assert not os.path.exists(back_dir)


def test_a_corrupt_plaintext_set_is_refused_and_nothing_is_left(tmp_dir):
    plain_dir, vault_dir = os.path.join(tmp_dir, "plain"), os.path.join(tmp_dir, "vault")
    make_plain_set(plain_dir)
    damaged = os.path.join(plain_dir, MULTI_CHUNK)
    data = bytearray(read(damaged))
    data[CHUNK_BYTES + 7] ^= 0x01
    write(damaged, bytes(data))
    with pytest.raises(RecoveryError) as err:
        encrypt_set(plain_dir, SET_ID, vault_dir, KEY, jobs=3)
    assert one_line(err) == "set %s in %s cannot be encrypted: %s: SHA-256 mismatch (corrupted)" % (
        SET_ID, plain_dir, MULTI_CHUNK)
    assert os.listdir(vault_dir) == []


# ---------------------------------------------------------------- tampering


def _flip(offset):
    def tamper(path):
        data = bytearray(read(path))
        data[offset if offset >= 0 else len(data) + offset] ^= 0x20
        write(path, bytes(data))
    return tamper


def _truncate(size):
    def tamper(path):
        os.truncate(path, size)
    return tamper


def _append(extra):
    def tamper(path):
        write(path, read(path) + extra)
    return tamper


def _swap_chunks(path):
    data = read(path)
    sealed = CHUNK_BYTES + TAG_BYTES
    first, second = data[HEADER_BYTES:HEADER_BYTES + sealed], data[HEADER_BYTES + sealed:HEADER_BYTES + 2 * sealed]
    write(path, data[:HEADER_BYTES] + second + first + data[HEADER_BYTES + 2 * sealed:])


def _drop_middle_chunk(path):
    data = read(path)
    sealed = CHUNK_BYTES + TAG_BYTES
    write(path, data[:HEADER_BYTES + sealed] + data[HEADER_BYTES + 2 * sealed:])


SEALED_CHUNK = CHUNK_BYTES + TAG_BYTES
TAMPERING = {
    "magic": _flip(0),
    "version": _flip(8),
    "salt": _flip(HEADER_BYTES - 1),
    "first chunk": _flip(HEADER_BYTES),
    "middle chunk": _flip(HEADER_BYTES + SEALED_CHUNK + CHUNK_BYTES // 2),
    "tag of the first chunk": _flip(HEADER_BYTES + SEALED_CHUNK - 3),
    "last byte": _flip(-1),
    "truncated at a chunk boundary": _truncate(HEADER_BYTES + 2 * SEALED_CHUNK),
    "truncated inside a chunk": _truncate(HEADER_BYTES + SEALED_CHUNK + 100),
    "truncated to the header": _truncate(HEADER_BYTES),
    "truncated inside the header": _truncate(HEADER_BYTES - 1),
    "appended bytes": _append(b"\x00" * 40),
    "appended chunk": _append(b"\x00" * SEALED_CHUNK),
    "swapped chunks": _swap_chunks,
    "dropped chunk": _drop_middle_chunk,
}


@pytest.mark.parametrize("how", sorted(TAMPERING))
def test_tampered_ciphertext_is_refused_in_one_line_naming_the_file_and_nothing_is_left(sets, how):
    _plain_dir, vault_dir, back_dir, _report = sets
    target = os.path.join(vault_dir, MULTI_CHUNK)
    TAMPERING[how](target)
    with pytest.raises(RecoveryError) as err:
        decrypt_set(vault_dir, SET_ID, back_dir, KEY)
    message = one_line(err)
    assert target in message and "encrypted file" in message
    assert os.listdir(back_dir) == []


def test_files_swapped_between_paths_are_refused(sets):
    _plain_dir, vault_dir, back_dir, _report = sets
    first, second = (os.path.join(vault_dir, "set_%s/%s" % (SET_ID, name)) for name in ("config.tar", "redis.rdb"))
    first_data, second_data = read(first), read(second)
    write(first, second_data)
    write(second, first_data)
    with pytest.raises(RecoveryError) as err:
        decrypt_set(vault_dir, SET_ID, back_dir, KEY, jobs=1)
    assert first in one_line(err) or second in one_line(err)
    assert "fails authentication" in one_line(err)
    assert os.listdir(back_dir) == []


def _rewrite_manifest(path, change):
    data = json.loads(read(path))
    del data["manifest_sha256"]
    change(data)
    write_json_atomic(path, seal_signed(data))


def test_a_tampered_inner_manifest_is_refused_before_anything_is_written(sets):
    _plain_dir, vault_dir, back_dir, report = sets

    def flip_inner(data):
        inner = bytearray(base64.b64decode(data["encryption"]["manifest"]))
        inner[len(inner) // 2] ^= 0x01
        data["encryption"]["manifest"] = base64.b64encode(bytes(inner)).decode()

    _rewrite_manifest(report["manifest"], flip_inner)
    with pytest.raises(RecoveryError) as err:
        decrypt_set(vault_dir, SET_ID, back_dir, KEY)
    assert one_line(err).startswith("encrypted file %s (its encrypted manifest) is damaged or was tampered with" %
                                    report["manifest"])
    assert not os.path.exists(back_dir)


def test_an_outer_manifest_listing_other_artifacts_than_the_inner_one_is_refused(sets):
    _plain_dir, vault_dir, back_dir, report = sets

    def swap_kinds(data):
        data["artifacts"][0]["path"], data["artifacts"][1]["path"] = \
            data["artifacts"][1]["path"], data["artifacts"][0]["path"]

    _rewrite_manifest(report["manifest"], swap_kinds)
    with pytest.raises(RecoveryError) as err:
        decrypt_set(vault_dir, SET_ID, back_dir, KEY)
    assert one_line(err) == "manifest %s does not describe the same set as the manifest it encrypts" % \
        report["manifest"]
    assert not os.path.exists(back_dir)


def test_a_wrong_key_is_refused_naming_both_key_ids_before_anything_is_written(sets):
    _plain_dir, vault_dir, back_dir, _report = sets
    with pytest.raises(RecoveryError) as err:
        decrypt_set(vault_dir, SET_ID, back_dir, OTHER_KEY)
    assert one_line(err) == "encryption key %s does not match set %s (encrypted with key %s)" % (
        key_id(OTHER_KEY), SET_ID, key_id(KEY))
    assert not os.path.exists(back_dir)


def test_a_plaintext_set_is_not_decrypted(sets):
    plain_dir, _vault_dir, back_dir, _report = sets
    with pytest.raises(RecoveryError) as err:
        decrypt_set(plain_dir, SET_ID, back_dir, KEY)
    assert one_line(err) == "set %s in %s is not encrypted" % (SET_ID, plain_dir)


def test_checksums_of_an_encrypted_set_need_no_key_its_deep_checks_do(sets):
    _plain_dir, _vault_dir, _back_dir, report = sets
    checked, _manifest = verify_set(report["manifest"])
    assert checked["ok"] and checked["encrypted"] is True and checked["key_id"] == key_id(KEY)
    with pytest.raises(RecoveryError) as err:
        verify_set(report["manifest"], deep=True)
    assert one_line(err) == "set %s is encrypted (key %s): deep verification needs the encryption key" % (
        SET_ID, key_id(KEY))


def test_a_killed_deep_verification_leaves_a_copy_the_next_backup_removes(tmp_dir):
    leftover = os.path.join(tmp_dir, ".verify_%s.tmp" % SET_ID)
    os.makedirs(os.path.join(leftover, "set_" + SET_ID))
    assert remove_incomplete_leftovers(tmp_dir) == [os.path.basename(leftover)]
    assert not os.path.exists(leftover)


# ---------------------------------------------------------------- keys


def test_load_key_reads_base64_text_from_the_option_or_a_file(tmp_dir):
    assert load_key(key="  %s\n" % KEY_TEXT) == KEY
    path = os.path.join(tmp_dir, "key")
    write(path, b"\n%s\n\n" % KEY_TEXT.encode())
    assert load_key(key_file=path) == KEY


SECRET_LOOKING = "c2VjcmV0LWtleS1tYXRlcmlhbC1kby1ub3Qtc2hvdw"  # base64 of 31 bytes, unpadded


@pytest.mark.parametrize(("text", "problem"), [
    ("", "is empty (make one with: openssl rand -base64 32)"),
    ("   \n", "is empty (make one with: openssl rand -base64 32)"),
    (SECRET_LOOKING, "is not base64 text (make one with: openssl rand -base64 32)"),
    (SECRET_LOOKING + "!=", "is not base64 text (make one with: openssl rand -base64 32)"),
    ("sécret-clé-" + KEY_TEXT, "is not base64 text (make one with: openssl rand -base64 32)"),
    ("\udcff" + KEY_TEXT, "is not base64 text (make one with: openssl rand -base64 32)"),
    (base64.b64encode(KEY[:16]).decode(), "holds 16 bytes, not 32 (make one with: openssl rand -base64 32)"),
    (base64.b64encode(KEY + b"!").decode(), "holds 33 bytes, not 32 (make one with: openssl rand -base64 32)"),
])
def test_a_bad_key_is_refused_in_one_line_that_never_shows_it(tmp_dir, text, problem):
    with pytest.raises(RecoveryError) as err:
        load_key(key=text)
    assert one_line(err) == "encryption key " + problem
    path = os.path.join(tmp_dir, "key")
    write(path, text.encode("utf-8", "surrogateescape"))
    with pytest.raises(RecoveryError) as file_err:
        load_key(key_file=path)
    assert one_line(file_err) == "encryption key file %s %s" % (path, problem)
    for message in (str(err.value), str(file_err.value)):
        assert not (text.strip() and text.strip() in message)
        assert KEY_TEXT[:12] not in message and SECRET_LOOKING[:12] not in message


def test_a_key_file_that_cannot_serve_is_refused_in_one_line(tmp_dir):
    missing = os.path.join(tmp_dir, "missing")
    with pytest.raises(RecoveryError) as err:
        load_key(key_file=missing)
    assert one_line(err) == "encryption key file %s cannot be read: No such file or directory" % missing
    with pytest.raises(RecoveryError) as err:
        load_key(key_file=tmp_dir)
    assert one_line(err) == "encryption key file %s cannot be read: Is a directory" % tmp_dir
    large = os.path.join(tmp_dir, "large")
    write(large, (KEY_TEXT + "\n").encode() * 100)
    with pytest.raises(RecoveryError) as err:
        load_key(key_file=large)
    assert one_line(err) == "encryption key file %s is larger than 1024 bytes: it should hold only the base64 text " \
        "of a 32-byte key" % large
    assert KEY_TEXT not in one_line(err)


@pytest.mark.parametrize(("given", "word"), [({}, "neither"), ({"key": KEY_TEXT, "key_file": "/k"}, "both")])
def test_exactly_one_key_source_is_needed(given, word):
    with pytest.raises(RecoveryError) as err:
        load_key(**given)
    assert one_line(err) == "give exactly one of an encryption key and an encryption key file, not " + word
    assert KEY_TEXT not in one_line(err)


def test_key_id_is_a_short_stable_fingerprint_that_is_not_a_plain_hash_of_the_key():
    assert key_id(KEY) == key_id(bytes(KEY))
    assert len(key_id(KEY)) == 16 and int(key_id(KEY), 16) >= 0
    assert key_id(KEY) != key_id(OTHER_KEY)
    assert not hashlib.sha256(KEY).hexdigest().startswith(key_id(KEY))


# ---------------------------------------------------------------- the manifest's encryption section


def _encrypted_manifest(tmp_dir):
    plain_dir = os.path.join(tmp_dir, "plain")
    make_plain_set(plain_dir, {name: b"x" for name in CONTENTS})
    report = encrypt_set(plain_dir, SET_ID, os.path.join(tmp_dir, "vault"), KEY)
    with open(report["manifest"], encoding="utf-8") as handle:
        return json.load(handle), report["manifest"]


def test_a_manifest_with_or_without_an_encryption_section_is_valid(tmp_dir):
    data, path = _encrypted_manifest(tmp_dir)
    check_schema(data, path)
    check_schema({name: value for name, value in data.items() if name != "encryption"}, path)


@pytest.mark.parametrize(("field", "value", "problem"), [
    (None, "not an object", "encryption is not an object"),
    ("scheme", "aes-128-cbc", "encryption.scheme 'aes-128-cbc' is not aes-256-gcm-stream-v1"),
    ("scheme", None, "encryption.scheme None is not aes-256-gcm-stream-v1"),
    ("key_id", "ABCDEF0123456789", "encryption.key_id is not 16 hex digits"),
    ("key_id", "abc", "encryption.key_id is not 16 hex digits"),
    ("key_id", 12345, "encryption.key_id is not 16 hex digits"),
    ("chunk_bytes", 0, "encryption.chunk_bytes is not a size from 1 to 67108864"),
    ("chunk_bytes", True, "encryption.chunk_bytes is not a size from 1 to 67108864"),
    ("chunk_bytes", "1048576", "encryption.chunk_bytes is not a size from 1 to 67108864"),
    ("chunk_bytes", 2**40, "encryption.chunk_bytes is not a size from 1 to 67108864"),
    ("manifest", "", "encryption.manifest is not base64 text"),
    ("manifest", "not base64!", "encryption.manifest is not base64 text"),
    ("manifest", "aé==", "encryption.manifest is not base64 text"),
    ("manifest", ["QUJD"], "encryption.manifest is not base64 text"),
])
def test_a_malformed_encryption_section_is_refused_in_one_line(tmp_dir, field, value, problem):
    data, path = _encrypted_manifest(tmp_dir)
    data = copy.deepcopy(data)
    if field is None:
        data["encryption"] = value
    else:
        data["encryption"][field] = value
    with pytest.raises(RecoveryError) as err:
        check_schema(data, path)
    assert one_line(err) == "manifest %s is invalid: %s" % (path, problem)

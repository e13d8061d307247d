# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Encrypted copies of backup sets for the hosts they are shipped to, and plaintext sets made from them again.

An encrypted set keeps the layout and the readable metadata of its plaintext set; each file is sealed in chunks
(AES-256-GCM under a per-file HKDF subkey, STREAM nonces of counter and last-chunk flag, the file's header and
artifact path as associated data), and the original sealed manifest travels encrypted inside the new one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
import stat
from concurrent.futures import ThreadPoolExecutor

from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.core.fsutil import (
    HashingWriter,
    fsync_dir,
    make_private_dir,
    remove_quietly,
    require_free_space,
    write_json_atomic,
)
from ansible_collections.christmas.recovery.plugins.module_utils.core.safe_paths import resolve_inside
from ansible_collections.christmas.recovery.plugins.module_utils.sets import signing
from ansible_collections.christmas.recovery.plugins.module_utils.sets.manifest import (
    ENCRYPTION_SCHEME,
    artifact_path,
    load,
    manifest_name,
    parse,
    partial_dir_name,
    read_manifest_bytes,
    seal,
    set_dir_name,
)

try:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
    HAS_CRYPTOGRAPHY = True
except ImportError:  # reported by the modules with missing_required_lib
    HAS_CRYPTOGRAPHY = False

SCHEME = ENCRYPTION_SCHEME
KEY_BYTES = 32
MAX_KEY_FILE_BYTES = 1024
KEY_ID_CONTEXT = b"christmas.recovery/key-id\x00"  # a key id is never a plain hash that other tools might publish
SUBKEY_INFO = b"christmas.recovery/" + SCHEME.encode("ascii") + b"/file-key"
MAGIC = b"XMASAEAD"
VERSION = 1
SALT_BYTES = 32
HEADER_BYTES = len(MAGIC) + 1 + SALT_BYTES
TAG_BYTES = 16
CHUNK_BYTES = 1024 * 1024
MANIFEST_NAME = "manifest"  # the associated data of the encrypted inner manifest, which has no artifact path
MAKE_A_KEY = "make one with: openssl rand -base64 32"


def load_key(key=None, key_file=None):
    """The 32-byte key from its base64 text or from a file holding that text; errors never show the key."""
    if (key is None) == (key_file is None):
        raise RecoveryError("give exactly one of an encryption key and an encryption key file, not %s" % (
            "both" if key is not None else "neither"))
    if key_file is not None:
        source = "encryption key file %s" % key_file
        try:
            with open(key_file, "rb") as handle:
                text = handle.read(MAX_KEY_FILE_BYTES + 1)
        except OSError as err:
            raise RecoveryError("%s cannot be read: %s" % (source, err.strerror)) from None
        if len(text) > MAX_KEY_FILE_BYTES:
            raise RecoveryError("%s is larger than %d bytes: it should hold only the base64 text of a %d-byte key" % (
                source, MAX_KEY_FILE_BYTES, KEY_BYTES))
    else:
        source = "encryption key"
        text = key.encode("utf-8", "replace")  # never the UnicodeEncodeError, which quotes a character of the key
    text = text.strip()
    if not text:
        raise RecoveryError("%s is empty (%s)" % (source, MAKE_A_KEY))
    try:
        decoded = base64.b64decode(text, validate=True)
    except binascii.Error:
        raise RecoveryError("%s is not base64 text (%s)" % (source, MAKE_A_KEY)) from None
    if len(decoded) != KEY_BYTES:
        raise RecoveryError("%s holds %d bytes, not %d (%s)" % (source, len(decoded), KEY_BYTES, MAKE_A_KEY))
    return decoded


def derived_secret(key, purpose):
    """A secret for another tool (``purpose`` names it) derived from the key: the tool never holds the key itself,
    and the key's loss or rotation is the only way to lose or change it."""
    _require_library()
    derived = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None,
                   info=b"christmas.recovery/derived/" + purpose.encode("ascii")).derive(key)
    return base64.urlsafe_b64encode(derived).decode("ascii").rstrip("=")


def key_id(key):
    """A short public fingerprint of the key, safe to log and to record in a manifest."""
    return hashlib.sha256(KEY_ID_CONTEXT + key).hexdigest()[:16]


def is_encrypted(manifest):
    return "encryption" in manifest


def check_key(manifest, key):
    """Refuse a key other than the one the set was encrypted with, before anything is read or written."""
    given, recorded = key_id(key), manifest["encryption"]["key_id"]
    if given != recorded:
        raise RecoveryError("encryption key %s does not match set %s (encrypted with key %s)" % (
            given, manifest["set_id"], recorded))


# ---------------------------------------------------------------- one stream: header, then sealed chunks


def _require_library():
    if not HAS_CRYPTOGRAPHY:
        raise RecoveryError("the cryptography Python library is required on this host for encrypted sets "
                            "(apt install python3-cryptography, or pip install cryptography)")


def _file_cipher(key, salt):
    return AESGCM(HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=salt, info=SUBKEY_INFO).derive(key))


def _nonce(counter, last):
    """STREAM: a chunk's place and whether it ends the file, so reordering, truncation and appending all fail."""
    return counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


def _seal_stream(source, sink, key, name, chunk_bytes):
    """Write ``source`` encrypted to ``sink``; ``name`` (the artifact path) binds the ciphertext to its place."""
    header = MAGIC + bytes([VERSION]) + os.urandom(SALT_BYTES)
    cipher = _file_cipher(key, header[-SALT_BYTES:])
    associated = header + name.encode("utf-8")
    sink.write(header)
    counter, chunk = 0, source.read(chunk_bytes)
    while True:
        following = source.read(chunk_bytes)  # read ahead: only the last chunk (maybe empty) carries the flag
        sink.write(cipher.encrypt(_nonce(counter, not following), chunk, associated))
        if not following:
            return
        counter, chunk = counter + 1, following


def _open_stream(source, sink, key, name, chunk_bytes, shown_as):
    """Write the plaintext of ``source`` to ``sink``; a damaged stream is a one-line error naming ``shown_as``."""
    header = source.read(HEADER_BYTES)
    if len(header) < HEADER_BYTES or not header.startswith(MAGIC):
        raise RecoveryError("encrypted file %s is damaged: it does not start with the encryption header" % shown_as)
    if header[len(MAGIC)] != VERSION:
        raise RecoveryError("encrypted file %s has format version %d, this collection reads %d" % (
            shown_as, header[len(MAGIC)], VERSION))
    cipher = _file_cipher(key, header[-SALT_BYTES:])
    associated = header + name.encode("utf-8")
    counter, chunk = 0, source.read(chunk_bytes + TAG_BYTES)
    while True:
        following = source.read(chunk_bytes + TAG_BYTES)
        try:
            sink.write(cipher.decrypt(_nonce(counter, not following), chunk, associated))
        except InvalidTag:
            raise RecoveryError("encrypted file %s is damaged or was tampered with: chunk %d fails authentication "
                                "(altered, truncated, extended, reordered or moved from another file)" % (
                                    shown_as, counter)) from None
        if not following:
            return
        counter, chunk = counter + 1, following


class _HashingReader:
    """A file read through, counted and hashed: what was encrypted is checked against the manifest in one pass."""

    def __init__(self, handle):
        self._handle = handle
        self.digest = hashlib.sha256()
        self.size = 0

    def read(self, size):
        data = self._handle.read(size)
        self.digest.update(data)
        self.size += len(data)
        return data


def _open_regular(path):
    """A regular file opened for reading; a symlink, FIFO or device put in its place is refused, not followed."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise RecoveryError("%s is not a regular file" % path)
    return os.fdopen(fd, "rb")


# ---------------------------------------------------------------- whole sets


def _sealed_size(size):
    return HEADER_BYTES + size + TAG_BYTES * max(1, -(-size // CHUNK_BYTES))


def _relative_in_set(artifact, set_id):
    return artifact["path"][len(set_dir_name(set_id)) + 1:]


def _prepare_partial(out_dir, set_id, artifacts):
    """A fresh 0700 partial directory with every directory the artifacts need; leftovers of a killed run go."""
    make_private_dir(out_dir)
    for leftover in (partial_dir_name(set_id), set_dir_name(set_id), ".%s.tmp" % manifest_name(set_id)):
        remove_quietly(os.path.join(out_dir, leftover))  # no manifest: an incomplete set of a killed run
    partial = os.path.join(out_dir, partial_dir_name(set_id))
    os.mkdir(partial, 0o700)
    targets = [resolve_inside(partial, _relative_in_set(a, set_id), "artifact") for a in artifacts]
    for directory in sorted({os.path.dirname(t) for t in targets}):
        make_private_dir(directory)
    return partial, targets


def _fsync_tree(root):
    for base, _dirs, _files in os.walk(root):
        fsync_dir(base)


def _in_parallel(work, items, jobs):
    """``work`` on every item in threads (AES-GCM and hashing release the GIL); the first error cancels the rest."""
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = [pool.submit(work, *item) for item in items]
        try:
            return [future.result() for future in futures]
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise


def _publish(out_dir, partial, set_id):
    """Every file is already fsynced; make the directories durable, then the set visible under its final name."""
    _fsync_tree(partial)
    os.rename(partial, os.path.join(out_dir, set_dir_name(set_id)))
    fsync_dir(out_dir)


def _discard(manifest_path, out_dir, set_id):
    """The manifest goes first, so the set is never visible as complete without its files."""
    remove_quietly(manifest_path)
    remove_quietly(os.path.join(out_dir, partial_dir_name(set_id)))
    remove_quietly(os.path.join(out_dir, set_dir_name(set_id)))


def _write_bytes_atomic(path, data):
    writer = HashingWriter(path)
    try:
        writer.write(data)
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    fsync_dir(os.path.dirname(path))


def _failed(action, set_id, out_dir, err):
    return RecoveryError("%s set %s into %s failed, nothing kept: %s%s" % (
        action, set_id, out_dir, err.strerror, " (%s)" % err.filename if err.filename else ""))


def _set_report(manifest, manifest_path, out_dir, changed):
    return {"changed": changed, "set_id": manifest["set_id"], "manifest": manifest_path,
            "set_dir": os.path.join(out_dir, set_dir_name(manifest["set_id"])),
            "artifact_count": len(manifest["artifacts"]), "total_bytes": sum(a["size"] for a in manifest["artifacts"])}


def _encrypt_artifact(backup_dir, artifact, target, key):
    """Encrypt one artifact, checking while reading that it still has its recorded size and SHA-256."""
    writer = HashingWriter(target)
    try:
        with _open_regular(artifact_path(backup_dir, artifact)) as handle:
            reader = _HashingReader(handle)
            _seal_stream(reader, writer, key, artifact["path"], CHUNK_BYTES)
        if reader.size != artifact["size"]:
            raise RecoveryError("%s: size %d, expected %d (truncated or altered)" % (
                artifact["path"], reader.size, artifact["size"]))
        if reader.digest.hexdigest() != artifact["sha256"]:
            raise RecoveryError("%s: SHA-256 mismatch (corrupted)" % artifact["path"])
        return writer.commit()
    except BaseException:
        writer.abort()
        raise


def _check_sizes(backup_dir, artifacts):
    """The recorded sizes against the files (lstat) before any of them sizes a disk-room check."""
    for artifact in artifacts:
        path = artifact_path(backup_dir, artifact)
        try:
            size = os.lstat(path).st_size
        except OSError as err:
            raise RecoveryError("%s: %s" % (path, err.strerror)) from None
        if size != artifact["size"]:
            raise RecoveryError("%s: size %d, its manifest says %d (truncated or altered)" % (
                path, size, artifact["size"]))


def encrypt_set(backup_dir, set_id, out_dir, key, jobs=2, signer=None, trust=None):
    """Write an encrypted copy of the complete plaintext set ``set_id`` of ``backup_dir`` into ``out_dir``, its
    manifest signed by ``signer`` once ``trust`` accepted the plaintext set's own signature.

    Every artifact is checked against its size and SHA-256 as it is read, so a corrupt set is refused, not shipped.
    The files appear under ``.set_<id>.partial``, are renamed to ``set_<id>``, and the manifest comes last.
    """
    _require_library()
    source_manifest = os.path.join(backup_dir, manifest_name(set_id))
    original = read_manifest_bytes(source_manifest)
    plain = parse(original, source_manifest)
    if is_encrypted(plain):
        raise RecoveryError("set %s in %s is already encrypted" % (set_id, backup_dir))
    (trust or signing.Trust()).check(plain, source_manifest)
    signer = signer or signing.Signer()
    signer.key()
    manifest_path = os.path.join(out_dir, manifest_name(set_id))
    if os.path.lexists(manifest_path):
        existing = load(manifest_path)
        if not (is_encrypted(existing) and existing["encryption"]["key_id"] == key_id(key)):
            raise RecoveryError("%s already holds set %s, %s; remove it to encrypt the set again" % (
                out_dir, set_id, "encrypted with key %s" % existing["encryption"]["key_id"]
                if is_encrypted(existing) else "not encrypted"))
        return dict(_set_report(existing, manifest_path, out_dir, False), key_id=key_id(key))
    try:
        _check_sizes(backup_dir, plain["artifacts"])
    except RecoveryError as err:
        raise RecoveryError("set %s in %s cannot be encrypted: %s" % (set_id, backup_dir, err)) from None
    require_free_space(out_dir, sum(_sealed_size(a["size"]) for a in plain["artifacts"]),
                       "the encrypted copy of set %s" % set_id)
    try:
        partial, targets = _prepare_partial(out_dir, set_id, plain["artifacts"])
        sealed = _in_parallel(lambda artifact, target: _encrypt_artifact(backup_dir, artifact, target, key),
                              zip(plain["artifacts"], targets, strict=True), jobs)
        _publish(out_dir, partial, set_id)
        inner = io.BytesIO()
        _seal_stream(io.BytesIO(original), inner, key, MANIFEST_NAME, CHUNK_BYTES)
        outer = {name: value for name, value in plain.items() if name != "manifest_sha256"}
        outer["artifacts"] = [dict(artifact, size=size, sha256=digest)
                              for artifact, (size, digest) in zip(plain["artifacts"], sealed, strict=True)]
        outer["encryption"] = {"scheme": SCHEME, "key_id": key_id(key), "chunk_bytes": CHUNK_BYTES,
                               "manifest": base64.b64encode(inner.getvalue()).decode("ascii")}
        outer = signer.sign(outer)
        write_json_atomic(manifest_path, seal(outer))
    except OSError as err:
        _discard(manifest_path, out_dir, set_id)
        raise _failed("encrypting", set_id, out_dir, err) from None
    except RecoveryError as err:
        _discard(manifest_path, out_dir, set_id)
        raise RecoveryError("set %s in %s cannot be encrypted: %s" % (set_id, backup_dir, err)) from None
    except BaseException:
        _discard(manifest_path, out_dir, set_id)
        raise
    return dict(_set_report(outer, manifest_path, out_dir, True), key_id=key_id(key))


def _inner_manifest(encrypted, src_manifest, key):
    """The original sealed manifest carried by an encrypted one, as bytes and loaded; it must describe the same set."""
    encryption = encrypted["encryption"]
    original = io.BytesIO()
    _open_stream(io.BytesIO(base64.b64decode(encryption["manifest"])), original, key, MANIFEST_NAME,
                 encryption["chunk_bytes"], "%s (its encrypted manifest)" % src_manifest)
    raw = original.getvalue()
    plain = parse(raw, "%s (its encrypted manifest)" % src_manifest)
    layout = [[(a["path"], a["component"], a["kind"]) for a in m["artifacts"]] for m in (encrypted, plain)]
    if is_encrypted(plain) or plain["set_id"] != encrypted["set_id"] or layout[0] != layout[1]:
        raise RecoveryError("manifest %s does not describe the same set as the manifest it encrypts" % src_manifest)
    return raw, plain


def _decrypt_artifact(src_dir, encrypted_artifact, artifact, target, key, chunk_bytes):
    """Decrypt one artifact and check it against the original manifest's size and SHA-256."""
    source_path = artifact_path(src_dir, encrypted_artifact)
    writer = HashingWriter(target)
    try:
        with _open_regular(source_path) as handle:
            _open_stream(handle, writer, key, artifact["path"], chunk_bytes, source_path)
        size, digest = writer.commit()
    except BaseException:
        writer.abort()
        raise
    if size != artifact["size"]:
        raise RecoveryError("decrypted %s has size %d, its manifest says %d" % (source_path, size, artifact["size"]))
    if digest != artifact["sha256"]:
        raise RecoveryError("decrypted %s does not have the SHA-256 its manifest records" % source_path)


def decrypt_set(src_dir, set_id, out_dir, key, jobs=2):
    """Turn the encrypted set ``set_id`` of ``src_dir`` into an ordinary plaintext set in ``out_dir``, with its
    original manifest byte for byte. A wrong key is refused before anything is written; a damaged file leaves
    nothing behind."""
    _require_library()
    src_manifest = os.path.join(src_dir, manifest_name(set_id))
    encrypted = load(src_manifest)
    if not is_encrypted(encrypted):
        raise RecoveryError("set %s in %s is not encrypted" % (set_id, src_dir))
    check_key(encrypted, key)
    raw, plain = _inner_manifest(encrypted, src_manifest, key)
    manifest_path = os.path.join(out_dir, manifest_name(set_id))
    if os.path.lexists(manifest_path):
        if read_manifest_bytes(manifest_path) != raw:
            raise RecoveryError("%s already holds a different set %s; remove it to decrypt the set there" % (
                out_dir, set_id))
        return _set_report(plain, manifest_path, out_dir, False)
    for sealed, artifact in zip(encrypted["artifacts"], plain["artifacts"], strict=True):
        if artifact["size"] > sealed["size"]:  # a file never decrypts to more than its sealed size
            raise RecoveryError("%s: its manifest says %d bytes decrypted, more than its %d encrypted bytes" % (
                artifact["path"], artifact["size"], sealed["size"]))
    require_free_space(out_dir, sum(a["size"] for a in plain["artifacts"]), "set %s decrypted" % set_id)
    chunk_bytes = encrypted["encryption"]["chunk_bytes"]
    try:
        partial, targets = _prepare_partial(out_dir, set_id, plain["artifacts"])
        _in_parallel(lambda sealed, artifact, target: _decrypt_artifact(src_dir, sealed, artifact, target, key,
                                                                        chunk_bytes),
                     zip(encrypted["artifacts"], plain["artifacts"], targets, strict=True), jobs)
        _publish(out_dir, partial, set_id)
        _write_bytes_atomic(manifest_path, raw)
    except OSError as err:
        _discard(manifest_path, out_dir, set_id)
        raise _failed("decrypting", set_id, out_dir, err) from None
    except BaseException:
        _discard(manifest_path, out_dir, set_id)
        raise
    return _set_report(plain, manifest_path, out_dir, True)


# ---------------------------------------------------------------- single files


def seal_file(source, target, key, name):
    """``source`` encrypted into ``target`` (0600, written atomically); ``name`` binds the ciphertext to its place,
    so a file moved to another name fails to open."""
    writer = HashingWriter(target)
    try:
        with _open_regular(source) as handle:
            _seal_stream(handle, writer, key, name, CHUNK_BYTES)
        writer.commit()
    except BaseException:
        writer.abort()
        raise


def open_file(source, target, key, name):
    """The plaintext of ``seal_file``'s ``source`` into ``target``; damage or another ``name`` is a one-line error."""
    writer = HashingWriter(target)
    try:
        with _open_regular(source) as handle:
            _open_stream(handle, writer, key, name, CHUNK_BYTES, source)
        writer.commit()
    except BaseException:
        writer.abort()
        raise

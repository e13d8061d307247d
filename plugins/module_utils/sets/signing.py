# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Signed manifests: every backup signs its manifest with the platform host's Ed25519 key, and whoever uses a set
(verify, restore, rehearsal, offsite receive) checks that signature with the public half before trusting it.

The signature is a field of the manifest over its canonical JSON without the signature and the checksum, so the set
stays one manifest file that copies, retention and encryption carry like before; the manifest covers every file.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat

from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.core.fsutil import fsync_dir

try:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
    HAS_CRYPTOGRAPHY = True
except ImportError:  # reported by the modules with missing_required_lib
    HAS_CRYPTOGRAPHY = False

SCHEME = "ed25519-v1"
DEFAULT_KEY_FILE = "/etc/christmas-recovery/signing.key"
KEY_FILE_ENV = "CHRISTMAS_SIGNING_KEY_FILE"
MAX_KEY_FILE_BYTES = 4096
SIGNED_CONTEXT = b"christmas.recovery/manifest-signature-v1\x00"
KEY_ID_CONTEXT = b"christmas.recovery/signing-key-id\x00"
UNSIGNED_HINT = "pass christmas_allow_unsigned=true to use it anyway"


def key_file_path(given=None):
    """The private key file: the one given, else $CHRISTMAS_SIGNING_KEY_FILE, else /etc/christmas-recovery."""
    return given or os.environ.get(KEY_FILE_ENV) or DEFAULT_KEY_FILE


def _require_library():
    if not HAS_CRYPTOGRAPHY:
        raise RecoveryError("signed sets need the Python cryptography library (python3-cryptography)")


def _raw_public(public_key):
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public_key):
    """16 hex digits naming a public key (a fingerprint, never the key itself)."""
    return hashlib.sha256(KEY_ID_CONTEXT + _raw_public(public_key)).hexdigest()[:16]


def signed_bytes(data):
    """What the signature covers: the manifest's canonical JSON without its signature and checksum."""
    body = {key: value for key, value in data.items() if key not in ("signature", "manifest_sha256")}
    return SIGNED_CONTEXT + json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _read_key_file(path, what, private):
    """The bytes of a key file; a private key must be a regular file only its owner can read."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise RecoveryError("%s %s cannot be read: %s" % (what, path, err.strerror)) from None
    if not stat.S_ISREG(info.st_mode):
        raise RecoveryError("%s %s is not a regular file" % (what, path))
    if private and info.st_mode & 0o077:
        raise RecoveryError("%s %s has mode %04o: it must be 0600 (chmod 600 %s)" % (
            what, path, stat.S_IMODE(info.st_mode), path))
    if info.st_size > MAX_KEY_FILE_BYTES:
        raise RecoveryError("%s %s is larger than %d bytes: not a key" % (what, path, MAX_KEY_FILE_BYTES))
    try:
        with open(path, "rb") as handle:
            return handle.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as err:
        raise RecoveryError("%s %s cannot be read: %s" % (what, path, err.strerror)) from None


def _parse_private(raw, path):
    try:
        key = serialization.load_pem_private_key(raw, password=None)
    except (ValueError, TypeError):
        key = None
    if not isinstance(key, Ed25519PrivateKey):
        raise RecoveryError("signing key file %s does not hold an Ed25519 private key in PEM" % path)
    return key


def load_private_key(path):
    """The private key of ``path``, or None when there is no such file."""
    _require_library()
    raw = _read_key_file(path, "signing key file", private=True)
    return None if raw is None else _parse_private(raw, path)


def load_or_create_private_key(path):
    """The platform host's key, created (0600, in a 0700 directory, atomically, never over an existing file) by the
    first backup; returns (key, created)."""
    _require_library()
    if not os.path.isabs(path):
        raise RecoveryError("signing key file %s must be an absolute path" % path)
    key = load_private_key(path)
    if key is not None:
        return key, False
    try:
        return _create_private_key(path)
    except OSError as err:
        raise RecoveryError("cannot create the signing key %s: %s; give a key file this user may create "
                            "(christmas_signing_key_file, --signing-key-file)" % (path, err.strerror)) from None


def _create_private_key(path):
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    temporary = os.path.join(directory, ".%s.%d.tmp" % (os.path.basename(path), os.getpid()))
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)  # fails when another backup made the key first: that key is the one
        except FileExistsError:
            return load_private_key(path), False
        fsync_dir(directory)
    finally:
        os.unlink(temporary)
    return key, True


def load_public_key(path):
    """A public key file (PEM), or the public half of a private key file given instead."""
    _require_library()
    raw = _read_key_file(path, "signing public key file", private=False)
    if raw is None:
        raise RecoveryError("signing public key file %s does not exist" % path)
    return parse_public_key(raw, path)


def parse_public_key(raw, path):
    """The Ed25519 public key of PEM text ``raw`` (``path`` names where it came from in errors)."""
    _require_library()
    try:
        key = serialization.load_pem_public_key(raw)
    except (ValueError, TypeError):
        if b"PRIVATE KEY" in raw:
            return _parse_private(raw, path).public_key()
        key = None
    if not isinstance(key, Ed25519PublicKey):
        raise RecoveryError("signing public key file %s does not hold an Ed25519 public key in PEM" % path)
    return key


def public_key_pem(public_key):
    return public_key.public_bytes(serialization.Encoding.PEM,
                                   serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")


def sign(data, private_key):
    """The manifest with its signature field (to be sealed after)."""
    body = {key: value for key, value in data.items() if key not in ("signature", "manifest_sha256")}
    signature = private_key.sign(signed_bytes(body))
    body["signature"] = {"scheme": SCHEME, "key_id": key_id(private_key.public_key()),
                         "value": base64.b64encode(signature).decode("ascii")}
    return body


class Signer:
    """The platform host's signing key, loaded (or created) on first use."""

    def __init__(self, key_file=None):
        self.path = key_file_path(key_file)
        self._key = None
        self.created = False

    def key(self):
        if self._key is None:
            self._key, self.created = load_or_create_private_key(self.path)
        return self._key

    def sign(self, data):
        return sign(data, self.key())

    def report(self):
        return {"key_file": self.path, "key_id": key_id(self.key().public_key()), "key_created": self.created}


class Trust:
    """Which sets a consumer accepts: those signed by the public key (of ``public_key_file``, else of the private
    key file), or, with ``allow_unsigned``, any set, said loudly."""

    def __init__(self, key_file=None, public_key_file=None, allow_unsigned=False, public_key=None):
        self.key_file = key_file_path(key_file)
        self.public_key_file = public_key_file
        self.public_key_text = public_key  # PEM given as a value: the key the sending host checked its sets with
        self.allow_unsigned = bool(allow_unsigned)
        self._public = False

    def public_key(self):
        if self._public is False:
            if self.public_key_text:
                self._public = parse_public_key(self.public_key_text.encode("ascii", "replace"), "signing_public_key")
            elif self.public_key_file:
                self._public = load_public_key(self.public_key_file)
            else:
                private = load_private_key(self.key_file)
                self._public = private.public_key() if private is not None else None
        return self._public

    def _problem(self, data, path):
        signature = data.get("signature")
        if signature is None:
            return "is not signed (%s has no signature)" % os.path.basename(path)
        public = self.public_key()
        if public is None:
            return "cannot be checked: no signing key %s and no christmas_signing_public_key_file" % self.key_file
        expected = key_id(public)
        if signature["key_id"] != expected:
            return "is signed by another key (%s, not %s)" % (signature["key_id"], expected)
        try:
            public.verify(base64.b64decode(signature["value"]), signed_bytes(data))
        except (InvalidSignature, ValueError):
            return "has a signature that does not match key %s (forged or edited)" % expected
        return None

    def check(self, data, path):
        """The signature's verdict for the manifest ``data`` read from ``path``; raises unless it is good or
        unsigned sets are allowed."""
        _require_library()
        problem = self._problem(data, path)
        if problem is None:
            return {"signed": True, "key_id": data["signature"]["key_id"], "unsigned_allowed": False}
        message = "set %s %s" % (data["set_id"], problem)
        if not self.allow_unsigned:
            raise RecoveryError("%s: %s" % (message, UNSIGNED_HINT))
        return {"signed": False, "key_id": (data.get("signature") or {}).get("key_id"), "unsigned_allowed": True,
                "warning": "UNSIGNED SET USED: %s; christmas_allow_unsigned=true accepted it" % message}


def trust_from_params(params):
    return Trust(params.get("signing_key_file"), params.get("signing_public_key_file"),
                 params.get("allow_unsigned"), params.get("signing_public_key"))

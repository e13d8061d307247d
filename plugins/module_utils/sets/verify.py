# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Verification of a backup set: manifest schema, every artifact's size and SHA-256, and optionally each artifact
read back by its own tool (an encrypted set is decrypted for that into a private directory beside it)."""

from __future__ import annotations

import os

from ansible_collections.christmas.recovery.plugins.module_utils.config import config_tree
from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.core.fsutil import remove_quietly
from ansible_collections.christmas.recovery.plugins.module_utils.db import connection, db_globals, postgres, restore
from ansible_collections.christmas.recovery.plugins.module_utils.redis import redis_rdb
from ansible_collections.christmas.recovery.plugins.module_utils.sets import encryption, signing
from ansible_collections.christmas.recovery.plugins.module_utils.sets.manifest import (
    artifact_path,
    artifacts_of,
    check_artifacts,
    load,
    resolve_manifest_path,
    set_dir_name,
)


def _unlisted_files(backup_dir, manifest):
    listed = {a["path"] for a in manifest["artifacts"]}
    root = os.path.join(backup_dir, set_dir_name(manifest["set_id"]))
    if os.path.islink(root) or not os.path.isdir(root):
        return []
    extra = []
    for base, dirs, files in os.walk(root):
        # os.walk lists a symlink to a directory among the directories and does not enter it: report it as well.
        for name in files + [d for d in dirs if os.path.islink(os.path.join(base, d))]:
            relative = os.path.relpath(os.path.join(base, name), backup_dir)
            if relative not in listed:
                extra.append(relative)
    return extra


def _deep_checks(backup_dir, manifest, pg_target):
    """Each component read by its own tool; returns {artifact path: problem}."""
    problems = {}
    set_root = os.path.join(backup_dir, set_dir_name(manifest["set_id"]))
    for component in manifest["components"]:
        try:
            if component == "db":
                restore.check_dump_readable(pg_target or connection.PgTarget(),
                                             os.path.join(set_root, postgres.DUMP_DIR))
                db_globals.load_globals(os.path.join(set_root, db_globals.GLOBALS_FILE))
            elif component == "redis":
                redis_rdb.check_file(artifact_path(backup_dir, artifacts_of(manifest, "redis")[0]))
            elif component == "config":
                config_tree.check_members(artifact_path(backup_dir, artifacts_of(manifest, "config")[0]))
        except RecoveryError as err:
            problems[artifacts_of(manifest, component)[0]["path"]] = str(err)
    return problems


def _deep_checks_decrypted(set_root, manifest, key, jobs, pg_target):
    """The deep checks of an encrypted set, run on a plaintext copy in a private directory that never outlives them."""
    encryption.check_key(manifest, key)
    plain_root = os.path.join(set_root, ".verify_%s.tmp" % manifest["set_id"])
    remove_quietly(plain_root)  # what a killed verification left
    try:
        decrypted = encryption.decrypt_set(set_root, manifest["set_id"], plain_root, key, jobs)
        return _deep_checks(plain_root, load(decrypted["manifest"]), pg_target)
    except RecoveryError as err:
        return {"decryption": str(err)}
    finally:
        remove_quietly(plain_root)


def verify_set(manifest_ref, backup_dir=None, deep=False, jobs=4, pg_target=None, encryption_key=None, trust=None):
    """Return a report; raise one line naming every bad artifact when the set is not intact. An encrypted set's
    checksums are those of its encrypted files: they need no key, its deep checks do. The manifest's signature is
    checked first, with ``trust`` (by default: the platform host's signing key, no unsigned set)."""
    path = resolve_manifest_path(manifest_ref, backup_dir)
    manifest = load(path)
    signature = (trust or signing.Trust()).check(manifest, path)
    set_root = os.path.dirname(path)
    encrypted = encryption.is_encrypted(manifest)
    if deep and encrypted and encryption_key is None:
        raise RecoveryError("set %s is encrypted (key %s): deep verification needs the encryption key" % (
            manifest["set_id"], manifest["encryption"]["key_id"]))
    problems = check_artifacts(set_root, manifest, jobs)
    for extra in _unlisted_files(set_root, manifest):
        problems[extra] = "not listed in the manifest"
    if deep and not problems:
        problems.update(_deep_checks_decrypted(set_root, manifest, encryption_key, jobs, pg_target) if encrypted
                        else _deep_checks(set_root, manifest, pg_target))
    report = {
        "ok": not problems, "manifest": path, "backup_dir": set_root, "set_id": manifest["set_id"],
        "components": manifest["components"], "artifact_count": len(manifest["artifacts"]),
        "total_bytes": sum(a["size"] for a in manifest["artifacts"]), "deep": bool(deep), "encrypted": encrypted,
        "problems": [{"artifact": name, "problem": problem} for name, problem in sorted(problems.items())],
        "signature": signature,
    }
    if encrypted:
        report["key_id"] = manifest["encryption"]["key_id"]
    if problems:
        raise RecoveryError("backup set %s failed verification: %s" % (manifest["set_id"], "; ".join(
            "%s: %s" % (name, problem) for name, problem in sorted(problems.items()))), report=report)
    return report, manifest

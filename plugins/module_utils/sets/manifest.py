# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The manifest: what a backup set holds, how sets are named, found and checked."""

from __future__ import annotations

import base64
import calendar
import hashlib
import json
import os
import re
import stat
import time
from concurrent.futures import ThreadPoolExecutor

from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.core.fsutil import sha256_file
from ansible_collections.christmas.recovery.plugins.module_utils.core.safe_paths import resolve_inside

FORMAT = "christmas.recovery/backup-set"
FORMAT_VERSION = 1
COMPONENTS = ("db", "redis", "config")
SET_ID_RE = re.compile(r"^\d{8}_\d{6}$")
PITR_PREFIX = "pitr-"  # a restore to a point in time is labelled PITR_PREFIX + the second it reached, as a set id
MANIFEST_RE = re.compile(r"^manifest_(\d{8}_\d{6})\.json$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# The kinds each component's restore looks up: a set lacking one could pass verification and then fail mid-restore.
ARTIFACT_KINDS = {"db": ("pg_dump_directory", "pg_globals"), "redis": ("redis_rdb",), "config": ("config_tar",)}
MAX_ID = 2**32 - 2  # the largest uid/gid chown can set: 2**32 - 1 means "leave unchanged"
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
# A set dated further ahead of this host's clock than this is ignored by latest and retention.
CLOCK_SKEW_SECONDS = 300
# Encryption (encryption.py) is described here, so an encrypted set's manifest is judged without the key.
ENCRYPTION_SCHEME = "aes-256-gcm-stream-v1"
KEY_ID_RE = re.compile(r"^[0-9a-f]{16}$")
MAX_CHUNK_BYTES = 64 * 1024 * 1024  # each chunk is held in memory once while sealed or opened
SIGNATURE_SCHEME = "ed25519-v1"  # signing.py makes and checks it; its shape is judged here with the rest
TOP_FIELDS = {"format", "format_version", "set_id", "started_at", "finished_at", "host", "components", "artifacts",
              "tools", "db", "redis", "config", "encryption", "signature", "manifest_sha256"}
ARTIFACT_FIELDS = {"path", "size", "sha256", "component", "kind"}
ENCRYPTION_FIELDS = {"scheme", "key_id", "chunk_bytes", "manifest"}
SIGNATURE_FIELDS = {"scheme", "key_id", "value"}
# Every field a backup writes, per section: anything else is a hand-made manifest and is refused.
KNOWN_SECTION_FIELDS = {
    "db": {"name", "server_version", "server_version_num", "pg_dump_version", "pg_dump_major", "dump_format", "jobs",
           "extensions", "row_counts", "snapshot_time", "snapshot_lsn", "timeline", "from_standby", "node",
           "size_bytes", "owner", "roles", "roles_with_passwords", "market_data", "timescaledb", "physical"},
    "redis": {"version", "aof_enabled", "rdb_version", "transfer", "keys_per_db_at_start"},
    "config": {"source_dir", "root_mode", "root_owner", "entries", "tree_sha256", "skipped", "hardlinks"},
}
MAX_SIZE = 2**53  # bytes: beyond any real file or database, and exact in every JSON reader
NAME_RE = re.compile(r"^[^\x00-\x1f]{1,200}$")  # role, table and extension names: no control characters
SECTION_FIELDS = {
    "db": {"server_version": str, "server_version_num": int, "pg_dump_major": int, "size_bytes": int,
           "row_counts": dict, "extensions": dict, "roles": list},
    "redis": {"version": str, "rdb_version": int},
    "config": {"source_dir": str, "root_mode": str, "root_owner": list, "tree_sha256": str},
}
TYPE_NAMES = {str: "string", int: "integer", dict: "object", list: "list"}
SECTION_FORMATS = {
    ("redis", "version"): re.compile(r"^\d+\.\d+(\.|$)"),
    ("config", "source_dir"): re.compile(r"^/.*[^/]"),  # restored into when no config_dir is given: never cwd or /
    ("config", "root_mode"): re.compile(r"^[0-7]{1,4}$"),
    ("config", "tree_sha256"): SHA256_RE,
}


def manifest_name(set_id):
    return "manifest_%s.json" % set_id


def set_dir_name(set_id):
    return "set_%s" % set_id


def partial_dir_name(set_id):
    return ".set_%s.partial" % set_id


def set_id_time(set_id):
    """The UTC time a set id names, or None for an impossible date such as 20261399_250000."""
    try:
        return calendar.timegm(time.strptime(set_id, "%Y%m%d_%H%M%S"))
    except ValueError:
        return None


def _manifest_ids(backup_dir):
    try:
        names = os.listdir(backup_dir)
    except FileNotFoundError:
        return []
    ids = []
    for name in names:
        match = MANIFEST_RE.match(name)
        if match and stat.S_ISREG(os.lstat(os.path.join(backup_dir, name)).st_mode):
            ids.append(match.group(1))
    return ids


# A manifest is written once (temporary name, rename) and never changed: its recorded time is read once per file
# version, not on every listing (retention, latest, offsite and metrics each list a directory's sets).
_CREATED = {}


def created_time(backup_dir, set_id):
    """When the set was made, as its manifest records it (``started_at``, covered by the manifest's checksum and
    signature); the time its name says when the manifest cannot be read (verification then names the problem)."""
    path = os.path.join(backup_dir, manifest_name(set_id))
    try:
        info = os.stat(path)
        version = (path, info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
        if version not in _CREATED:
            with open(path, "rb") as handle:
                started = json.loads(handle.read(MAX_MANIFEST_BYTES)).get("started_at")
            _CREATED[version] = calendar.timegm(time.strptime(started, "%Y-%m-%dT%H:%M:%SZ"))
        return _CREATED[version]
    except (OSError, ValueError, TypeError, AttributeError):
        return set_id_time(set_id)


def _dated_ids(backup_dir, now, skew):
    """(created, set id, ahead) of each set with a possible date, newest first; ``ahead`` is how far its name or its
    recorded time lies beyond ``now`` + ``skew`` (0 for a set not in the future)."""
    limit = (time.time() if now is None else now) + skew
    dated = []
    for set_id in _manifest_ids(backup_dir):
        named = set_id_time(set_id)
        if named is not None:
            created = created_time(backup_dir, set_id)
            dated.append((created, set_id, max(0, max(created, named) - limit)))
    return sorted(dated, reverse=True)


def dated_sets(backup_dir, now=None, skew=CLOCK_SKEW_SECONDS):
    """(created, set id) of the sets whose manifest exists, newest first by the time each manifest records; a set
    without a manifest is incomplete, and a name with an impossible date or a set dated more than ``skew`` seconds in
    the future is no set (``ignored_manifests`` reports them)."""
    return [(created, set_id) for created, set_id, ahead in _dated_ids(backup_dir, now, skew) if not ahead]


def complete_set_ids(backup_dir, now=None, skew=CLOCK_SKEW_SECONDS):
    """The ids of ``dated_sets``, newest first."""
    return [set_id for _created, set_id in dated_sets(backup_dir, now, skew)]


def ignored_manifests(backup_dir, now=None, skew=CLOCK_SKEW_SECONDS):
    """One line per manifest file that ``latest``, retention and listings ignore, naming it and why."""
    impossible = ["%s ignored: %s is not a possible date" % (os.path.join(backup_dir, manifest_name(i)), i)
                  for i in sorted(_manifest_ids(backup_dir)) if set_id_time(i) is None]
    future = ["%s ignored: dated %s, more than %d s ahead of this host's clock (clock skew or a planted file)" % (
        os.path.join(backup_dir, manifest_name(set_id)), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created)),
        skew) for created, set_id, ahead in _dated_ids(backup_dir, now, skew) if ahead]
    return impossible + future


def resolve_manifest_path(manifest, backup_dir=None, skew=CLOCK_SKEW_SECONDS):
    """``latest`` means the newest complete set in ``backup_dir``; anything else is a path to a manifest."""
    if manifest in (None, "", "latest"):
        if not backup_dir:
            raise RecoveryError("manifest=latest needs backup_dir")
        ids = complete_set_ids(backup_dir, skew=skew)
        if not ids:
            raise RecoveryError("no complete backup set (no manifest_YYYYMMDD_HHMMSS.json) in %s" % backup_dir)
        return os.path.join(backup_dir, manifest_name(ids[0]))
    path = manifest
    if not os.path.isabs(path) and backup_dir and not os.path.exists(path):
        path = os.path.join(backup_dir, path)
    return os.path.abspath(path)


def _require(condition, path, problem):
    if not condition:
        raise RecoveryError("manifest %s is invalid: %s" % (path, problem))


def _only(value, known, path, where):
    unknown = sorted(set(value) - known)
    _require(not unknown, path, "unknown field %.100s%s" % (where, unknown[0] if unknown else ""))


def _is_size(value):
    return _is_int(value) and 0 <= value <= MAX_SIZE


def check_schema(data, path):
    """Raise naming the first structural problem of a loaded manifest: a missing, unknown, mistyped or out-of-range
    field."""
    _require(isinstance(data, dict), path, "top level is not an object")
    _only(data, TOP_FIELDS, path, "")
    _require(data.get("format") == FORMAT, path, "format is not %r" % FORMAT)
    _require(_is_int(data.get("format_version")) and data["format_version"] == FORMAT_VERSION, path,
             "format_version is not %d" % FORMAT_VERSION)
    set_id = data.get("set_id")
    _require(isinstance(set_id, str) and SET_ID_RE.match(set_id), path, "set_id is not YYYYMMDD_HHMMSS")
    match = MANIFEST_RE.match(os.path.basename(path))
    _require(match is None or match.group(1) == set_id, path, "set_id %s does not match the file name" % set_id)
    components = data.get("components")
    _require(
        isinstance(components, list) and components and all(c in COMPONENTS for c in components)
        and len(set(components)) == len(components),
        path, "components must be a non-empty list of %s" % ", ".join(COMPONENTS),
    )
    for key in ("started_at", "finished_at", "host"):
        _require(isinstance(data.get(key), str), path, "%s is missing or not a string" % key)
    _require(isinstance(data.get("tools"), dict) and all(isinstance(v, str) for v in data["tools"].values()), path,
             "tools is missing or not an object of strings")
    artifacts = data.get("artifacts")
    _require(isinstance(artifacts, list) and artifacts, path, "artifacts must be a non-empty list")
    seen = set()
    prefix = set_dir_name(set_id) + "/"
    for index, artifact in enumerate(artifacts):
        where = "artifacts[%d]" % index
        _require(isinstance(artifact, dict), path, "%s is not an object" % where)
        _only(artifact, ARTIFACT_FIELDS, path, where + ".")
        name = artifact.get("path")
        _require(isinstance(name, str) and name.startswith(prefix), path,
                 "%s.path %.200r is not inside %s" % (where, name, prefix))
        _require(name not in seen, path, "%s.path %s is listed twice" % (where, name))
        seen.add(name)
        size = artifact.get("size")
        _require(_is_size(size), path, "%s.size is not a size from 0 to %d" % (where, MAX_SIZE))
        _require(isinstance(artifact.get("sha256"), str) and SHA256_RE.match(artifact["sha256"]), path,
                 "%s.sha256 is not a SHA-256 hex digest" % where)
        _require(artifact.get("component") in components, path,
                 "%s.component is not one of the set's components" % where)
        _require(isinstance(artifact.get("kind"), str), path, "%s.kind is missing" % where)
        kinds = ARTIFACT_KINDS[artifact["component"]]
        _require(artifact["kind"] in kinds, path, "%s.kind %.100r is not one of %s" % (
            where, artifact["kind"], ", ".join(kinds)))
    for component in components:
        _require(isinstance(data.get(component), dict), path, "section %r is missing" % component)
        kinds = {a["kind"] for a in artifacts if a["component"] == component}
        _require(kinds.issuperset(ARTIFACT_KINDS[component]), path, "component %s has no artifact of kind %s" % (
            component, ", ".join(sorted(set(ARTIFACT_KINDS[component]) - kinds))))
        _check_section(data[component], component, path)
    for section in set(COMPONENTS) - set(components):
        _require(section not in data, path, "section %r is present but %s is not among the components" % (
            section, section))
    if "encryption" in data:
        _check_encryption(data["encryption"], path)
    if "signature" in data:
        _check_signature(data["signature"], path)


def _check_keyed(section, name, fields, scheme, path):
    """What a signature and an encryption record share: an object of known fields, the scheme, a key id."""
    _require(isinstance(section, dict), path, "%s is not an object" % name)
    _only(section, fields, path, name + ".")
    _require(section.get("scheme") == scheme, path, "%s.scheme %.100r is not %s" % (
        name, section.get("scheme"), scheme))
    _require(isinstance(section.get("key_id"), str) and KEY_ID_RE.match(section["key_id"]), path,
             "%s.key_id is not 16 hex digits" % name)


def _check_signature(signature, path):
    _check_keyed(signature, "signature", SIGNATURE_FIELDS, SIGNATURE_SCHEME, path)
    value = signature.get("value")
    _require(isinstance(value, str) and _is_base64(value) and len(base64.b64decode(value)) == 64, path,
             "signature.value is not a base64 Ed25519 signature")


def _check_encryption(encryption, path):
    _check_keyed(encryption, "encryption", ENCRYPTION_FIELDS, ENCRYPTION_SCHEME, path)
    chunk_bytes = encryption.get("chunk_bytes")
    _require(_is_int(chunk_bytes) and 1 <= chunk_bytes <= MAX_CHUNK_BYTES, path,
             "encryption.chunk_bytes is not a size from 1 to %d" % MAX_CHUNK_BYTES)
    sealed_manifest = encryption.get("manifest")
    _require(isinstance(sealed_manifest, str) and sealed_manifest and _is_base64(sealed_manifest), path,
             "encryption.manifest is not base64 text")


def _is_base64(text):
    try:
        base64.b64decode(text, validate=True)
    except ValueError:  # binascii.Error, or a non-ASCII character
        return False
    return True


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _check_section(section, component, path):
    """The fields a restore of ``component`` reads: a hand-edited manifest fails verification, not half a restore."""
    _only(section, KNOWN_SECTION_FIELDS[component], path, component + ".")
    for field, kind in SECTION_FIELDS[component].items():
        value = section.get(field)
        _require(isinstance(value, kind) and not isinstance(value, bool), path,
                 "%s.%s is missing or not a %s" % (component, field, TYPE_NAMES[kind]))
        pattern = SECTION_FORMATS.get((component, field))
        _require(pattern is None or pattern.match(value), path, "%s.%s %.100r is malformed" % (component, field, value))
    if component == "db":
        _require(all(isinstance(role, str) and NAME_RE.match(role) for role in section["roles"]), path,
                 "db.roles must be role names")
        _require(all(NAME_RE.match(name) and isinstance(ext, dict) and set(ext) == {"version", "schema"}
                     and isinstance(ext["version"], str) and isinstance(ext["schema"], str)
                     for name, ext in section["extensions"].items()),
                 path, "db.extensions must map names to version and schema")
        _require(all(NAME_RE.match(name) and _is_size(count) for name, count in section["row_counts"].items()), path,
                 "db.row_counts must map table names to row counts from 0")
        _require(_is_size(section["size_bytes"]), path, "db.size_bytes is not a size from 0 to %d" % MAX_SIZE)
        for field in ("server_version_num", "pg_dump_major"):
            _require(0 < section[field] < 10**7, path, "db.%s %d is out of range" % (field, section[field]))
        _require("jobs" not in section or (_is_int(section["jobs"]) and 1 <= section["jobs"] <= 1024), path,
                 "db.jobs is not a number from 1 to 1024")
        if "market_data" in section:  # recorded since the validation module; older manifests lack it
            _check_market_data(section["market_data"], path)
        if "timescaledb" in section:  # recorded since TimescaleDB's objects are compared; older manifests lack it
            _check_timescaledb(section["timescaledb"], path)
        if "physical" in section:  # the physical backup taken with the set when continuous protection is on
            check_physical(section["physical"], path)
    if component == "redis":
        _require(0 <= section["rdb_version"] < 1000, path, "redis.rdb_version %d is out of range" % (
            section["rdb_version"]))
    if component == "config":
        owner = section["root_owner"]
        _require(len(owner) == 2 and all(_is_int(i) and 0 <= i <= MAX_ID for i in owner), path,
                 "config.root_owner must be [uid, gid]")


def _check_timescaledb(facts, path):
    def each(kind, shape):
        items = facts.get(kind) if isinstance(facts, dict) else None
        _require(isinstance(items, dict) and all(isinstance(item, dict) and shape(item) for item in items.values()),
                 path, "db.timescaledb.%s is missing or malformed" % kind)

    each("hypertables", lambda item: all(_is_int(item.get(key)) and item[key] >= 0
                                         for key in ("chunks", "compressed_chunks")))
    each("continuous_aggregates", lambda item: isinstance(item.get("hypertable"), str))
    each("jobs", lambda item: isinstance(item.get("proc"), str) and isinstance(item.get("scheduled"), bool)
         and (item.get("hypertable") is None or isinstance(item["hypertable"], str)))


PHYSICAL_FORMATS = {
    "tool": re.compile(r"^pgbackrest$"), "version": re.compile(r"^\d+\.\d+"),
    "stanza": re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"),
    "label": re.compile(r"^\d{8}-\d{6}F(_\d{8}-\d{6}[DI])?$"), "type": re.compile(r"^(full|diff|incr)$"),
    "wal_start": re.compile(r"^[0-9A-F]{24}$"), "wal_stop": re.compile(r"^[0-9A-F]{24}$"),
    "started_at": re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$"),
    "stopped_at": re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$"), "repo": re.compile(r"^/.*[^/]$"),
}
# the copy in the bucket's repository (repo2), when there is one
PHYSICAL_BUCKET_FORMATS = {"label": PHYSICAL_FORMATS["label"], "type": PHYSICAL_FORMATS["type"],
                           "repo": re.compile(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/.*[^/]$")}


def check_physical(physical, path):
    _require(isinstance(physical, dict), path, "db.physical is not an object")
    _only(physical, set(PHYSICAL_FORMATS) | {"bucket"}, path, "db.physical.")
    _check_fields(physical, PHYSICAL_FORMATS, path, "db.physical.")
    if "bucket" in physical:
        _require(isinstance(physical["bucket"], dict), path, "db.physical.bucket is not an object")
        _only(physical["bucket"], set(PHYSICAL_BUCKET_FORMATS), path, "db.physical.bucket.")
        _check_fields(physical["bucket"], PHYSICAL_BUCKET_FORMATS, path, "db.physical.bucket.")


def _check_fields(found, formats, path, where):
    for field, pattern in formats.items():
        value = found.get(field)
        _require(isinstance(value, str) and pattern.match(value), path,
                 "%s%s %.100r is missing or malformed" % (where, field, value))


def _check_market_data(market, path):
    _require(isinstance(market, dict), path, "db.market_data is not an object")
    _require(isinstance(market.get("table"), str) and market["table"], path,
             "db.market_data.table is missing or not a table name")
    _require(_is_int(market.get("rows")) and market["rows"] >= 0, path,
             "db.market_data.rows is missing or not a row count")
    for field in ("time_column", "newest"):
        _require(field in market and (market[field] is None or isinstance(market[field], str)), path,
                 "db.market_data.%s is missing or neither a string nor null" % field)
    _require(market["time_column"] is not None or market["newest"] is None, path,
             "db.market_data.newest is set but time_column is null")


def content_checksum(data):
    """SHA-256 of the manifest without its own checksum, over canonical JSON: any changed byte changes it."""
    body = {key: value for key, value in data.items() if key != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def seal(data):
    """Return the manifest with its checksum added; what the backup writes."""
    return dict(data, manifest_sha256=content_checksum(data))


def read_manifest_bytes(path):
    """The bytes of a manifest file, refusing what cannot be one; every failure is a one-line RecoveryError."""
    try:
        info = os.stat(path)
    except OSError as err:
        raise RecoveryError("manifest %s cannot be read: %s" % (path, err.strerror)) from None
    _require(stat.S_ISREG(info.st_mode), path, "not a regular file")
    _require(info.st_size <= MAX_MANIFEST_BYTES, path, "larger than %d bytes" % MAX_MANIFEST_BYTES)
    try:
        with open(path, "rb") as handle:
            return handle.read(MAX_MANIFEST_BYTES + 1)
    except OSError as err:
        raise RecoveryError("manifest %s cannot be read: %s" % (path, err.strerror)) from None


def parse(raw, path):
    """Decode, unseal and schema-check manifest bytes; ``path`` names them in errors."""
    _require(len(raw) <= MAX_MANIFEST_BYTES, path, "larger than %d bytes" % MAX_MANIFEST_BYTES)
    try:
        data = json.loads(raw.decode("utf-8"), object_pairs_hook=_refuse_duplicate_keys)
        sealed = isinstance(data, dict) and data.get("manifest_sha256") == content_checksum(data)
    except (UnicodeDecodeError, ValueError) as err:
        raise RecoveryError("manifest %s is not valid JSON: %s" % (path, str(err).splitlines()[0])) from None
    except RecursionError:  # "[[[[..." deeper than the parser's (or, re-encoded, the checksum's) recursion limit
        raise RecoveryError("manifest %s is not valid JSON: nested too deeply" % path) from None
    _require(sealed, path, "its checksum does not match its content (corrupted or edited)")
    check_schema(data, path)
    return data


def _refuse_duplicate_keys(pairs):
    """Two readers could take different values of a key given twice: such a manifest is nobody's."""
    seen = set()
    for key, _value in pairs:
        if key in seen:
            raise ValueError("duplicate key %.100r" % key)
        seen.add(key)
    return dict(pairs)


def load(path):
    """Read and schema-check a manifest; every failure is a one-line RecoveryError."""
    return parse(read_manifest_bytes(path), path)


def artifacts_of(manifest, component, kind=None):
    return [a for a in manifest["artifacts"] if a["component"] == component and (kind is None or a["kind"] == kind)]


def artifact_path(backup_dir, artifact):
    """Absolute path of an artifact, refusing names that leave the set or pass through a symlink."""
    return resolve_inside(backup_dir, artifact["path"], "artifact")


def check_artifact(backup_dir, artifact):
    """Return None when the artifact is present with its recorded size and checksum, else the problem."""
    try:
        path = artifact_path(backup_dir, artifact)
        info = os.lstat(path)
    except RecoveryError as err:
        return str(err)
    except FileNotFoundError:
        return "missing"
    except OSError as err:
        return "unreadable: %s" % err.strerror
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file"
    if info.st_size != artifact["size"]:
        return "size %d, expected %d (truncated or altered)" % (info.st_size, artifact["size"])
    try:
        _size, digest = sha256_file(path)
    except OSError as err:
        return "unreadable: %s" % err.strerror
    if digest != artifact["sha256"]:
        return "SHA-256 mismatch (corrupted)"
    return None


def check_artifacts(backup_dir, manifest, jobs=4):
    """Check every artifact in parallel (hashing releases the GIL); return {path: problem} for the bad ones."""
    artifacts = manifest["artifacts"]
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        problems = list(pool.map(lambda a: check_artifact(backup_dir, a), artifacts))
    return {a["path"]: p for a, p in zip(artifacts, problems, strict=True) if p}

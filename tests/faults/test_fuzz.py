"""Property-based tests of the code that reads untrusted input: manifests, names, link targets and archive members.

Whatever the input, the answer is either a valid result or a one-line RecoveryError, never another exception; and
what is accepted is safe to act on: a name joins to a path inside its root, an archive extracts inside its
destination only.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import shutil
import tarfile
import tempfile

import pytest
from fault_helpers import one_line
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from manifest_samples import REMOVE, SET_ID, leaf_paths, replaced, valid_manifest

from ansible_collections.christmas.recovery.plugins.module_utils.config import config_restore, config_tree
from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.core.safe_paths import (
    check_relative_name,
    link_stays_inside,
    resolve_inside,
)
from ansible_collections.christmas.recovery.plugins.module_utils.sets import manifest

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MANIFEST_NAME = "manifest_%s.json" % SET_ID
# The artifact kinds restore_set looks up per component: a set without one cannot be restored.
RESTORE_READS = {"db": {"pg_dump_directory", "pg_globals"}, "redis": {"redis_rdb"}, "config": {"config_tar"}}


# ---------------------------------------------------------------- strategies

# Names are built from the pieces that matter to a path check, not from uniformly random text that would hardly
# ever form a "..": dots, slashes, a NUL, lone surrogates (JSON can carry them), non-ASCII and over-long components.
NAME_PIECES = ["a", "b", "sub", ".", "..", "", "é", "日本", "\x00", "\ud800", "\udcff", " ", "\n", "x" * 256,
               "n" * 100]
piece = st.one_of(st.sampled_from(NAME_PIECES), st.text(max_size=8))
names = st.builds(lambda prefix, parts, suffix: prefix + "/".join(parts) + suffix,
                  st.sampled_from(["", "", "", "/", "../", "./", "//"]), st.lists(piece, min_size=1, max_size=5),
                  st.sampled_from(["", "", "/", "/."]))

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20),
                         st.sampled_from(["", SET_ID, "db", "redis", "config", "set_%s/x" % SET_ID, "ab" * 32,
                                          "set_%s/\ud800" % SET_ID, "set_%s/../x" % SET_ID]))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)), max_leaves=12)


@st.composite
def mutated_manifests(draw):
    """A valid manifest with one to three entries replaced by arbitrary JSON, removed, or given an extra key."""
    data = valid_manifest()
    for _ in range(draw(st.integers(1, 3))):
        paths = leaf_paths(data)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        action = draw(st.sampled_from(["replace", "replace", "remove", "add"]))
        try:
            if action == "add":
                if isinstance(_get(data, path), dict):
                    data = replaced(data, path + (draw(st.text(max_size=8)),), draw(json_values))
            else:
                data = replaced(data, path, REMOVE if action == "remove" else draw(json_values))
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed or replaced the path's parent
    return data


def _get(data, path):
    for key in path:
        data = data[key]
    return data


def _deeply_nested(depth):
    return "[" * depth + "]" * depth


manifest_texts = st.one_of(
    json_values.map(json.dumps),
    mutated_manifests().map(lambda d: json.dumps(manifest.seal(d))),
    st.integers(1, 200000).map(_deeply_nested),
    st.integers(1, 200000).map(lambda depth: '{"a":' * depth + "1" + "}" * depth),
    st.text(max_size=200),
).map(lambda text: text.encode("utf-8", "surrogatepass"))


@st.composite
def damaged_real_manifest(draw):
    """The bytes of a sealed valid manifest with a few bytes replaced, inserted or cut off."""
    data = bytearray(json.dumps(manifest.seal(valid_manifest()), indent=2, sort_keys=True).encode())
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "insert", "truncate"]))
        if action == "flip":
            data[at] ^= draw(st.integers(1, 255))
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=4))
        else:
            del data[at:]
            break
    return bytes(data)


# ---------------------------------------------------------------- the manifest loader and schema


def _write(directory, data):
    path = os.path.join(directory, MANIFEST_NAME)
    with open(path, "wb") as handle:
        handle.write(data)
    return path


def _check_loaded(module_dir, data):
    """load() returns a manifest that passes its own schema, or refuses in one line naming the file; returns which,
    for hypothesis' statistics (--hypothesis-show-statistics)."""
    path = _write(module_dir, data)
    try:
        loaded = manifest.load(path)
    except RecoveryError as err:
        assert MANIFEST_NAME in one_line(err)
        return "refused: " + _reason(err)
    manifest.check_schema(loaded, path)
    _usable(loaded, module_dir)
    return "loaded"


@FUZZ
@given(data=st.one_of(manifest_texts, damaged_real_manifest(), st.binary(max_size=300)))
def test_manifest_load_returns_a_valid_manifest_or_refuses_in_one_line(module_dir, data):
    event(_check_loaded(module_dir, data))


def test_manifest_load_refuses_deep_nesting_and_huge_numbers_in_one_line(module_dir):
    for text in (_deeply_nested(100000), '{"a":' * 5000 + "1" + "}" * 5000, "1" * 5000):
        assert _check_loaded(module_dir, text.encode()).startswith("refused: not valid JSON")


def _reason(err):
    """The first words after the file name: "not valid JSON", "invalid: format is not"..."""
    return " ".join(str(err).split(" is ", 1)[-1].split()[:4])


def _usable(data, root):
    """What the restore reads from an accepted manifest exists with the type it uses, and every artifact name
    either resolves inside the set's directory or is refused in one line."""
    for component in data["components"]:
        kinds = {a["kind"] for a in manifest.artifacts_of(data, component)}
        assert kinds >= RESTORE_READS[component], (component, kinds)
    for artifact in data["artifacts"]:
        try:
            path = resolve_inside(root, artifact["path"], "artifact")
        except RecoveryError as err:
            one_line(err)
            continue
        assert os.path.commonpath([root, path]) == root
    if "config" in data:
        owner = data["config"]["root_owner"]
        assert all(0 <= i < 2**32 - 1 for i in owner)
        int(data["config"]["root_mode"], 8)
    if "redis" in data:
        assert isinstance(data["redis"]["rdb_version"], int)


@FUZZ
@given(data=st.one_of(st.dictionaries(st.text(max_size=12), json_values, max_size=8), mutated_manifests(),
                      json_values))
def test_check_schema_accepts_only_what_the_restore_can_use_and_refuses_the_rest_in_one_line(module_dir, data):
    path = os.path.join(module_dir, MANIFEST_NAME)
    try:
        manifest.check_schema(data, path)
    except RecoveryError as err:
        assert MANIFEST_NAME in one_line(err)
        event("refused: " + _reason(err))
        return
    event("accepted")
    _usable(data, module_dir)


# ---------------------------------------------------------------- names and link targets


@FUZZ
@given(name=st.one_of(names, st.text(), st.binary(max_size=20).map(lambda b: b.decode("latin-1"))))
def test_check_relative_name_returns_clean_parts_or_refuses_in_one_line(name):
    try:
        parts = check_relative_name(name)
    except RecoveryError as err:
        one_line(err)
        return
    assert parts and all(part not in ("", ".", "..") and "/" not in part and "\x00" not in part for part in parts)
    "/".join(parts).encode("utf-8", "surrogateescape")


@FUZZ
@given(link_name=names, target=names)
def test_link_stays_inside_only_accepts_targets_that_resolve_inside_the_root(link_name, target):
    try:
        parts = check_relative_name(link_name)
    except RecoveryError:
        return
    clean = "/".join(parts)
    if not link_stays_inside(clean, target):
        return
    # Lexically inside; the real-disk case, with chains of links, is the archive test below.
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(clean), target))
    assert not target.startswith("/") and resolved != ".." and not resolved.startswith("../"), (clean, target)


@pytest.fixture(scope="module")
def tree(module_dir):
    """A root with a directory, a file, a symlink out of the root and one inside it, and a sibling outside."""
    root = os.path.join(module_dir, "tree", "root")
    os.makedirs(os.path.join(root, "sub", "deeper"))
    os.makedirs(os.path.join(module_dir, "tree", "outside"))
    with open(os.path.join(root, "file"), "w", encoding="utf-8") as handle:
        handle.write("x")
    os.symlink(os.path.join(module_dir, "tree", "outside"), os.path.join(root, "out"))
    os.symlink("sub", os.path.join(root, "in"))
    return root


@FUZZ
@given(name=st.one_of(names, st.builds("/".join, st.lists(st.sampled_from(
    ["sub", "deeper", "file", "out", "in", "..", "x", "a" * 255]), min_size=1, max_size=30))))
def test_resolve_inside_joins_inside_the_root_without_passing_a_symlink_or_refuses(tree, name):
    try:
        path = resolve_inside(tree, name)
    except RecoveryError as err:
        one_line(err)
        return
    assert os.path.commonpath([tree, path]) == tree
    probe = tree
    for part in os.path.relpath(path, tree).split("/"):
        probe = os.path.join(probe, part)
        assert not os.path.islink(probe), (name, probe)


# ---------------------------------------------------------------- config archive members

DEST = "config"
STAGING_LIKE = ".config.restore-%s" % SET_ID
# Components of plausible names (non-ASCII, 255 bytes, undecodable bytes as tarfile reads them, names like the
# destination or the restore's staging directory) and of hostile ones.
SAFE_PIECES = ["a", "b", "sub", "é", "日本", "x" * 255, "\udcff", DEST, STAGING_LIKE, "sentinel", ".hidden"]
HOSTILE_NAMES = ["..", "../", "./..", "../sentinel/evil", "../" + DEST, "/etc/evil", "a/../..", "a//b", "./a", "",
                 "x" * 256, "a/" * 2100 + "b", "\ud800"]
LINK_TARGETS = ["..", "../..", "../sentinel", "/etc/passwd", ".", "sub", "a/b", "", "x/../..", "../a", "a/../b",
                "../../" + DEST + "/a", "日本", "./././..", "a\x00b"]
KINDS = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE,
         "fifo": tarfile.FIFOTYPE, "chardev": tarfile.CHRTYPE, "blockdev": tarfile.BLKTYPE}
# PAX records override the header: any number, any name, whatever the header fields say.
HOSTILE_PAX = [{"uid": "-1"}, {"gid": "4294967296"}, {"uid": "99999999999999999999"}, {"mtime": "nan"},
               {"mtime": "inf"}, {"mtime": "1e400"}, {"mtime": "-1e300"}, {"path": "../sentinel/evil"},
               {"path": "/etc/evil"}, {"linkpath": "/etc/passwd"}, {"linkpath": "../.."}, {"size": "-1"},
               {"uid": "abc"}, {"gid": "4294967294"}, {"mtime": "1099511627775.5"}]
MODES = [0o644, 0o755, 0o600, 0o640, 0o4755, 0o2775, 0o1777, 0o000, 0o7777]


def _spec(name, kind, linkname="", data=b"", mode=0o644):
    return {"name": name, "kind": kind, "linkname": linkname, "data": data, "mode": mode, "uid": 0, "gid": 0,
            "mtime": 1_700_000_000, "pax": {}}


@st.composite
def member_lists(draw):
    """Members of a plausible tree (every parent listed as a directory), then up to three hostile changes (names,
    types, link targets, owners, times, PAX overrides, duplicates) and an arbitrary order."""
    paths = draw(st.lists(st.lists(st.sampled_from(SAFE_PIECES), min_size=1, max_size=3).map(tuple), max_size=7))
    specs = {}
    for path in paths:
        for depth in range(1, len(path)):
            specs.setdefault(path[:depth], _spec("/".join(path[:depth]), "dir", mode=draw(st.sampled_from(MODES))))
    for path in paths:
        if path not in specs:
            kind = draw(st.sampled_from(["file", "file", "dir", "symlink"]))
            target = draw(st.sampled_from(LINK_TARGETS + ["/".join(p) for p in paths])) if kind == "symlink" else ""
            specs[path] = _spec("/".join(path), kind, target, draw(st.binary(max_size=32)),
                                draw(st.sampled_from(MODES)))
    specs = [specs[path] for path in sorted(specs, key=len)]  # parents first, as archive_tree writes them
    for _ in range(draw(st.integers(0, 3)) if specs else 0):
        _mutate(draw, specs)
    order = draw(st.sampled_from(["parents first", "parents first", "shuffled", "reversed"]))
    if order == "shuffled":
        specs = draw(st.permutations(specs))
    return list(reversed(specs)) if order == "reversed" else specs


def _mutate(draw, specs):
    spec = specs[draw(st.integers(0, len(specs) - 1))]
    change = draw(st.sampled_from(["name", "kind", "linkname", "owner", "mtime", "pax", "duplicate"]))
    if change == "name":
        spec["name"] = draw(st.one_of(st.sampled_from(HOSTILE_NAMES), st.builds(
            "/".join, st.lists(st.sampled_from(SAFE_PIECES + ["..", "."]), min_size=1, max_size=4))))
    elif change == "kind":
        spec["kind"] = draw(st.sampled_from(sorted(KINDS)))
        spec["linkname"] = spec["linkname"] or draw(st.sampled_from(LINK_TARGETS))
    elif change == "linkname":
        spec["kind"], spec["linkname"] = "symlink", draw(st.sampled_from(LINK_TARGETS))
    elif change == "owner":
        spec["uid"] = draw(st.sampled_from([1, 65534, 2**32 - 2, 2**32 - 1, 2**32 + 5, 2**40, -1]))
        spec["gid"] = draw(st.sampled_from([5, 2**31, 2**32 + 5, -5]))
    elif change == "mtime":
        spec["mtime"] = draw(st.sampled_from([0, -86400, 1.5, 2**40, 1e20]))
    elif change == "pax":
        spec["pax"] = draw(st.sampled_from(HOSTILE_PAX))
    else:
        specs.append(dict(spec, pax={}))


def _archive(path, specs):
    """A PAX tar of the given members, in the given order; None when tarfile itself cannot write them."""
    buffer = io.BytesIO()
    try:
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8",
                          errors="surrogateescape") as out:
            for spec in specs:
                info = tarfile.TarInfo(spec["name"])
                info.type, info.mode, info.mtime = KINDS[spec["kind"]], spec["mode"], spec["mtime"]
                info.uid, info.gid, info.linkname = spec["uid"], spec["gid"], spec["linkname"]
                info.size = len(spec["data"]) if spec["kind"] == "file" else 0
                info.pax_headers = dict(spec["pax"])
                out.addfile(info, io.BytesIO(spec["data"]) if spec["kind"] == "file" else None)
    except (ValueError, OverflowError, UnicodeError):
        return None
    with open(path, "wb") as handle:
        handle.write(buffer.getvalue())
    return path


def _fresh_site(module_dir):
    """parent/{config (the current tree), sentinel (must stay empty)}; returns (parent, dest, sentinel)."""
    parent = tempfile.mkdtemp(prefix="site-", dir=module_dir)
    dest, sentinel = os.path.join(parent, DEST), os.path.join(parent, "sentinel")
    os.makedirs(dest)
    os.makedirs(sentinel)
    with open(os.path.join(dest, "current.yml"), "w", encoding="utf-8") as handle:
        handle.write("old: true\n")
    return parent, dest, sentinel


def _links_resolve_inside(dest):
    dest = os.path.realpath(dest)
    for base, dirs, files in os.walk(dest):
        for name in dirs + files:
            path = os.path.join(base, name)
            if os.path.islink(path):
                real = os.path.realpath(path)
                assert os.path.commonpath([dest, real]) == dest, (path, os.readlink(path), real)


def _restore(archive, members_found, dest):
    _list, _total, digest = members_found
    digest.add("root", ".", 0o750)
    metadata = {"root_mode": "750", "root_owner": [0, 0], "tree_sha256": digest.hexdigest()}
    return config_restore.restore_tree(archive, metadata, dest, SET_ID, progress=lambda _message: None)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=member_lists())
def test_check_members_refuses_or_the_archive_extracts_inside_its_destination_only(module_dir, specs):
    parent, dest, sentinel = _fresh_site(module_dir)
    try:
        archive = _archive(os.path.join(parent, "config.tar"), specs)
        assume(archive is not None)
        try:
            found = config_tree.check_members(archive)
        except RecoveryError as err:
            one_line(err)
            event("refused by check_members: " + " ".join(str(err).split("'")[-1].split()[:3]))
            return
        try:
            _restore(archive, found, dest)
        except RecoveryError as err:
            one_line(err)
            event("accepted, restore refused")
            assert os.listdir(dest) == ["current.yml"]
        else:
            event("accepted and restored (%s members)" % ("no" if not found[0] else "some"))
            assert len(list(config_tree.walk_tree(dest))) == len(found[0])
            _links_resolve_inside(dest)
        assert os.listdir(sentinel) == []
        beside = sorted(set(os.listdir(parent)) - {"config.tar", DEST, "sentinel"})
        assert all(name.startswith(DEST + ".pre-restore-") for name in beside), beside
    finally:
        shutil.rmtree(parent, ignore_errors=True)


@FUZZ
@given(data=st.data())
def test_check_members_on_a_damaged_archive_accepts_or_refuses_in_one_line(module_dir, data):
    path = os.path.join(module_dir, "damaged.tar")
    specs = [_spec("sub", "dir", mode=0o755), _spec("sub/app.yml", "file", data=b"a: 1\n" * 50, mode=0o640),
             _spec("link", "symlink", "sub/app.yml")]
    _archive(path, specs)
    with open(path, "rb") as handle:
        content = bytearray(handle.read())
    for _ in range(data.draw(st.integers(1, 6))):
        at = data.draw(st.integers(0, len(content) - 1))
        content[at] ^= data.draw(st.integers(1, 255))
    with open(path, "wb") as handle:
        handle.write(content)
    try:
        config_tree.check_members(path)
    except RecoveryError as err:
        one_line(err)

"""Hostile sets that tests/integration/test_safety.py does not cover yet.

Config archive members aimed at the destination's parent or at the restore's own staging directory, a wrong type in
every field of the manifest, a set directory that is a symlink to another set, and symlinks inside a set pointing
outside it. Each is refused in one line naming what is wrong, and nothing outside the destination changes.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import time
from types import SimpleNamespace

import pytest
from conftest import append_members, seal_signed, tree_state
from fault_helpers import copy_set, one_line
from manifest_samples import leaf_paths, replaced, valid_manifest

from ansible_collections.christmas.recovery.plugins.module_utils.config import config_tree
from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.core.fsutil import sha256_file
from ansible_collections.christmas.recovery.plugins.module_utils.sets.backup_set import make_backup_set
from ansible_collections.christmas.recovery.plugins.module_utils.sets.manifest import manifest_name, set_dir_name
from ansible_collections.christmas.recovery.plugins.module_utils.sets.restore_set import restore_set
from ansible_collections.christmas.recovery.plugins.module_utils.sets.verify import verify_set


def _quiet(_message):
    pass


def _read_json(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _write_sealed(path, data):
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(seal_signed(data), handle, indent=2)


def _edit_manifest(path, edit):
    """Edit and re-seal, as an attacker who controls the backup directory would: only the checks behind the
    checksum can tell."""
    data = _read_json(path)
    data.pop("manifest_sha256")
    edit(data)
    _write_sealed(path, data)


@pytest.fixture
def config_set(config_dir, tmp_dir):
    """One complete config-only set, made in-process; an ``outside`` directory beside it that must stay empty."""
    backup_dir = os.path.join(tmp_dir, "backups")
    report = make_backup_set(backup_dir, config_dir=config_dir, progress=_quiet)
    outside = os.path.join(tmp_dir, "outside")
    os.makedirs(outside)
    return SimpleNamespace(config=config_dir, parent=os.path.dirname(config_dir), backup_dir=backup_dir,
                           set_id=report["set_id"], manifest=report["manifest"], outside=outside,
                           set_dir=os.path.join(backup_dir, set_dir_name(report["set_id"])))


def _restore_config(env):
    return restore_set(env.manifest, env.backup_dir, components=("config",), config_dir=env.config, progress=_quiet)


def _surroundings(env):
    """What a config restore may not touch: everything beside the config tree, and the outside directory."""
    return {"beside": sorted(os.listdir(env.parent)), "outside": os.listdir(env.outside)}


# ---------------------------------------------------------------- archive members aimed at the parent or staging


def _member(name, kind=tarfile.REGTYPE, data=b"", linkname=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.mtime = kind, linkname, 0o644, int(time.time())
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data


def _replace_archive(env, extra, tree_digest=False):
    """The genuine archive with ``extra`` members appended; the manifest re-sealed to match it (and, with
    ``tree_digest``, its tree checksum too, so that only the member checks stand in the way)."""
    path = append_members(os.path.join(env.set_dir, config_tree.ARCHIVE_FILE), extra)
    size, digest = sha256_file(path)

    def edit(data):
        artifact = next(a for a in data["artifacts"] if a["kind"] == "config_tar")
        artifact.update(size=size, sha256=digest)
        if tree_digest:
            _list, _total, tree = config_tree.check_members(path)
            tree.add("root", ".", int(data["config"]["root_mode"], 8))
            data["config"]["tree_sha256"] = tree.hexdigest()

    _edit_manifest(env.manifest, edit)


def _staging_name(env):
    return ".%s.restore-%s" % (os.path.basename(env.config), env.set_id)


def _parent_aimed_members(env):
    """Per case: members, and the member name the refusal must quote."""
    base, staging = os.path.basename(env.config), _staging_name(env)
    return {
        "dotdot_dir": ([_member("..", tarfile.DIRTYPE)], "'..'"),
        "dotdot_slash_dir": ([_member("../", tarfile.DIRTYPE)], "'..'"),  # tarfile strips a directory's "/"
        "dot_dotdot": ([_member("./..", tarfile.DIRTYPE)], "'./..'"),
        "dest_basename": ([_member("../" + base, tarfile.DIRTYPE)], "'../%s'" % base),
        "dest_file": ([_member("../%s/app.yml" % base, data=b"evil: true\n")], "'../%s/app.yml'" % base),
        "staging_file": ([_member("../%s/evil" % staging, data=b"x")], "'../%s/evil'" % staging),
        "down_and_up": ([_member("strategies/../../evil", data=b"x")], "'strategies/../../evil'"),
        "link_to_parent": ([_member("up", tarfile.SYMTYPE, linkname="..")], "'up'"),
        "link_as_dest": ([_member(base, tarfile.SYMTYPE, linkname="../" + base)], "'%s'" % base),
        "link_as_staging": ([_member(staging, tarfile.SYMTYPE, linkname="../" + staging)], "'%s'" % staging),
        "link_then_write": ([_member("up", tarfile.SYMTYPE, linkname="strategies"),
                             _member("up/../../evil", data=b"x")], "'up/../../evil'"),
    }


CASES = ["dotdot_dir", "dotdot_slash_dir", "dot_dotdot", "dest_basename", "dest_file", "staging_file",
         "down_and_up", "link_to_parent", "link_as_dest", "link_as_staging", "link_then_write"]


@pytest.mark.parametrize("case", CASES)
def test_member_aimed_at_the_destination_parent_or_staging_is_refused_and_nothing_changes(config_set, case):
    env = config_set
    members, quoted = _parent_aimed_members(env)[case]
    _replace_archive(env, members, tree_digest=False)
    os.unlink(os.path.join(env.config, "run.sh"))  # so that a restore would have something to do
    before, around = tree_state(env.config), _surroundings(env)

    with pytest.raises(RecoveryError) as verify_err:
        verify_set(env.manifest, deep=True)
    with pytest.raises(RecoveryError) as restore_err:
        _restore_config(env)

    for err in (verify_err, restore_err):
        message = one_line(err.value)
        assert "config archive member " + quoted in message, message
    assert tree_state(env.config) == before
    assert _surroundings(env) == around


def _pax_member(name, **records):
    info, data = _member(name, data=b"x")
    info.pax_headers = records
    return info, data


# A PAX record overrides the header field: owners and times no file can have, a name the header does not show.
PAX_CASES = {
    "uid_negative": ([_pax_member("evil", uid="-1")], "'evil' has an owner or time that cannot be set"),
    "gid_too_large": ([_pax_member("evil", gid=str(2**32))], "'evil' has an owner or time that cannot be set"),
    "mtime_nan": ([_pax_member("evil", mtime="nan")], "'evil' has an owner or time that cannot be set"),
    "mtime_huge": ([_pax_member("evil", mtime="1e20")], "'evil' has an owner or time that cannot be set"),
    "path_dotdot": ([_pax_member("harmless", path="../evil")], "'../evil' is not a clean relative path"),
}


@pytest.mark.parametrize("case", sorted(PAX_CASES))
def test_member_with_hostile_pax_records_is_refused_before_anything_changes(config_set, case):
    env = config_set
    members, expected = PAX_CASES[case]
    _replace_archive(env, members, tree_digest=False)
    os.unlink(os.path.join(env.config, "run.sh"))
    before, around = tree_state(env.config), _surroundings(env)

    with pytest.raises(RecoveryError) as err:
        _restore_config(env)

    assert expected in one_line(err.value)
    assert tree_state(env.config) == before
    assert _surroundings(env) == around


def test_member_symlink_named_like_the_staging_directory_stays_inside_the_restored_tree(config_set):
    env = config_set
    staging = _staging_name(env)
    _replace_archive(env, [_member(staging, tarfile.SYMTYPE, linkname="."),
                           _member("nested", tarfile.DIRTYPE),
                           _member("nested/" + staging, tarfile.SYMTYPE, linkname="..")], tree_digest=True)
    os.unlink(os.path.join(env.config, "run.sh"))
    around = _surroundings(env)

    result = _restore_config(env)

    safety = os.path.basename(result["components"]["config"]["safety_copy"])
    assert _surroundings(env) == dict(around, beside=sorted(around["beside"] + [safety]))
    assert os.readlink(os.path.join(env.config, staging)) == "."
    assert os.path.realpath(os.path.join(env.config, "nested", staging)) == os.path.realpath(env.config)
    assert os.path.isfile(os.path.join(env.config, "run.sh"))


def test_symlink_planted_at_the_staging_path_is_replaced_not_followed(config_set):
    env = config_set
    planted = os.path.join(env.parent, _staging_name(env))
    os.symlink(env.outside, planted)
    os.unlink(os.path.join(env.config, "run.sh"))

    result = _restore_config(env)

    assert os.listdir(env.outside) == []
    assert not os.path.lexists(planted)
    assert os.path.isfile(os.path.join(env.config, "run.sh"))
    assert result["components"]["config"]["state"].startswith("restored")


# ---------------------------------------------------------------- a wrong type in every field of the manifest

# Fields the restore never reads, kept as written for the operator: free-form on purpose.
INFORMATIONAL = {("tools",), ("redis", "aof_enabled"), ("redis", "transfer"), ("redis", "keys_per_db_at_start"),
                 ("config", "entries")}
WRONG_FOR = {
    str: [7, 1.5, True, None, ["x"], {"value": "x"}],
    int: ["7", 7.5, True, None, [7], {"value": 7}],
    bool: ["yes", None, [True]],
    list: ["x", 7, None, {"0": "x"}],
    dict: ["x", 7, None, ["x"]],
}


def _field_name(path):
    """How the refusal names the field at ``path``: ``artifacts[0].size``, ``db.row_counts``, ``components``..."""
    if path[0] == "artifacts" and len(path) > 1:
        return "artifacts[%d]" % path[1] + ("." + path[2] if len(path) > 2 else "")
    if path[0] in ("db", "redis", "config"):
        return "section %r" % path[0] if len(path) == 1 else "%s.%s" % path[:2]
    return path[0]


def _wrong_type_cases():
    template = valid_manifest()
    cases = []
    for path in leaf_paths(template):
        if any(path[: len(skip)] == skip for skip in INFORMATIONAL):
            continue
        value = template
        for key in path:
            value = value[key]
        for wrong in WRONG_FOR[type(value)]:
            cases.append(pytest.param(path, wrong, id="%s=%s" % (".".join(map(str, path)), json.dumps(wrong))))
    return cases


@pytest.mark.parametrize("path, wrong", _wrong_type_cases())
def test_manifest_field_of_the_wrong_type_is_refused_in_one_line_naming_the_field(module_dir, path, wrong):
    manifest = os.path.join(module_dir, manifest_name(valid_manifest()["set_id"]))
    _write_sealed(manifest, replaced(valid_manifest(), path, wrong))

    with pytest.raises(RecoveryError) as err:
        verify_set(manifest)

    message = one_line(err.value)
    assert message.startswith("manifest %s is invalid: " % manifest), message
    assert _field_name(path) in message, message


BAD_VALUES = [
    (("format_version",), 1.0, "format_version"),
    (("config", "source_dir"), "", "config.source_dir"),
    (("config", "source_dir"), "/", "config.source_dir"),
    (("config", "source_dir"), "relative/config", "config.source_dir"),
    (("config", "root_owner"), [-1, 0], "config.root_owner"),
    (("config", "root_owner"), [0, 2**32], "config.root_owner"),
    (("config", "root_owner"), [0], "config.root_owner"),
    (("redis", "rdb_version"), "10", "redis.rdb_version"),
    (("artifacts", 4, "kind"), "pg_globals", "artifacts[4].kind"),
    (("artifacts", 2, "kind"), "pg_dump_directory", "component db has no artifact of kind pg_globals"),
]


@pytest.mark.parametrize("path, bad, named", BAD_VALUES, ids=["%s=%s" % (".".join(map(str, p)), json.dumps(v))
                                                              for p, v, _n in BAD_VALUES])
def test_manifest_value_the_restore_could_not_use_is_refused_in_one_line(module_dir, path, bad, named):
    manifest = os.path.join(module_dir, manifest_name(valid_manifest()["set_id"]))
    _write_sealed(manifest, replaced(valid_manifest(), path, bad))

    with pytest.raises(RecoveryError) as err:
        verify_set(manifest)

    assert named in one_line(err.value)


def test_manifest_nested_too_deeply_or_naming_an_unencodable_file_is_refused_in_one_line(module_dir):
    manifest = os.path.join(module_dir, manifest_name(valid_manifest()["set_id"]))
    with open(manifest, "w", encoding="utf-8") as handle:
        handle.write("[" * 100000 + "]" * 100000)
    with pytest.raises(RecoveryError) as err:
        verify_set(manifest)
    assert one_line(err.value).endswith("is not valid JSON: nested too deeply")

    data = valid_manifest()
    data["artifacts"][0]["path"] += "\ud800"  # json.dump writes it as the escape "\ud800", which JSON allows
    _write_sealed(manifest, data)
    with pytest.raises(RecoveryError) as err:
        verify_set(manifest)
    assert "is not a valid file name (unencodable character)" in one_line(err.value)


# ---------------------------------------------------------------- symlinks in and as the set directory


@pytest.mark.parametrize("target", ["relative", "absolute"])
def test_set_dir_that_is_a_symlink_to_another_set_is_refused(config_set, target):
    env = config_set
    other = time.strftime("%Y%m%d_%H%M%S", time.gmtime(time.time() - 86400))
    copy_set(env.backup_dir, env.set_id, env.backup_dir, other)
    shutil.rmtree(env.set_dir)
    other_dir = set_dir_name(other) if target == "relative" else os.path.join(env.backup_dir, set_dir_name(other))
    os.symlink(other_dir, env.set_dir)
    os.unlink(os.path.join(env.config, "run.sh"))
    before, around = tree_state(env.config), _surroundings(env)

    for attempt in (lambda: verify_set(env.manifest), lambda: _restore_config(env)):
        with pytest.raises(RecoveryError) as err:
            attempt()
        message = one_line(err.value)
        assert "passes through a symlink at '%s'" % set_dir_name(env.set_id) in message, message
    assert verify_set(os.path.join(env.backup_dir, manifest_name(other)))[0]["ok"]
    assert tree_state(env.config) == before
    assert _surroundings(env) == around


def _outside_file(env):
    path = os.path.join(env.outside, "passwd")
    shutil.copy("/etc/passwd", path)
    return path


def _extra_link_to_file(env):
    os.symlink(_outside_file(env), os.path.join(env.set_dir, "extra"))
    return "set_%s/extra: not listed in the manifest" % env.set_id


def _extra_link_to_dir(env):
    _outside_file(env)
    os.symlink(env.outside, os.path.join(env.set_dir, "extra"))
    return "set_%s/extra: not listed in the manifest" % env.set_id


def _artifact_replaced_by_link(env):
    # The same bytes, outside the set: size and checksum match, only the symlink gives it away.
    archive = os.path.join(env.set_dir, config_tree.ARCHIVE_FILE)
    outside = os.path.join(env.outside, config_tree.ARCHIVE_FILE)
    shutil.move(archive, outside)
    os.symlink(outside, archive)
    return "passes through a symlink at 'set_%s/%s'" % (env.set_id, config_tree.ARCHIVE_FILE)


@pytest.mark.parametrize("plant", [_extra_link_to_file, _extra_link_to_dir, _artifact_replaced_by_link],
                         ids=lambda plant: plant.__name__.strip("_"))
def test_symlink_inside_the_set_pointing_outside_is_refused(config_set, plant):
    env = config_set
    expected = plant(env)
    os.unlink(os.path.join(env.config, "run.sh"))
    before, around = tree_state(env.config), _surroundings(env)

    for attempt in (lambda: verify_set(env.manifest), lambda: _restore_config(env)):
        with pytest.raises(RecoveryError) as err:
            attempt()
        assert expected in one_line(err.value)
    assert tree_state(env.config) == before
    assert _surroundings(env) == around

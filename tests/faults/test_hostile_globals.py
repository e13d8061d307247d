"""A set whose db_globals.json carries SQL: privileges, settings, role attributes and duplicate keys crafted by
someone who controls the backup directory, the manifest re-sealed and re-signed so that only the globals' schema
stands in the way. Each is refused in one line naming the field, by verification and by the restore, and nothing
changes on the server. The legitimate globals (role and database settings, list settings with quoted names, a quoted
grantee) still come back identically on a new cluster."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest
from conftest import seal_signed, seed_platform
from sandbox import PG_BIN

from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.core.fsutil import sha256_file
from ansible_collections.christmas.recovery.plugins.module_utils.db import restore
from ansible_collections.christmas.recovery.plugins.module_utils.db.connection import PgTarget
from ansible_collections.christmas.recovery.plugins.module_utils.sets.backup_set import make_backup_set
from ansible_collections.christmas.recovery.plugins.module_utils.sets.manifest import load, set_dir_name
from ansible_collections.christmas.recovery.plugins.module_utils.sets.restore_set import restore_set
from ansible_collections.christmas.recovery.plugins.module_utils.sets.verify import verify_set

SETTINGS_SQL = """
ALTER ROLE analyst SET search_path = app, "My Schema", "$user", public;
ALTER ROLE analyst IN DATABASE christmas SET search_path = "Quo""ted", public;
ALTER ROLE analyst SET statement_timeout = '5min';
ALTER DATABASE christmas SET search_path = "Trading Desk", public, "$user";
ALTER DATABASE christmas SET application_name = 'it''s; DROP TABLE orders; --';
CREATE ROLE "we""ird role" NOLOGIN CONNECTION LIMIT 3;
GRANT CONNECT, TEMPORARY ON DATABASE christmas TO "we""ird role";
GRANT "we""ird role" TO analyst WITH ADMIN OPTION;
"""
INJECTION = "CONNECT ON DATABASE christmas TO PUBLIC; ALTER ROLE analyst SUPERUSER; --"


def _without_marker(settings):
    return [(database, role, [s for s in config if not s.startswith("christmas_recovery.")])
            for database, role, config in settings]


def _quiet(_message):
    pass


def _target(cluster):
    return PgTarget(host="127.0.0.1", port=cluster.port, user="christmas", admin_user="postgres",
                    admin_password=cluster.password, bin_dir=PG_BIN)


def server_state(cluster):
    """What a restore could change: roles and their attributes, databases, their ACLs and every setting, rows."""
    return {
        "roles": cluster.sql("SELECT rolname, rolsuper, rolcreaterole, rolcreatedb, rolcanlogin, rolreplication, "
                             "rolbypassrls, rolconnlimit FROM pg_roles ORDER BY 1"),
        "databases": cluster.sql("SELECT datname, oid, datacl::text, datconnlimit FROM pg_database ORDER BY 1"),
        "settings": cluster.sql("SELECT coalesce(d.datname, ''), coalesce(r.rolname, ''), s.setconfig "
                                "FROM pg_db_role_setting s LEFT JOIN pg_database d ON d.oid = s.setdatabase "
                                "LEFT JOIN pg_roles r ON r.oid = s.setrole ORDER BY 1, 2"),
        "members": cluster.sql("SELECT roleid::regrole::text, member::regrole::text, admin_option "
                               "FROM pg_auth_members ORDER BY 1, 2"),
        "orders": cluster.sql("SELECT count(*) FROM orders", dbname="christmas"),
    }


@pytest.fixture
def globals_set(make_cluster, tmp_dir):
    platform = seed_platform(make_cluster())
    platform.cluster.sql(SETTINGS_SQL, dbname="christmas")
    backup_dir = os.path.join(tmp_dir, "backups")
    report = make_backup_set(backup_dir, db=_target(platform.cluster), progress=_quiet)
    set_root = os.path.join(backup_dir, set_dir_name(report["set_id"]))
    return SimpleNamespace(platform=platform, backup_dir=backup_dir, manifest=report["manifest"], set_root=set_root,
                           globals=os.path.join(set_root, "db_globals.json"))


def _tamper(env, edit):
    """Rewrite db_globals.json with ``edit`` (a dict edited in place, or a function returning the new text) and
    re-seal and re-sign the manifest to match, as someone who controls the backup directory and the signing key
    would: only the globals' schema stands in the way."""
    with open(env.globals, encoding="utf-8") as handle:
        data = json.load(handle)
    text = edit(data)
    with open(env.globals, "w", encoding="utf-8") as handle:
        handle.write(text if isinstance(text, str) else json.dumps(data, indent=2))
    size, digest = sha256_file(env.globals)
    with open(env.manifest, encoding="utf-8") as handle:
        manifest = json.load(handle)
    manifest.pop("manifest_sha256")
    artifact = next(a for a in manifest["artifacts"] if a["kind"] == "pg_globals")
    artifact.update(size=size, sha256=digest)
    with open(env.manifest, "w", encoding="utf-8") as handle:
        json.dump(seal_signed(manifest), handle, indent=2)


def _role(data, name):
    return next(role for role in data["roles"] if role["name"] == name)


def _setting(data, role, prefix):
    return next(s for s in data["database"]["settings"] if s["role"] == role and s["setting"].startswith(prefix))


def _intruder(data, **changes):
    role = dict(_role(data, "analyst"), name="intruder", password_hash=None)
    role.update(changes)
    data["roles"].append(role)


def _duplicate_superuser(data):
    """A new role whose ``superuser`` is given twice, false then true: a JSON reader keeping the last one would
    create a superuser the reviewer of the first one never saw."""
    _intruder(data)
    text = json.dumps(data, indent=2)
    return text.replace('"name": "intruder",', '"name": "intruder", "superuser": false,', 1)


CASES = {
    "public_privilege": (lambda d: d["database"]["public_privileges"].append(INJECTION),
                         "database.public_privileges[0] must be one of"),
    "acl_privilege": (lambda d: d["database"]["acl"][0].__setitem__(1, INJECTION), "database.acl[0][1] must be one of"),
    "acl_grantee": (lambda d: d["database"]["acl"][0].__setitem__(0, 'x" TO PUBLIC; ALTER ROLE analyst SUPERUSER; --'),
                    "database.acl[0][0] must be a role name"),
    "search_path": (lambda d: _setting(d, "", "search_path=").__setitem__(
        "setting", "search_path=public; DROP TABLE orders; --"), "database.settings[%d].setting has an element"),
    "search_path_after_quote": (lambda d: _setting(d, "", "search_path=").__setitem__(
        "setting", 'search_path="x" FROM CURRENT'), "database.settings[%d].setting has text after a quoted element"),
    "setting_name": (lambda d: _setting(d, "", "work_mem=").__setitem__(
        "setting", "work_mem TO 1; ALTER ROLE analyst SUPERUSER; --=8MB"), "database.settings[%d].setting names no"),
    "superuser_text": (lambda d: _intruder(d, superuser="yes"), "roles[{n}].superuser must be true or false"),
    "connection_limit": (lambda d: _intruder(d, connection_limit=-5), "roles[{n}].connection_limit must be a whole"),
    "password_hash": (lambda d: _intruder(d, password_hash="x' SUPERUSER"), "roles[{n}].password_hash must be null"),
    "long_name": (lambda d: _intruder(d, name="r" * 64), "roles[{n}].name must be a name"),
    "unknown_field": (lambda d: _intruder(d, sql="ALTER ROLE analyst SUPERUSER"), "roles[{n}].sql is not a known"),
    "membership_unknown_member": (lambda d: d["memberships"].append(
        {"role": "christmas_readers", "member": "intruder", "admin_option": False}),
        "memberships[{m}].member must be a role of roles"),
    "duplicate_key": (_duplicate_superuser, "duplicate key 'superuser'"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_restore_refuses_sql_in_the_globals_naming_the_field_and_changes_nothing(globals_set, case):
    edit, expected = CASES[case]
    with open(globals_set.globals, encoding="utf-8") as handle:
        original = json.load(handle)
    expected = expected.format(n=len(original["roles"]), m=len(original["memberships"]))
    if "%d" in expected:
        index = {"search_path": "search_path=", "search_path_after_quote": "search_path=",
                 "setting_name": "work_mem="}[case]
        expected %= next(i for i, s in enumerate(original["database"]["settings"])
                         if s["role"] == "" and s["setting"].startswith(index))
    _tamper(globals_set, edit)
    cluster = globals_set.platform.cluster
    before = server_state(cluster)
    for run in (lambda: verify_set(globals_set.manifest, deep=True, pg_target=PgTarget(bin_dir=PG_BIN)),
                lambda: restore.restore_database(_target(cluster), load(globals_set.manifest), globals_set.set_root,
                                                 os.path.join(globals_set.set_root, "db.dump"), globals_set.globals,
                                                 force=True, check_mode=True, progress=_quiet),
                lambda: restore_set(globals_set.manifest, components=["db"], db=_target(cluster), force=True,
                                    progress=_quiet)):
        with pytest.raises(RecoveryError) as caught:
            run()
        message = str(caught.value)
        assert "\n" not in message
        assert "db globals %s" % globals_set.globals in message and expected in message, message
    assert server_state(cluster) == before
    assert not cluster.sql("SELECT 1 FROM pg_roles WHERE rolname = 'intruder' OR (rolsuper AND rolname <> 'postgres')")
    assert cluster.sql("SELECT count(*) FROM pg_database WHERE datname LIKE 'christmas\\_\\_%'") == [(0,)]


def test_roles_settings_quoted_list_settings_and_acl_come_back_identically(globals_set, make_cluster):
    new_cluster = make_cluster()
    report = restore_set(globals_set.manifest, components=["db"], db=_target(new_cluster), progress=_quiet)
    assert report["components"]["db"]["state"].startswith("restored")
    source, restored = server_state(globals_set.platform.cluster), server_state(new_cluster)
    for key in ("roles", "members", "orders"):
        assert restored[key] == source[key]
    assert [row[2:] for row in restored["databases"] if row[0] == "christmas"] == \
        [row[2:] for row in source["databases"] if row[0] == "christmas"]
    database_settings = next(row[2] for row in restored["settings"] if row[:2] == ("christmas", ""))
    assert 'search_path="Trading Desk", public, "$user"' in database_settings
    assert "application_name=it's; DROP TABLE orders; --" in database_settings
    assert _without_marker(restored["settings"]) == _without_marker(source["settings"])
    assert ("christmas", "analyst", ['search_path="Quo""ted", public']) in restored["settings"]

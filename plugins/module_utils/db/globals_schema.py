# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The strict schema of db_globals.json: every field with its exact type, names, the fixed vocabulary of database
privileges and settings parsed into a GUC name and a value (list-valued settings into their elements), so that the
restore rebuilds its statements from data and never executes a recorded text as SQL."""

from __future__ import annotations

import json
import re

from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError

# aclexplode's names, and the abbreviation GRANT accepts, each mapped to the keyword the restore writes.
DATABASE_PRIVILEGES = {"CONNECT": "CONNECT", "CREATE": "CREATE", "TEMPORARY": "TEMPORARY", "TEMP": "TEMPORARY"}
# The settings PostgreSQL keeps as a list of quoted identifiers (GUC_LIST_QUOTE).
LIST_SETTINGS = {"search_path", "temp_tablespaces", "session_preload_libraries", "local_preload_libraries"}
ROLE_FLAGS = ("superuser", "inherit", "createrole", "createdb", "login", "replication", "bypassrls")
ROLE_FIELDS = set(ROLE_FLAGS) | {"name", "connection_limit", "valid_until", "password_hash"}
TOP_FIELDS = {"roles", "memberships", "passwords_included", "database"}
MEMBERSHIP_FIELDS = {"role", "member", "admin_option"}
SETTING_FIELDS = {"role", "in_database", "setting"}
DATABASE_FIELDS = {"name", "owner", "encoding", "collate", "ctype", "connection_limit", "default_acl", "acl",
                   "public_privileges", "settings", "size_bytes"}
GUC_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)*\Z")
PASSWORD_HASH_RE = re.compile(r"(SCRAM-SHA-256\$[0-9]+:[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+:[A-Za-z0-9+/=]+"
                              r"|md5[0-9a-f]{32})\Z")
ENCODING_RE = re.compile(r"[A-Za-z0-9_]+\Z")
UNQUOTED_ELEMENT_RE = re.compile(r"[a-z_][a-z0-9_$]*\Z")


class GlobalsError(Exception):
    """One field of the globals is wrong; ``field`` is its path, e.g. ``roles[2].superuser``."""

    def __init__(self, field, problem):
        super().__init__("%s %s" % (field, problem))


def _reject_duplicates(pairs):
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError("duplicate key %r" % key)
        seen[key] = value
    return seen


def _object(value, field, fields):
    if not isinstance(value, dict):
        raise GlobalsError(field, "must be an object")
    for key in sorted(set(value) - fields):
        raise GlobalsError("%s.%s" % (field, key) if field else key, "is not a known field")
    for key in sorted(fields - set(value)):
        raise GlobalsError("%s.%s" % (field, key) if field else key, "is missing")
    return value


def _list(value, field):
    if not isinstance(value, list):
        raise GlobalsError(field, "must be a list")
    return value


def _bool(value, field):
    if not isinstance(value, bool):
        raise GlobalsError(field, "must be true or false")
    return value


def _int(value, field, minimum):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise GlobalsError(field, "must be a whole number of at least %d" % minimum)
    return value


def _text(value, field):
    if not isinstance(value, str) or not value or "\x00" in value:
        raise GlobalsError(field, "must be a non-empty text without NUL")
    return value


def _name(value, field):
    if not isinstance(value, str) or not value or "\x00" in value or len(value.encode("utf-8")) > 63:
        raise GlobalsError(field, "must be a name: a non-empty text of at most 63 bytes without NUL")
    return value


def _privilege(value, field):
    if value not in DATABASE_PRIVILEGES:
        raise GlobalsError(field, "must be one of %s" % ", ".join(sorted(DATABASE_PRIVILEGES)))
    return DATABASE_PRIVILEGES[value]


def _regrole_name(value, field):
    """A role name as ``regrole::text`` writes it: plain, or double-quoted with doubled inner quotes."""
    _text(value, field)
    if value.startswith('"'):
        if len(value) < 3 or not value.endswith('"') or '"' in value[1:-1].replace('""', ""):
            raise GlobalsError(field, "must be a role name, plain or double-quoted")
        value = value[1:-1].replace('""', '"')
    elif not UNQUOTED_ELEMENT_RE.match(value):  # regrole quotes every name that is not a plain lowercase identifier
        raise GlobalsError(field, "must be a role name, plain or double-quoted")
    return _name(value, field)


def split_list_value(value, field):
    """The elements of a list setting as PostgreSQL stores it (``app, "My Schema", "$user"``); refused otherwise."""
    elements, rest = [], value
    while True:
        rest = rest.lstrip(" ")
        if rest.startswith('"'):
            match = re.match(r'"((?:[^"]|"")*)"', rest)
            if not match:
                raise GlobalsError(field, "has an unterminated quoted element")
            element, rest = match.group(1).replace('""', '"'), rest[match.end():]
        else:
            match = re.match(r"[^,]*", rest)
            element, rest = match.group(0).rstrip(" "), rest[match.end():]
            if not UNQUOTED_ELEMENT_RE.match(element):
                raise GlobalsError(field, "has an element that is not an identifier: %r" % element[:40])
        if "\x00" in element or len(element.encode("utf-8")) > 63:
            raise GlobalsError(field, "has an element longer than 63 bytes or with NUL")
        elements.append(element)
        rest = rest.lstrip(" ")
        if not rest:
            return elements
        if not rest.startswith(","):
            raise GlobalsError(field, "has text after a quoted element: %r" % rest[:40])
        rest = rest[1:]


def parse_setting(value, field):
    """``name=value`` into (name, value) with value a text, or the list of elements of a list setting."""
    if not isinstance(value, str) or "=" not in value or "\x00" in value:
        raise GlobalsError(field, "must be a text name=value")
    name, setting = value.split("=", 1)
    if not GUC_NAME_RE.match(name):
        raise GlobalsError(field, "names no valid setting: %r" % name[:40])
    if name.lower() in LIST_SETTINGS:
        return name, split_list_value(setting, field)
    return name, setting


def _role(value, field):
    role = _object(value, field, ROLE_FIELDS)
    _name(role["name"], field + ".name")
    for flag in ROLE_FLAGS:
        _bool(role[flag], "%s.%s" % (field, flag))
    _int(role["connection_limit"], field + ".connection_limit", -1)
    if role["valid_until"] is not None:
        _text(role["valid_until"], field + ".valid_until")
    if role["password_hash"] is not None and not (
            isinstance(role["password_hash"], str) and PASSWORD_HASH_RE.match(role["password_hash"])):
        raise GlobalsError(field + ".password_hash", "must be null or a SCRAM-SHA-256$ or md5 password hash")
    return role


def _is_known(name, known):
    return name in known or name.startswith("pg_")  # memberships of PostgreSQL's predefined roles are recorded


def _database(value, known):
    database = _object(value, "database", DATABASE_FIELDS)
    _name(database["name"], "database.name")
    _name(database["owner"], "database.owner")
    if not isinstance(database["encoding"], str) or not ENCODING_RE.match(database["encoding"]):
        raise GlobalsError("database.encoding", "must be an encoding name")
    _text(database["collate"], "database.collate")
    _text(database["ctype"], "database.ctype")
    _int(database["connection_limit"], "database.connection_limit", -1)
    _bool(database["default_acl"], "database.default_acl")
    _int(database["size_bytes"], "database.size_bytes", 0)
    for i, entry in enumerate(_list(database["acl"], "database.acl")):
        field = "database.acl[%d]" % i
        if not isinstance(entry, list) or len(entry) != 3:
            raise GlobalsError(field, "must be a list [grantee, privilege, grantable]")
        entry[0] = _regrole_name(entry[0], field + "[0]")
        entry[1] = _privilege(entry[1], field + "[1]")
        _bool(entry[2], field + "[2]")
    privileges = _list(database["public_privileges"], "database.public_privileges")
    for i, privilege in enumerate(privileges):
        privileges[i] = _privilege(privilege, "database.public_privileges[%d]" % i)
    for i, item in enumerate(_list(database["settings"], "database.settings")):
        field = "database.settings[%d]" % i
        setting = _object(item, field, SETTING_FIELDS)
        if setting["role"] != "" and not (isinstance(setting["role"], str) and setting["role"] in known):
            raise GlobalsError(field + ".role", "must be \"\" or a role of roles")
        _bool(setting["in_database"], field + ".in_database")
        if setting["role"] == "" and not setting["in_database"]:
            raise GlobalsError(field + ".in_database", "must be true for a setting of no role")
        setting["parsed"] = parse_setting(setting["setting"], field + ".setting")
    return database


def parse_globals(data):
    """The validated globals (privileges as their keywords, settings with ``parsed``); GlobalsError otherwise."""
    _object(data, "", TOP_FIELDS)
    _bool(data["passwords_included"], "passwords_included")
    roles = [_role(role, "roles[%d]" % i) for i, role in enumerate(_list(data["roles"], "roles"))]
    known = set()
    for i, role in enumerate(roles):
        if role["name"] in known:
            raise GlobalsError("roles[%d].name" % i, "repeats the role %r" % role["name"])
        known.add(role["name"])
    for i, item in enumerate(_list(data["memberships"], "memberships")):
        field = "memberships[%d]" % i
        grant = _object(item, field, MEMBERSHIP_FIELDS)
        if not _is_known(_name(grant["role"], field + ".role"), known):
            raise GlobalsError(field + ".role", "must be a role of roles or a predefined pg_ role")
        if _name(grant["member"], field + ".member") not in known:
            raise GlobalsError(field + ".member", "must be a role of roles")
        _bool(grant["admin_option"], field + ".admin_option")
    _database(data["database"], known)
    return data


def load_globals(path):
    """db_globals.json parsed against the schema; one line naming the file and the field otherwise."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle, object_pairs_hook=_reject_duplicates)
    except (OSError, ValueError) as err:
        raise RecoveryError("db globals %s are unreadable: %s" % (path, err)) from None
    try:
        return parse_globals(data)
    except GlobalsError as err:
        raise RecoveryError("db globals %s: %s" % (path, err)) from None

# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The globals a database needs on a new host: its roles, their memberships and settings, the database's own ACL
and settings; recorded by the backup, recreated by the restore."""

from __future__ import annotations

from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.db.connection import fetch, one, sql_error
from ansible_collections.christmas.recovery.plugins.module_utils.db.globals_schema import (  # noqa: F401 - API
    DATABASE_PRIVILEGES,
    load_globals,
)

try:
    import psycopg2
    from psycopg2 import sql
except ImportError:  # reported by the modules with missing_required_lib
    pass


GLOBALS_FILE = "db_globals.json"
MARKER_SETTING = "christmas_recovery.restored_set"
# The marker's setting of a database (its name, then MARKER_SETTING + "=%"): "MARKER_SETTING=value".
MARKER_QUERY = ("SELECT item FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase, "
                "unnest(s.setconfig) item WHERE d.datname = %s AND s.setrole = 0 AND item LIKE %s")
ROLES_QUERY = """
WITH RECURSIVE db AS (SELECT oid, datdba, datacl FROM pg_database WHERE datname = current_database()),
user_ns AS (SELECT oid, nspowner, nspacl FROM pg_namespace
            WHERE nspname NOT IN ('pg_catalog', 'information_schema') AND nspname NOT LIKE 'pg\\_toast%%'),
base(oid) AS (
  SELECT datdba FROM db
  UNION SELECT nspowner FROM user_ns
  UNION SELECT (aclexplode(nspacl)).grantee FROM user_ns WHERE nspacl IS NOT NULL
  UNION SELECT relowner FROM pg_class WHERE relnamespace IN (SELECT oid FROM user_ns)
  UNION SELECT (aclexplode(relacl)).grantee FROM pg_class
        WHERE relacl IS NOT NULL AND relnamespace IN (SELECT oid FROM user_ns)
  UNION SELECT proowner FROM pg_proc WHERE pronamespace IN (SELECT oid FROM user_ns)
  UNION SELECT (aclexplode(datacl)).grantee FROM db WHERE datacl IS NOT NULL
  UNION SELECT defaclrole FROM pg_default_acl
  UNION SELECT (aclexplode(defaclacl)).grantee FROM pg_default_acl
  UNION SELECT setrole FROM pg_db_role_setting WHERE setdatabase = (SELECT oid FROM db)
),
closure(oid) AS (
  SELECT oid FROM base WHERE oid >= 16384
  UNION
  SELECT CASE WHEN m.member = c.oid THEN m.roleid ELSE m.member END
  FROM pg_auth_members m JOIN closure c ON c.oid IN (m.member, m.roleid)
  WHERE m.roleid >= 16384 AND m.member >= 16384
)
SELECT r.rolname, r.rolsuper, r.rolinherit, r.rolcreaterole, r.rolcreatedb, r.rolcanlogin, r.rolreplication,
       r.rolbypassrls, r.rolconnlimit, r.rolvaliduntil::text
FROM pg_roles r WHERE r.oid IN (SELECT oid FROM closure) ORDER BY r.rolname
"""

MEMBERSHIP_QUERY = """
SELECT g.rolname, m.rolname, am.admin_option
FROM pg_auth_members am JOIN pg_roles g ON g.oid = am.roleid JOIN pg_roles m ON m.oid = am.member
WHERE m.rolname = ANY(%(names)s) AND (g.rolname = ANY(%(names)s) OR g.oid < 16384)
ORDER BY 1, 2
"""

DATABASE_QUERY = """
SELECT pg_get_userbyid(d.datdba), pg_encoding_to_char(d.encoding), d.datcollate, d.datctype, d.datconnlimit,
       COALESCE((SELECT json_agg(json_build_array(a.grantee::regrole::text, a.privilege_type, a.is_grantable))
                 FROM aclexplode(d.datacl) a WHERE a.grantee <> 0), '[]'::json),
       COALESCE((SELECT json_agg(a.privilege_type) FROM aclexplode(d.datacl) a WHERE a.grantee = 0), '[]'::json),
       d.datacl IS NULL, pg_database_size(d.oid)
FROM pg_database d WHERE d.datname = current_database()
"""

SETTINGS_QUERY = """
SELECT COALESCE(r.rolname, ''), s.setdatabase <> 0, s.setconfig
FROM pg_db_role_setting s LEFT JOIN pg_roles r ON r.oid = s.setrole
WHERE (s.setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())
       AND (s.setrole = 0 OR r.rolname = ANY(%(names)s)))
   OR (s.setdatabase = 0 AND r.rolname = ANY(%(names)s))
ORDER BY 1, 2
"""


def marker_value(rows):
    """The marker's value from the rows of MARKER_QUERY, None when the database carries none."""
    return rows[0][0].split("=", 1)[1] if rows else None


def collect_globals(conn, with_passwords):
    """Roles the database needs (owner, grantees, their memberships), the database's own ACL and settings."""
    passwords = {}
    if with_passwords:
        passwords = dict(fetch(conn, "SELECT rolname, rolpassword FROM pg_authid WHERE rolpassword IS NOT NULL"))
    roles = [{
        "name": row[0], "superuser": row[1], "inherit": row[2], "createrole": row[3], "createdb": row[4],
        "login": row[5], "replication": row[6], "bypassrls": row[7], "connection_limit": row[8],
        "valid_until": row[9], "password_hash": passwords.get(row[0]),
    } for row in fetch(conn, ROLES_QUERY)]
    names = [role["name"] for role in roles]
    memberships = [{"role": g, "member": m, "admin_option": a}
                   for g, m, a in fetch(conn, MEMBERSHIP_QUERY, {"names": names})]
    settings = [{"role": role, "in_database": in_db, "setting": item}
                for role, in_db, config in fetch(conn, SETTINGS_QUERY, {"names": names})
                for item in config or [] if not item.startswith(MARKER_SETTING + "=")]
    owner, encoding, collate, ctype, connlimit, acl, public_privs, default_acl, size = fetch(conn, DATABASE_QUERY)[0]
    return {
        "roles": roles,
        "memberships": memberships,
        "passwords_included": bool(with_passwords),
        "database": {
            "name": one(conn, "SELECT current_database()"), "owner": owner, "encoding": encoding,
            "collate": collate, "ctype": ctype, "connection_limit": connlimit, "default_acl": default_acl,
            "acl": acl, "public_privileges": public_privs, "settings": settings, "size_bytes": size,
        },
    }


def _role_clause(role):
    flags = [
        "SUPERUSER" if role["superuser"] else "NOSUPERUSER", "INHERIT" if role["inherit"] else "NOINHERIT",
        "CREATEROLE" if role["createrole"] else "NOCREATEROLE", "CREATEDB" if role["createdb"] else "NOCREATEDB",
        "LOGIN" if role["login"] else "NOLOGIN", "REPLICATION" if role["replication"] else "NOREPLICATION",
        "BYPASSRLS" if role["bypassrls"] else "NOBYPASSRLS",
    ]
    parts = [sql.SQL(" ".join(flags)), sql.SQL("CONNECTION LIMIT {}").format(sql.Literal(role["connection_limit"]))]
    if role["valid_until"]:
        parts.append(sql.SQL("VALID UNTIL {}").format(sql.Literal(role["valid_until"])))
    if role["password_hash"]:
        parts.append(sql.SQL("PASSWORD {}").format(sql.Literal(role["password_hash"])))
    return sql.SQL(" ").join(parts)


def _set_clause(setting):
    """SET from a parsed setting (globals_schema): a list setting element by element, every value a literal."""
    name, value = setting["parsed"]
    if isinstance(value, list):
        rendered = sql.SQL(", ").join(sql.Literal(element) for element in value)
    else:
        rendered = sql.Literal(value)
    return sql.SQL("SET {} TO {}").format(sql.SQL(".").join(sql.Identifier(part) for part in name.split(".")),
                                          rendered)


def create_missing_roles(conn, globals_data):
    """Create the roles the target lacks, with their attributes, role settings and memberships; touch no other."""
    existing = {row[0] for row in fetch(conn, "SELECT rolname FROM pg_roles")}
    created = []
    with conn.cursor() as cur:
        for role in globals_data["roles"]:
            if role["name"] in existing:
                continue
            try:
                cur.execute(sql.SQL("CREATE ROLE {} WITH ").format(sql.Identifier(role["name"])) + _role_clause(role))
                for setting in globals_data["database"]["settings"]:
                    if setting["role"] == role["name"] and not setting["in_database"]:
                        cur.execute(sql.SQL("ALTER ROLE {} ").format(sql.Identifier(role["name"]))
                                    + _set_clause(setting))
            except psycopg2.Error as err:
                raise sql_error("creating role %s" % role["name"], err) from None
            created.append(role)
        names = {role["name"] for role in created}
        for grant in globals_data["memberships"]:
            if grant["role"] in names or grant["member"] in names:
                statement = sql.SQL("GRANT {} TO {}").format(sql.Identifier(grant["role"]),
                                                              sql.Identifier(grant["member"]))
                if grant["admin_option"]:
                    statement += sql.SQL(" WITH ADMIN OPTION")
                try:
                    cur.execute(statement)
                except psycopg2.Error as err:
                    raise sql_error("granting %s to %s" % (grant["role"], grant["member"]), err) from None
    return created


def _keyword(privilege):
    """A privilege of the fixed vocabulary as its keyword; anything else never reaches the SQL."""
    if privilege not in DATABASE_PRIVILEGES:
        raise RecoveryError("database privilege %r is not one of %s" % (privilege, ", ".join(DATABASE_PRIVILEGES)))
    return sql.SQL(DATABASE_PRIVILEGES[privilege])


def apply_database_properties(conn, name, database, set_id):
    ident = sql.Identifier(name)
    statements = [sql.SQL("ALTER DATABASE {} CONNECTION LIMIT {}").format(
        ident, sql.Literal(database["connection_limit"]))]
    if not database["default_acl"]:
        statements.append(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(ident))
        for privilege in database["public_privileges"]:
            statements.append(sql.SQL("GRANT {} ON DATABASE {} TO PUBLIC").format(_keyword(privilege), ident))
        for grantee, privilege, grantable in database["acl"]:
            statement = sql.SQL("GRANT {} ON DATABASE {} TO {}").format(
                _keyword(privilege), ident, sql.Identifier(grantee))
            statements.append(statement + sql.SQL(" WITH GRANT OPTION") if grantable else statement)
    for setting in database["settings"]:
        if setting["in_database"] and setting["role"] == "":
            statements.append(sql.SQL("ALTER DATABASE {} ").format(ident) + _set_clause(setting))
        elif setting["in_database"]:
            statements.append(sql.SQL("ALTER ROLE {} IN DATABASE {} ").format(sql.Identifier(setting["role"]), ident)
                              + _set_clause(setting))
    statements.append(sql.SQL("ALTER DATABASE {} SET {} TO {}").format(
        ident, sql.SQL(MARKER_SETTING), sql.Literal(set_id)))
    with conn.cursor() as cur:
        for statement in statements:
            cur.execute(statement)



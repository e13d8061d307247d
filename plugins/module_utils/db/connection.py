# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""PostgreSQL connections: where a database is and who logs in, a connection that waits for a starting server,
the password handed to child processes without argv or environ."""

from __future__ import annotations

import contextlib
import os
import re
import time
from dataclasses import dataclass

from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError

try:
    import psycopg2
    from psycopg2 import sql  # noqa: F401 - for the callers that build statements
    from psycopg2.extensions import ISOLATION_LEVEL_AUTOCOMMIT
    HAS_PSYCOPG2 = True
except ImportError:  # reported by the modules with missing_required_lib
    HAS_PSYCOPG2 = False


@dataclass
class PgTarget:
    """Where a database lives and who talks to it; the admin (a superuser) is used when given."""

    host: str = "localhost"
    port: int = 5432
    dbname: str = "christmas"
    user: str = "christmas"
    password: str = None
    admin_user: str = None
    admin_password: str = None
    maintenance_db: str = "postgres"
    bin_dir: str = None
    connect_wait: float = 0
    node: str = None  # which member of an HA pair this is, recorded in the manifest

    @property
    def login(self):
        if self.admin_user:
            return self.admin_user, self.admin_password
        return self.user, self.password

    def describe(self):
        return "%s@%s:%s/%s" % (self.login[0], self.host, self.port, self.dbname)

    @contextlib.contextmanager
    def libpq_env(self, dbname=None):
        """Yield (environment, file descriptors) for a child process. The password is in an anonymous in-memory
        0600 file passed as PGPASSFILE: in neither argv nor environ, never on disk, gone when the processes are."""
        user, password = self.login
        env = {"PGHOST": self.host, "PGPORT": str(self.port), "PGUSER": user, "PGDATABASE": dbname or self.dbname,
               "PGAPPNAME": "christmas.recovery", "PGCONNECT_TIMEOUT": "10", "PGPASSWORD": None}
        if password is None:
            yield env, ()
            return
        fd = os.memfd_create("pgpass")
        try:
            os.fchmod(fd, 0o600)  # libpq ignores a password file that others could read
            os.write(fd, pgpass_line(password, user).encode("utf-8"))
            yield dict(env, PGPASSFILE="/proc/self/fd/%d" % fd), (fd,)
        finally:
            os.close(fd)


def pgpass_line(password, user):
    """The one line of a libpq password file for ``password``: ``:`` and ``\\`` escaped; a line break or NUL, which
    the file cannot hold, refused naming the user (never the password)."""
    if any(char in password for char in "\r\n\x00"):
        raise RecoveryError("the password of PostgreSQL user %s holds a line break or NUL, which libpq's password file "
                            "cannot express: choose a password without one" % user)
    escaped = password.replace("\\", "\\\\").replace(":", "\\:")
    return "*:*:*:*:%s\n" % escaped


# A server that is starting, restarting or not yet listening: worth waiting for (connect_wait), unlike a wrong
# password or a missing database.
STARTING_RE = re.compile(r"Connection refused|starting up|shutting down|not yet accepting|server closed the connection"
                         r"|Connection reset|No such file or directory|could not receive data")


def connect(target, dbname=None, autocommit=True):
    """A connection; while the server is still starting, retried for up to ``target.connect_wait`` seconds."""
    if not HAS_PSYCOPG2:
        raise RecoveryError("psycopg2 is required on this host (pip install psycopg2-binary)")
    user, password = target.login
    deadline = time.monotonic() + target.connect_wait
    while True:
        try:
            conn = psycopg2.connect(
                host=target.host, port=target.port, user=user, password=password, dbname=dbname or target.dbname,
                connect_timeout=10, application_name="christmas.recovery",
            )
            break
        except psycopg2.Error as err:
            first = (str(err).strip().splitlines() or ["unknown error"])[0]
            if STARTING_RE.search(str(err)) and time.monotonic() < deadline:
                time.sleep(0.5)
                continue
            raise RecoveryError("cannot connect to PostgreSQL %s@%s:%s/%s: %s" % (
                user, target.host, target.port, dbname or target.dbname, first)) from None
    if autocommit:
        conn.set_isolation_level(ISOLATION_LEVEL_AUTOCOMMIT)
    return conn


@contextlib.contextmanager
def session(target, dbname=None):
    """A connection for a few statements, closed however they end."""
    conn = connect(target, dbname=dbname)
    try:
        yield conn
    finally:
        conn.close()


def fetch(conn, query, params=None):
    with conn.cursor() as cur:
        cur.execute(query, params)
        return cur.fetchall()


def execute(conn, query, params=None):
    with conn.cursor() as cur:
        cur.execute(query, params)


def one(conn, query, params=None):
    return fetch(conn, query, params)[0][0]


def sql_error(what, err):
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return RecoveryError("%s: %s" % (what, first))



# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  backend:
    description:
      - Where the incident database lives; C(sqlite) is a file on the managed host, C(postgresql) a table in a
        PostgreSQL database.
    type: str
    default: sqlite
    choices: [sqlite, postgresql]
  db:
    description:
      - The SQLite file (with I(backend=sqlite)). When missing it is created 0600, its directory 0700.
    type: path
    default: /var/lib/christmas/incidents.sqlite
  pg_host:
    description: PostgreSQL host name, IP address or Unix socket directory (with I(backend=postgresql)).
    type: str
    default: localhost
  pg_port:
    description: PostgreSQL port.
    type: int
    default: 5432
  pg_dbname:
    description: PostgreSQL database holding the incident table; required with I(backend=postgresql).
    type: str
  pg_user:
    description: PostgreSQL login; when not given, libpq's default (the user running the module).
    type: str
  pg_password:
    description: Password of I(pg_user); never logged nor put on a command line.
    type: str
  pg_table:
    description:
      - The incident table, as C(name) or C(schema.name); quoted as an identifier.
    type: str
    default: christmas_incidents
"""

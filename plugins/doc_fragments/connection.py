# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  db_host:
    description:
      - PostgreSQL host name, IP address, or directory of its unix socket.
    type: str
    default: localhost
  db_port:
    description: PostgreSQL port.
    type: int
    default: 5432
  db_name:
    description: The platform database.
    type: str
    default: christmas
  db_user:
    description:
      - Role that owns the platform database. Used for every connection unless I(db_admin_user) is given.
    type: str
    default: christmas
  db_password:
    description:
      - Password of I(db_user). pg_dump and pg_restore read it from an anonymous in-memory 0600 password file; it is
        never on a command line, in an environment variable or on disk.
    type: str
  db_admin_user:
    description:
      - A superuser. When given, it makes the connections instead of I(db_user); backups then carry the roles'
        password hashes, and restores can create missing roles and the database on a brand-new cluster.
    type: str
  db_admin_password:
    description: Password of I(db_admin_user).
    type: str
  pg_bin_dir:
    description:
      - Directory of pg_dump and pg_restore. By default the client matching the server's major version under
        C(/usr/lib/postgresql/VERSION/bin), then the newest installed one, then C(PATH).
    type: path
  redis_host:
    description: Redis host name or IP address.
    type: str
    default: localhost
  redis_port:
    description: Redis port.
    type: int
    default: 6379
  redis_user:
    description:
      - Redis ACL user (Redis 6 or newer), authenticated with C(AUTH user password). By default the default user.
        A backup needs C(sync) and C(replconf), C(info) and C(client); a restore checks in its preflight that the
        user may run every command it sends on every key of the set.
    type: str
  redis_password:
    description: Redis password (C(requirepass), or the password of I(redis_user)).
    type: str
  jobs:
    description:
      - Parallel jobs for pg_dump, pg_restore and checksumming.
    type: int
    default: 2
  connect_wait:
    description:
      - Seconds to keep retrying while PostgreSQL or Redis is still starting (nothing listening yet, starting up,
        loading its data), as after the service was just started. 0 fails at once.
    type: int
    default: 0
  config_dir:
    description:
      - The platform's config directory. A backup needs it unless I(skip_config=true); a restore writes the tree
        there, by default into the directory it was backed up from.
    type: path
  skip_db:
    description: Leave the database out (of the backup set, or alone in a restore).
    type: bool
    default: false
  skip_redis:
    description: Leave Redis out (of the backup set, or alone in a restore).
    type: bool
    default: false
  skip_config:
    description: Leave the config tree out (of the backup set, or alone in a restore).
    type: bool
    default: false
requirements:
  - psycopg2 (psycopg2-binary) and, for Redis, anycrc (or Debian's python3-crcmod) Python libraries on the managed
    node.
  - PostgreSQL client programs (pg_dump, pg_restore) of the server's major version or newer.
"""

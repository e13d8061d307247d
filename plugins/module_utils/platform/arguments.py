# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Options shared by the backup and restore modules (documented once in the ``christmas.recovery.connection``
fragment): where the servers and the config tree are, and which components to leave out."""

from __future__ import annotations

from ansible.module_utils.basic import missing_required_lib

from ansible_collections.christmas.recovery.plugins.module_utils.db import connection
from ansible_collections.christmas.recovery.plugins.module_utils.db.connection import PgTarget
from ansible_collections.christmas.recovery.plugins.module_utils.objectstore.s3 import Bucket
from ansible_collections.christmas.recovery.plugins.module_utils.platform.pg_service import ComposeServer, ServiceServer
from ansible_collections.christmas.recovery.plugins.module_utils.platform.services import service_manager
from ansible_collections.christmas.recovery.plugins.module_utils.redis import redis_rdb
from ansible_collections.christmas.recovery.plugins.module_utils.redis.redis_keys import RedisTarget
from ansible_collections.christmas.recovery.plugins.module_utils.sets import encryption
from ansible_collections.christmas.recovery.plugins.module_utils.sets.protection import Protection
from ansible_collections.christmas.recovery.plugins.module_utils.transport.offsite import Remote
from ansible_collections.christmas.recovery.plugins.module_utils.wal.pg_server import PG_BIN, PgCtlServer


def connection_argument_spec():
    return {
        "db_host": {"type": "str", "default": "localhost"},
        "db_port": {"type": "int", "default": 5432},
        "db_name": {"type": "str", "default": "christmas"},
        "db_user": {"type": "str", "default": "christmas"},
        "db_password": {"type": "str", "no_log": True},
        "db_admin_user": {"type": "str"},
        "db_admin_password": {"type": "str", "no_log": True},
        "pg_bin_dir": {"type": "path"},
        "redis_host": {"type": "str", "default": "localhost"},
        "redis_port": {"type": "int", "default": 6379},
        "redis_user": {"type": "str"},
        "redis_password": {"type": "str", "no_log": True},
        "jobs": {"type": "int", "default": 2},
        "connect_wait": {"type": "int", "default": 0},
        "config_dir": {"type": "path"},
        "skip_db": {"type": "bool", "default": False},
        "skip_redis": {"type": "bool", "default": False},
        "skip_config": {"type": "bool", "default": False},
    }


def enabled_components(params):
    return [name for name in ("db", "redis", "config") if not params["skip_" + name]]


def pg_target(params):
    return PgTarget(host=params["db_host"], port=params["db_port"], dbname=params["db_name"], user=params["db_user"],
                    password=params["db_password"], admin_user=params["db_admin_user"],
                    admin_password=params["db_admin_password"], bin_dir=params["pg_bin_dir"],
                    connect_wait=params["connect_wait"], node=params.get("db_node"))


def redis_target(params):
    return RedisTarget(host=params["redis_host"], port=params["redis_port"], password=params["redis_password"],
                       connect_wait=params["connect_wait"], user=params["redis_user"],
                       writers=params.get("redis_writers") or "pause")


def vault_argument_spec():
    """The vault options of the ``christmas.recovery.vault`` fragment."""
    return {
        "vault_host": {"type": "str", "required": True},
        "vault_port": {"type": "int", "default": 22},
        "vault_user": {"type": "str", "required": True},
        "vault_dir": {"type": "str", "required": True},
        "ssh_key_file": {"type": "path", "required": True},
        "known_hosts_file": {"type": "path", "required": True},
        "connect_timeout": {"type": "int", "default": 10},
    }


def vault_remote(params):
    return Remote(host=params["vault_host"], port=params["vault_port"], user=params["vault_user"],
                  directory=params["vault_dir"], key_file=params["ssh_key_file"],
                  known_hosts=params["known_hosts_file"], connect_timeout=params["connect_timeout"])


def s3_argument_spec(required=True):
    """The options of the ``christmas.recovery.s3`` fragment (``required=False`` where the bucket is optional)."""
    return {
        "s3_endpoint": {"type": "str", "required": required},
        "s3_bucket": {"type": "str", "required": required},
        "s3_prefix": {"type": "str", "required": required},
        "s3_region": {"type": "str", "default": "us-east-1"},
        "s3_access_key": {"type": "str", "required": required, "no_log": False},
        "s3_secret_key": {"type": "str", "required": required, "no_log": True},
        "s3_uri_style": {"type": "str", "choices": ["path", "host"], "default": "path"},
        "s3_ca_file": {"type": "path"},
        "s3_validate_certs": {"type": "bool", "default": True},
        "s3_timeout": {"type": "int", "default": 60},
    }


def s3_bucket(params):
    return Bucket(endpoint=params["s3_endpoint"], bucket=params["s3_bucket"], prefix=params["s3_prefix"],
                  region=params["s3_region"], access_key=params["s3_access_key"],
                  secret_key=params["s3_secret_key"], uri_style=params["s3_uri_style"], ca_file=params["s3_ca_file"],
                  validate_certs=params["s3_validate_certs"], timeout=params["s3_timeout"],
                  lock_days=params.get("s3_object_lock_days") or 0)


def signing_argument_spec(trust=True):
    """The options of the ``christmas.recovery.signing`` fragment (and of ``.trust`` where sets are checked)."""
    spec = {"signing_key_file": {"type": "path"}}
    if trust:
        spec.update(signing_public_key_file={"type": "path"}, signing_public_key={"type": "str"},
                    allow_unsigned={"type": "bool", "default": False})
    return spec


PGBACKREST_CIPHER_PURPOSE = "pgbackrest-repo1-cipher-pass"
BUCKET_CIPHER_PURPOSE = "pgbackrest-repo2-cipher-pass"  # the bucket's repository has a pass of its own


def pitr_argument_spec(required=True):
    """The options of the ``christmas.recovery.pitr`` fragment: where continuous protection keeps its repositories
    and how the database server is controlled (``required=False`` where they serve only a point-in-time restore)."""
    return {
        "pitr_repo": {"type": "path", "required": required},
        "pitr_stanza": {"type": "str", "default": "christmas"},
        "pitr_dir": {"type": "path", "required": required},
        "pg_data_dir": {"type": "path"},
        "pg_config_dir": {"type": "path"},
        "pg_os_user": {"type": "str", "default": "postgres"},
        "service_manager": {"type": "str", "choices": ["none", "systemd", "compose"], "default": "none"},
        "db_service": {"type": "str", "default": "timescaledb"},
        "compose_dir": {"type": "path"},
        "compose_command": {"type": "str", "default": "docker compose"},
        "service_timeout": {"type": "int", "default": 120},
        "pg_log_file": {"type": "path"},
        "redis_data_dir": {"type": "path"},
        "pitr_encryption": {"type": "bool", "default": False},
        "pitr_source": {"type": "str", "choices": ["local", "s3"], "default": "local"},
        "s3_retention_days": {"type": "int"},
        **encryption_argument_spec(),
        **s3_argument_spec(required=False),
    }


def protection(params):
    """Where continuous protection keeps its repositories, and the database server it stops and starts: the cluster
    run from ``pg_data_dir`` with pg_ctl (service manager none), by its systemd unit ``db_service``, or by that
    service of the compose project in ``compose_dir``; None without a data directory. With ``pitr_encryption`` the
    pgBackRest repository's cipher pass is derived from the encryption key."""
    server, manager = None, params["service_manager"]
    bin_dir = params["pg_bin_dir"] or PG_BIN
    if params["pg_data_dir"] and manager == "none":
        server = PgCtlServer(params["pg_data_dir"], os_user=params["pg_os_user"], bin_dir=bin_dir,
                             timeout=params["service_timeout"], config_dir=params["pg_config_dir"])
    elif params["pg_data_dir"] and manager == "systemd":
        server = ServiceServer(service_manager("systemd", timeout=params["service_timeout"]), params["db_service"],
                               params["pg_data_dir"], os_user=params["pg_os_user"], bin_dir=bin_dir,
                               timeout=params["service_timeout"], log_file=params.get("pg_log_file"))
    elif params["pg_data_dir"] and manager == "compose":
        server = ComposeServer(service_manager("compose", params["compose_dir"], params["compose_command"],
                                               timeout=params["service_timeout"]), params["db_service"],
                               params["pg_data_dir"], os_user=params["pg_os_user"], timeout=params["service_timeout"])
    key = encryption_key(params) if params["pitr_encryption"] else None
    bucket = s3_bucket(params) if params["s3_endpoint"] else None
    return Protection(params["backup_dir"], params["pitr_repo"], params["pitr_stanza"], params["pitr_dir"],
                      pg_data_dir=params["pg_data_dir"], os_user=params["pg_os_user"], pg_bin_dir=params["pg_bin_dir"],
                      server=server, redis_data_dir=params["redis_data_dir"], service_manager=manager,
                      retention_days=params.get("retention_days") or 30,
                      cipher_pass=encryption.derived_secret(key, PGBACKREST_CIPHER_PURPOSE) if key else None,
                      db_port=params.get("db_port") or 5432, bucket=bucket,
                      bucket_retention_days=params["s3_retention_days"], source=params["pitr_source"],
                      bucket_cipher_pass=encryption.derived_secret(key, BUCKET_CIPHER_PURPOSE) if key else None)


def encryption_argument_spec():
    """The options of the ``christmas.recovery.vault.encryption`` fragment."""
    return {"encryption_key": {"type": "str", "no_log": True}, "encryption_key_file": {"type": "path"}}


ENCRYPTION_EXCLUSIVE = [("encryption_key", "encryption_key_file")]
PITR_REQUIRED_IF = [("pitr_encryption", True, ("encryption_key", "encryption_key_file"), True)]
PITR_REQUIRED_BY = {"s3_endpoint": ("s3_bucket", "s3_prefix", "s3_access_key", "s3_secret_key")}


def encryption_key(params):
    """The key given as a value or a file, or None when neither is."""
    if params["encryption_key"] is None and params["encryption_key_file"] is None:
        return None
    return encryption.load_key(params["encryption_key"], params["encryption_key_file"])


def require_libraries(module, needs_postgres, needs_redis):
    if needs_postgres and not connection.HAS_PSYCOPG2:
        module.fail_json(msg=missing_required_lib("psycopg2 (psycopg2-binary)"))
    if needs_redis and not redis_rdb.HAS_CRC64:
        module.fail_json(msg=missing_required_lib(redis_rdb.CRC64_LIBRARIES))

# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the runbook's two commands share: the collection on sys.path, connection flags, progress, errors."""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".collections"))

from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError  # noqa: E402
from ansible_collections.christmas.recovery.plugins.module_utils.db.connection import PgTarget  # noqa: E402
from ansible_collections.christmas.recovery.plugins.module_utils.redis.redis_keys import RedisTarget  # noqa: E402
from ansible_collections.christmas.recovery.plugins.module_utils.sets.signing import Trust  # noqa: E402

STARTED = time.monotonic()


def add_connection_flags(parser):
    parser.add_argument("--db-host", default="localhost", help="PostgreSQL host (default: localhost)")
    parser.add_argument("--db-port", type=int, default=5432, help="PostgreSQL port (default: 5432)")
    parser.add_argument("--db-name", default="christmas", help="database (default: christmas)")
    parser.add_argument("--db-user", default="christmas", help="database owner role (default: christmas)")
    parser.add_argument("--db-admin-user", help="a superuser (password in CHRISTMAS_DB_ADMIN_PASSWORD)")
    parser.add_argument("--pg-bin-dir", help="directory of pg_dump/pg_restore")
    parser.add_argument("--redis-host", default="localhost", help="Redis host (default: localhost)")
    parser.add_argument("--redis-port", type=int, default=6379, help="Redis port (default: 6379)")
    parser.add_argument("--redis-user", help="Redis ACL user (default: the default user)")
    parser.add_argument("--config-dir", help="the platform's config directory")
    parser.add_argument("--jobs", type=int, default=2, help="parallel jobs (default: 2)")
    parser.add_argument("--skip-db", action="store_true", help="leave the database out")
    parser.add_argument("--skip-redis", action="store_true", help="leave Redis out")
    parser.add_argument("--skip-config", action="store_true", help="leave the config tree out")
    parser.epilog = ("Passwords come from the environment only: CHRISTMAS_DB_PASSWORD, CHRISTMAS_DB_ADMIN_PASSWORD, "
                     "CHRISTMAS_REDIS_PASSWORD.")


PASSWORD_VARIABLES = ("CHRISTMAS_DB_PASSWORD", "CHRISTMAS_DB_ADMIN_PASSWORD", "CHRISTMAS_REDIS_PASSWORD")


def take_passwords():
    """The passwords, taken out of the environment so that no child process inherits them; a password with a line
    break is refused by name before anything starts (libpq's password file cannot hold one)."""
    passwords = {name: os.environ.pop(name, None) for name in PASSWORD_VARIABLES}
    for name, value in passwords.items():
        if value is not None and ("\n" in value or "\r" in value or "\x00" in value):
            sys.exit("error: %s holds a line break or NUL, which libpq's password file cannot express; "
                     "choose a password without one" % name)
    return passwords


def add_signing_flags(parser, verifying=True):
    parser.add_argument("--signing-key-file", default=os.environ.get("CHRISTMAS_SIGNING_KEY_FILE"),
                        help="the platform host's Ed25519 signing key, made by the first backup (default: "
                             "$CHRISTMAS_SIGNING_KEY_FILE, else /etc/christmas-recovery/signing.key)")
    if verifying:
        parser.add_argument("--signing-public-key-file",
                            help="public key sets must be signed with (default: the signing key file's public half)")
        parser.add_argument("--allow-unsigned", action="store_true",
                            default=os.environ.get("CHRISTMAS_ALLOW_UNSIGNED", "").lower() in ("1", "true", "yes"),
                            help="use a set whose signature is missing or wrong, with a loud warning "
                                 "(or CHRISTMAS_ALLOW_UNSIGNED=true)")


def trust(args):
    return Trust(args.signing_key_file, args.signing_public_key_file, args.allow_unsigned)


def targets(args):
    passwords = take_passwords()
    db = PgTarget(host=args.db_host, port=args.db_port, dbname=args.db_name, user=args.db_user,
                  password=passwords["CHRISTMAS_DB_PASSWORD"], admin_user=args.db_admin_user,
                  admin_password=passwords["CHRISTMAS_DB_ADMIN_PASSWORD"], bin_dir=args.pg_bin_dir)
    redis_target = RedisTarget(host=args.redis_host, port=args.redis_port,
                               password=passwords["CHRISTMAS_REDIS_PASSWORD"], user=args.redis_user,
                               writers=getattr(args, "redis_writers", "pause"))
    return db, redis_target


def progress(message):
    print("[%7.1fs] %s" % (time.monotonic() - STARTED, message), file=sys.stderr, flush=True)


def main(work):
    """Run ``work()``; print its report as JSON; turn our errors into one line on stderr and exit status 1."""
    try:
        report = work()
    except RecoveryError as err:
        print("error: %s" % err, file=sys.stderr)
        return 1
    except OSError as err:  # a path given that cannot serve, e.g. a file where a directory must be
        print("error: %s" % RecoveryError(err), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    for warning in report.get("warnings") or ():
        print("warning: %s" % warning, file=sys.stderr)
    print(json.dumps(report, indent=2, sort_keys=True, default=str))
    return 0

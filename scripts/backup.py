#!/usr/bin/env python3
# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The runbook's backup command: one complete backup set of database, Redis and config, then retention."""

from __future__ import annotations

import argparse
import os
import sys

import _cli

from ansible_collections.christmas.recovery.plugins.module_utils.db.postgres import DEFAULT_COMPRESS_LEVEL
from ansible_collections.christmas.recovery.plugins.module_utils.sets.backup_set import make_backup_set


def _days(text):
    """Checked here: a bad value would otherwise be refused by retention only after the set was written."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError("must be a whole number of days, 0 or more, got %r" % text)
    return int(text)


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backup-dir", default="./backups", help="directory of the backup sets (default: ./backups)")
    parser.add_argument("--retention-days", type=_days, default=30, help="keep complete sets this long (default: 30)")
    parser.add_argument("--compress-level", type=int, choices=range(-1, 10), default=DEFAULT_COMPRESS_LEVEL,
                        help="pg_dump --compress level, -1 for pg_dump's default (default: %(default)s)")
    parser.add_argument("--lock-wait", type=int, default=0, help="seconds to wait for a running backup")
    parser.add_argument("--db-lock-timeout", type=int, default=60,
                        help="seconds the dump waits for a table locked ACCESS EXCLUSIVE (default: 60)")
    _cli.add_connection_flags(parser)
    _cli.add_signing_flags(parser, verifying=False)
    args = parser.parse_args(argv)
    if not args.skip_config and not args.config_dir:
        parser.error("--config-dir is required unless --skip-config")
    return args


def main(argv=None):
    args = parse(argv)
    db, redis_target = _cli.targets(args)
    return _cli.main(lambda: make_backup_set(
        os.path.abspath(args.backup_dir),
        db=None if args.skip_db else db,
        redis_target=None if args.skip_redis else redis_target,
        config_dir=None if args.skip_config else args.config_dir,
        jobs=args.jobs, compress_level=args.compress_level, retention_days=args.retention_days,
        lock_wait=args.lock_wait, progress=_cli.progress, db_lock_timeout=args.db_lock_timeout,
        signing_key_file=args.signing_key_file,
    ))


if __name__ == "__main__":
    sys.exit(main())

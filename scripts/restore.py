#!/usr/bin/env python3
# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The runbook's restore command: verify a backup set, then restore any of its components (--dry-run: verify and
check the targets only)."""

from __future__ import annotations

import argparse
import os
import sys

import _cli

from ansible_collections.christmas.recovery.plugins.module_utils.sets.restore_set import restore_set


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("manifest",
                        help="manifest_YYYYMMDD_HHMMSS.json, or 'latest' (newest complete set in --backup-dir)")
    parser.add_argument("--backup-dir", default="./backups", help="directory of the backup sets (default: ./backups)")
    parser.add_argument("--dry-run", action="store_true", help="verify the set and check the targets; change nothing")
    parser.add_argument("--force", action="store_true", help="restore components that already match the set")
    parser.add_argument("--redis-writers", choices=("pause", "refuse"), default="pause",
                        help="other Redis clients connected: run the load as one transaction they wait for (pause, "
                             "the default) or refuse the restore (refuse)")
    parser.add_argument("--config-keep-special-modes", action="store_true",
                        help="keep the config tree's set-ID, sticky and world-write bits (default: removed)")
    parser.add_argument("--config-keep-owners", action="store_true",
                        help="keep the config tree's recorded owners (default: the config directory's owner)")
    parser.add_argument("--lock-wait", type=int, default=0, help="seconds to wait for a running backup or prune")
    _cli.add_connection_flags(parser)
    _cli.add_signing_flags(parser)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    db, redis_target = _cli.targets(args)
    components = [name for name in ("db", "redis", "config") if not getattr(args, "skip_" + name)]
    return _cli.main(lambda: restore_set(
        args.manifest, os.path.abspath(args.backup_dir), components, db=db, redis_target=redis_target,
        config_dir=args.config_dir, jobs=args.jobs, force=args.force, check_mode=args.dry_run, progress=_cli.progress,
        config_keep_special_modes=args.config_keep_special_modes, config_keep_owners=args.config_keep_owners,
        lock_wait=args.lock_wait,
        trust=_cli.trust(args),
    ))


if __name__ == "__main__":
    sys.exit(main())

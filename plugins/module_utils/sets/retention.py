# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Retention: complete sets older than the limit go; the newest complete and the newest proven set always stay."""

from __future__ import annotations

import calendar
import os
import re
import time

from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.core.fsutil import fsync_dir, remove_quietly
from ansible_collections.christmas.recovery.plugins.module_utils.sets.manifest import (
    CLOCK_SKEW_SECONDS,
    MANIFEST_RE,
    dated_sets,
    manifest_name,
    set_dir_name,
)
from ansible_collections.christmas.recovery.plugins.module_utils.sets.proof import newest_proven_set_id, proof_name
from ansible_collections.christmas.recovery.plugins.module_utils.sets.restore_journal import journal_name

# A killed backup's partial set and manifest, and a killed deep verification's decrypted copy.
LEFTOVER_RE = re.compile(r"^(\.set_\d{8}_\d{6}\.partial|\.manifest_\d{8}_\d{6}\.json\.tmp|\.verify_\d{8}_\d{6}\.tmp)$")
SET_DIR_RE = re.compile(r"^set_(\d{8}_\d{6})$")


def set_time(set_id):
    """Set ids are UTC timestamps."""
    return calendar.timegm(time.strptime(set_id, "%Y%m%d_%H%M%S"))


def expired_set_ids(backup_dir, retention_days, now=None, keep=None, skew=CLOCK_SKEW_SECONDS):
    """Complete sets older than the limit by the time their manifests record, except the newest, the newest proven
    (last rehearsal passed) and ``keep``. A set dated more than ``skew`` seconds in the future is neither the newest
    nor ever deleted: it is no set (manifest.ignored_manifests)."""
    if retention_days < 0:
        raise RecoveryError("retention_days must be 0 or more, got %s" % retention_days)
    cutoff = (now if now is not None else time.time()) - retention_days * 86400
    dated = dated_sets(backup_dir, now, skew)
    kept = {keep, newest_proven_set_id(backup_dir)}
    return [set_id for created, set_id in dated[1:] if created < cutoff and set_id not in kept]


def prune_expired_sets(backup_dir, retention_days, now=None, keep=None, skew=CLOCK_SKEW_SECONDS):
    """Delete expired complete sets: the manifest first, so a set is never seen complete while half deleted."""
    pruned = []
    for set_id in expired_set_ids(backup_dir, retention_days, now, keep, skew):
        os.unlink(os.path.join(backup_dir, manifest_name(set_id)))
        fsync_dir(backup_dir)
        remove_quietly(os.path.join(backup_dir, set_dir_name(set_id)))
        remove_quietly(os.path.join(backup_dir, journal_name(set_id)))
        remove_quietly(os.path.join(backup_dir, proof_name(set_id)))
        pruned.append(set_id)
    return pruned


def remove_incomplete_leftovers(backup_dir):
    """Remove what a killed backup left: partial dirs, temporary manifests, set dirs whose manifest never came."""
    complete = {MANIFEST_RE.match(name).group(1) for name in os.listdir(backup_dir) if MANIFEST_RE.match(name)}
    removed = []
    for name in sorted(os.listdir(backup_dir)):
        match = SET_DIR_RE.match(name)
        if LEFTOVER_RE.match(name) or (match and match.group(1) not in complete):
            try:
                remove_quietly(os.path.join(backup_dir, name))
            except OSError:
                continue  # a dying pg_dump worker may still be writing into it; the next backup tries again
            removed.append(name)
    return removed

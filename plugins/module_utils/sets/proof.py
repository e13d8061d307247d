# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The manifest's side record of restore rehearsals: a set whose last rehearsal passed is proven."""

from __future__ import annotations

import json
import os

from ansible_collections.christmas.recovery.plugins.module_utils.core.fsutil import write_json_atomic
from ansible_collections.christmas.recovery.plugins.module_utils.sets.manifest import complete_set_ids

MAX_REHEARSALS = 20  # the side record keeps this many, newest last


def proof_name(set_id):
    return "manifest_%s.rehearsal.json" % set_id


def read_record(path):
    """A record of rehearsals ({"rehearsals": [...], ...}) at ``path``; an absent or unreadable one is empty."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("rehearsals"), list):
        return {"rehearsals": []}
    data["rehearsals"] = [entry for entry in data["rehearsals"] if isinstance(entry, dict)]
    return data


def append_to_record(path, rehearsal, **fields):
    """Append one rehearsal's result to the record at ``path`` (the last MAX_REHEARSALS kept), with ``fields``
    set beside them, atomically; returns the record."""
    data = read_record(path)
    data.update(fields, rehearsals=(data["rehearsals"] + [rehearsal])[-MAX_REHEARSALS:])
    write_json_atomic(path, data)
    return data


def read_proof(backup_dir, set_id):
    """The side record of ``set_id`` ({"set_id", "rehearsals": [...]}); an absent or unreadable one is empty."""
    return dict(read_record(os.path.join(backup_dir, proof_name(set_id))), set_id=set_id)


def last_rehearsal(backup_dir, set_id):
    rehearsals = read_proof(backup_dir, set_id)["rehearsals"]
    return rehearsals[-1] if rehearsals else None


def is_proven(backup_dir, set_id):
    last = last_rehearsal(backup_dir, set_id)
    return bool(last and last.get("passed") is True)


def add_rehearsal(backup_dir, set_id, rehearsal):
    """Append one rehearsal's result (a dict with at least ``passed``) to the set's side record, atomically."""
    return append_to_record(os.path.join(backup_dir, proof_name(set_id)), rehearsal, set_id=set_id,
                            proven=rehearsal.get("passed") is True)


def newest_proven_set_id(backup_dir):
    """The newest complete set whose last rehearsal passed, or None."""
    for set_id in complete_set_ids(backup_dir):
        if is_proven(backup_dir, set_id):
            return set_id
    return None

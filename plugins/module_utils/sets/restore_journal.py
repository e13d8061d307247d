# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a restore of one set has done so far, on disk beside the set, so a killed run can be told and run again."""

from __future__ import annotations

import json
import os
import socket
import time

from ansible_collections.christmas.recovery.plugins.module_utils.core.fsutil import write_json_atomic


def journal_name(set_id):
    return ".restore_%s.json" % set_id


class RestoreJournal:
    """Per component, the last step a restore reached; ``finished`` stays false if the restore was killed.

    ``on_disk=False`` keeps it in memory only (``path`` None): what a restore into scratch servers uses.
    """

    def __init__(self, backup_dir, set_id, on_disk=True):
        self.path = os.path.join(backup_dir, journal_name(set_id)) if on_disk else None
        self.previous = self._read() if on_disk else None
        self.data = {"set_id": set_id, "pid": os.getpid(), "host": socket.gethostname(),
                     "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "finished": False,
                     "components": {}}
        self.writable = on_disk

    def _read(self):
        try:
            with open(self.path, encoding="utf-8") as handle:
                data = json.load(handle)
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and isinstance(data.get("components"), dict) else None

    @property
    def interrupted(self):
        """The previous restore of this set stopped without finishing (killed, host lost power)."""
        return bool(self.previous) and not self.previous.get("finished")

    def previous_states(self):
        states = sorted(self.previous["components"].items()) if self.previous else []
        return "; ".join("%s: %s" % item for item in states) or "nothing started"

    def record(self, component, state):
        self.data["components"][component] = state
        self._write()

    def finish(self, outcome):
        self.data.update(finished=True, outcome=outcome,
                         finished_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        self._write()

    def _write(self):
        if not self.writable:
            return
        try:
            write_json_atomic(self.path, self.data)
        except OSError:
            self.writable = False  # a read-only copy of the backups: the restore goes on without a journal

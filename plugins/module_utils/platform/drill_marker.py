# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A drill's marker rows: written into the platform's database before a fault, looked for after the recovery."""

from __future__ import annotations

from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.db import connection

MARKER_TABLE = "christmas_drill_markers"
MAX_MARKER_LENGTH = 200


def _check_markers(markers):
    for marker in markers:
        if not isinstance(marker, str) or not marker.strip() or len(marker) > MAX_MARKER_LENGTH:
            raise RecoveryError("a marker is a non-empty string of at most %d characters, got %r"
                                % (MAX_MARKER_LENGTH, marker))


def write_marker(target, marker, expect=(), check_mode=False):
    """Write ``marker`` (and the table, if missing) and say which of ``expect`` are there, with market_data's row
    count: proof that the database takes writes and kept what was written before the fault."""
    expect = list(expect)
    _check_markers([marker] + expect)
    try:
        with connection.session(target) as conn, conn.cursor() as cur:
            found = set()
            cur.execute("SELECT to_regclass(%s) IS NOT NULL", (MARKER_TABLE,))
            if cur.fetchone()[0]:
                cur.execute("SELECT marker FROM %s WHERE marker = ANY(%%s)" % MARKER_TABLE, (expect + [marker],))
                found = {row[0] for row in cur.fetchall()}
            cur.execute("SELECT count(*) FROM market_data")
            rows = cur.fetchone()[0]
            write = marker not in found and not check_mode
            if write:
                cur.execute("CREATE TABLE IF NOT EXISTS %s (marker text PRIMARY KEY, "
                            "written_at timestamptz NOT NULL DEFAULT now())" % MARKER_TABLE)
                cur.execute("INSERT INTO %s (marker) VALUES (%%s) ON CONFLICT DO NOTHING" % MARKER_TABLE, (marker,))
                conn.commit()
    except connection.psycopg2.Error as err:
        raise connection.sql_error("cannot write the drill marker into %s" % target.describe(), err) from None
    return {"changed": marker not in found, "written": write, "present": {name: name in found for name in expect},
            "market_data_rows": rows}

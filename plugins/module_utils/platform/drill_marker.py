# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A drill's marker rows: written into the platform's database before a fault, looked for after the recovery; and
its tracers, which measure the data a drill really lost: just before the fault a row in the database, a key in Redis
and the config tree's digest, each with its time, then after the recovery, for each component, whether it came back.
A component whose tracer came back lost nothing written before it; one whose tracer is missing lost everything from
the point it was restored to (a set's time, a restore's target) up to the fault."""

from __future__ import annotations

import time

from ansible_collections.christmas.recovery.plugins.module_utils.config.config_tree import current_tree_digest
from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.db import connection
from ansible_collections.christmas.recovery.plugins.module_utils.redis.redis_keys import ReplyError

MARKER_TABLE = "christmas_drill_markers"
MAX_MARKER_LENGTH = 200
TRACER_KEY = "christmas:drill:%s"
CREATE_TABLE = ("CREATE TABLE IF NOT EXISTS %s (marker text PRIMARY KEY, written_at timestamptz NOT NULL DEFAULT now())"
                % MARKER_TABLE)


def _check_markers(markers):
    for marker in markers:
        if not isinstance(marker, str) or not marker.strip() or len(marker) > MAX_MARKER_LENGTH:
            raise RecoveryError("a marker is a non-empty string of at most %d characters, got %r"
                                % (MAX_MARKER_LENGTH, marker))


def _present(cur, markers):
    """Which of ``markers`` the table holds (none while it does not exist)."""
    cur.execute("SELECT to_regclass(%s) IS NOT NULL", (MARKER_TABLE,))
    if not cur.fetchone()[0]:
        return set()
    cur.execute("SELECT marker FROM %s WHERE marker = ANY(%%s)" % MARKER_TABLE, (list(markers),))
    return {row[0] for row in cur.fetchall()}


def write_marker(target, marker, expect=(), check_mode=False):
    """Write ``marker`` (and the table, if missing) and say which of ``expect`` are there, with market_data's row
    count: proof that the database takes writes and kept what was written before the fault."""
    expect = list(expect)
    _check_markers([marker] + expect)
    try:
        with connection.session(target) as conn, conn.cursor() as cur:
            found = _present(cur, expect + [marker])
            cur.execute("SELECT count(*) FROM market_data")
            rows = cur.fetchone()[0]
            write = marker not in found and not check_mode
            if write:
                cur.execute(CREATE_TABLE)
                cur.execute("INSERT INTO %s (marker) VALUES (%%s) ON CONFLICT DO NOTHING" % MARKER_TABLE, (marker,))
                conn.commit()
    except connection.psycopg2.Error as err:
        raise connection.sql_error("cannot write the drill marker into %s" % target.describe(), err) from None
    return {"changed": marker not in found, "written": write, "present": {name: name in found for name in expect},
            "market_data_rows": rows}


def _redis_call(target, *args):
    conn = target.connect()
    try:
        reply = conn.call(*args)
    finally:
        conn.close()
    if isinstance(reply, ReplyError):
        raise RecoveryError("Redis at %s refused the drill's tracer (%s): %s" % (target.describe(), args[0], reply))
    return reply


def write_tracers(db, redis_target, config_dir, tracer, check_mode=False):
    """The tracer ``tracer`` into each component given: a marker row (its commit time), a Redis key in database 0
    (the time as its value), the config tree's digest. Returns {component: {"at": epoch, ...}}."""
    _check_markers([tracer])
    traced = {}
    if check_mode:
        return {"changed": True, "tracer": tracer, "traced": traced}
    if db is not None:
        try:
            with connection.session(db) as conn, conn.cursor() as cur:
                cur.execute(CREATE_TABLE)
                cur.execute("INSERT INTO %s (marker) VALUES (%%s) ON CONFLICT (marker) DO UPDATE SET written_at = "
                            "now() RETURNING extract(epoch FROM written_at)::float8" % MARKER_TABLE, (tracer,))
                traced["db"] = {"at": cur.fetchone()[0]}
                conn.commit()
        except connection.psycopg2.Error as err:
            raise connection.sql_error("cannot write the drill's tracer into %s" % db.describe(), err) from None
    if redis_target is not None:
        now = time.time()
        _redis_call(redis_target, "SET", TRACER_KEY % tracer, "%.6f" % now)
        traced["redis"] = {"at": now}
    if config_dir:
        traced["config"] = {"at": time.time(), "digest": current_tree_digest(config_dir)}
    return {"changed": True, "tracer": tracer, "traced": traced}


def _came_back(component, db, redis_target, config_dir, tracer, traced):
    if component == "db":
        try:
            with connection.session(db) as conn, conn.cursor() as cur:
                return tracer in _present(cur, [tracer])
        except connection.psycopg2.Error as err:
            raise connection.sql_error("cannot look for the drill's tracer in %s" % db.describe(), err) from None
    if component == "redis":
        return _redis_call(redis_target, "EXISTS", TRACER_KEY % tracer) == 1
    return current_tree_digest(config_dir) == traced["digest"]


def find_tracers(db, redis_target, config_dir, tracer, traced, fault_at, restored_at=None, check_mode=False):
    """After the recovery: for each component of ``traced``, whether its tracer came back and the seconds of data
    lost (None when the tracer is missing and no restore point is known); ``rpo_seconds`` is the largest. The Redis
    key goes again (outside check mode)."""
    targets = {"db": db, "redis": redis_target, "config": config_dir}
    losses, sources = {}, []
    for component in sorted(traced):
        if targets[component] is None:
            raise RecoveryError("the drill traced %s but is not given where it is to look for it" % component)
        back = _came_back(component, db, redis_target, config_dir, tracer, traced[component])
        before = fault_at - traced[component]["at"]
        if back:
            loss, how = 0.0, "%s: its tracer, written %.1f s before the fault, came back" % (component, before)
        elif restored_at is not None:
            loss = round(max(0.0, fault_at - restored_at), 1)
            how = "%s: its tracer is missing, %.1f s lost (restored to %s)" % (
                component, loss, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(restored_at)))
        else:
            loss, how = None, "%s: its tracer is missing and the point restored to is unknown" % component
        losses[component] = {"came_back": back, "lost_seconds": loss}
        sources.append(how)
    if "redis" in traced and not check_mode:
        _redis_call(redis_target, "DEL", TRACER_KEY % tracer)
    values = [entry["lost_seconds"] for entry in losses.values()]
    rpo = None if None in values or not values else max(values)
    return {"changed": "redis" in traced, "components": losses, "rpo_seconds": rpo, "rpo_source": "; ".join(sources)}

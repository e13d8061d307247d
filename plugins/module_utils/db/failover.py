# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Changing roles in an HA pair: a standby promoted, an old primary fenced so that it can never start as a second
primary."""

from __future__ import annotations

import contextlib
import os

from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.db import connection
from ansible_collections.christmas.recovery.plugins.module_utils.db.replication import (
    postmaster_alive,
    read_info,
    server_info,
    stop_server,
)
from ansible_collections.christmas.recovery.plugins.module_utils.db.replication_conf import (
    fenced_start_conf,
    start_conf_value,
)

with contextlib.suppress(ImportError):  # reported by the module with missing_required_lib
    import psycopg2


def promote(target, wait_seconds=60, check_mode=False, progress=print):
    with connection.session(target, "postgres") as conn:
        try:
            before = read_info(conn)
            result = {"changed": False, "previous_timeline": before["timeline"], "timeline": before["timeline"],
                      "role": before["role"]}
            if not before["in_recovery"]:
                return result
            result["changed"] = True
            if check_mode:
                return result
            progress("promoting the standby")
            if not connection.one(conn, "SELECT pg_promote(true, %(wait)s)", {"wait": wait_seconds}):
                raise RecoveryError("the standby did not finish promotion within %d s" % wait_seconds)
            connection.execute(conn, "CHECKPOINT")  # the control file then shows the new timeline too
            after = read_info(conn)
        except psycopg2.Error as err:
            raise connection.sql_error("promoting %s:%s" % (target.host, target.port), err) from None
    result.update(timeline=after["timeline"], role=after["role"], lsn=after["lsn"])
    return result


def _write_like(path, text):
    """Atomically replace ``path`` with ``text``, keeping its owner and mode (0644 root for a new file)."""
    try:
        info = os.lstat(path)
        mode, uid, gid = info.st_mode & 0o7777, info.st_uid, info.st_gid
    except FileNotFoundError:
        mode, uid, gid = 0o644, os.geteuid(), os.getegid()
    tmp = os.path.join(os.path.dirname(path), ".%s.tmp" % os.path.basename(path))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if os.geteuid() == 0:
            os.lchown(tmp, uid, gid)
        os.chmod(tmp, mode)
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def fence(target, stop_command, data_dir, start_conf, wait_seconds=60, check_mode=False, progress=print):
    """Stop the local server and set start.conf to manual, so it cannot come back by itself as a second primary."""
    if not os.path.isdir(os.path.dirname(start_conf)):
        raise RecoveryError("directory of start_conf %s does not exist" % start_conf)
    try:
        with open(start_conf, encoding="utf-8") as handle:
            previous = handle.read()
    except FileNotFoundError:
        previous = None
    running = postmaster_alive(data_dir) or server_info(target)["role"] != "down"
    conf_changed = start_conf_value(previous) != "manual"
    result = {"changed": running or conf_changed, "stopped": running, "start_conf": start_conf,
              "start_conf_changed": conf_changed, "previous_start_conf": previous}
    if check_mode:
        return result
    if conf_changed:  # first, so that a stop that fails half-way leaves a server that will not start by itself
        progress("writing manual into %s" % start_conf)
        _write_like(start_conf, fenced_start_conf(previous))
    if running:
        stop_server(target, stop_command, data_dir, wait_seconds, progress)
    return result

# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Point-in-time recovery with pgBackRest: a target checked against what the repository can reach before the
server is touched, the server stopped, ``pgbackrest restore`` to that time (or to the end of the archived WAL),
the server started and waited for until it has left recovery, and the stop point checked."""

from __future__ import annotations

import datetime
import os
import re
import shutil
import time

from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.core.fsutil import remove_quietly, write_bytes_atomic
from ansible_collections.christmas.recovery.plugins.module_utils.wal.pg_server import (
    fatal_line,
    give_to_os_user,
    make_dir_of_os_user,
)
from ansible_collections.christmas.recovery.plugins.module_utils.wal.pgbackrest import BUCKET

RESTORING = "restore-in-progress"
KEPT_DIR = "restore-kept-config"
OWN_CONFIG_FILES = ("postgresql.conf", "pg_hba.conf", "pg_ident.conf")
STOPPED_AT_TIME = ("before ", "after ")  # a timeline history's reason when recovery stopped at a time target
POLL = 0.05  # the promotion is waited for as closely as a person would watch it
UTC_TEXT = "to_char(%s AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US')"


def parse_target(value):
    """A target time as an aware UTC datetime: a datetime or ISO 8601 text, with its offset (a time without one
    would be read in some server's zone)."""
    if isinstance(value, str):
        try:
            value = datetime.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise RecoveryError("target time %r is not an ISO 8601 time (e.g. 2026-12-24T18:00:00+00:00)"
                                % value) from None
    if not isinstance(value, datetime.datetime):
        raise RecoveryError("target time %r is neither a datetime nor ISO 8601 text" % (value,))
    if value.tzinfo is None:
        raise RecoveryError("target time %s has no UTC offset: give one (e.g. +00:00)" % value.isoformat())
    return value.astimezone(datetime.UTC)


def target_text(target):
    """pgBackRest's --target for a time: UTC, to the microsecond."""
    return target.strftime("%Y-%m-%d %H:%M:%S.%f+00")


def check_target(window, target):
    """Refuse a target the repository cannot reach (see Repository.window): before the oldest backup's end, or
    at or after the last archived commit (recovery would run out of WAL before it)."""
    if target < window["oldest"]:
        raise RecoveryError("target %s is before the oldest recoverable point %s (end of backup %s)" % (
            target.isoformat(), window["oldest"].isoformat(), window["oldest_backup"]))
    if target >= window["newest"]:
        raise RecoveryError("target %s is not before the newest archived commit %s (WAL %s): WAL after the target "
                            "is not archived yet, so recovery could not stop there; archive first (archive_now) "
                            "and retry" % (target.isoformat(), window["newest"].isoformat(),
                                           window["newest_segment"]))


def restore(repository, server, target_time=None, delta=True, timeout=600, before_start=None, options=(),
            window=None):
    """Restore the cluster of ``server`` (a stopped or running PgCtlServer) from ``repository`` to
    ``target_time`` (aware datetime or ISO text), or to the end of the archived WAL when None, and promote it.

    The target is checked against ``repository.window()`` first: a refused target leaves the server untouched.
    Then the server is stopped, a data directory a killed restore left torn is emptied, its own config files are
    kept aside (put back where the backup holds none: a cluster whose config lives in /etc), ``pgbackrest restore
    --type=time --target=T --target-action=promote`` (or ``--type=default``) runs, the server starts and is waited
    for until ``pg_is_in_recovery()`` is false. For a time target the new timeline's history must say that recovery
    stopped at a time ("before ..." or "after ..."), and the last replayed commit must not be after the target. Returns
    {"target", "backup_set", "stop", "last_replayed", "timeline", "window", "seconds"}. Archiving goes on, on the
    new timeline. ``before_start`` (no arguments) runs between pgBackRest's restore and the start: a scratch copy
    gets its own settings there; ``options`` are more of pgBackRest's restore options; ``window`` is
    ``repository.window()`` when the caller has just read it."""
    started = time.monotonic()
    data_dir = repository.local_data_dir
    if os.path.abspath(server.data_dir) != data_dir:
        raise RecoveryError("the server runs from %s but the repository restores into %s (pg1-path)" % (
            server.data_dir, data_dir))
    target = parse_target(target_time) if target_time is not None else None
    window = window or repository.window()
    if target is not None:
        check_target(window, target)
    server.stop()
    _make_lost_data_dir(data_dir, repository.os_user)
    marker = os.path.join(repository.config_dir, RESTORING)
    kept = os.path.join(repository.config_dir, KEPT_DIR)
    if not os.path.exists(marker):
        shutil.rmtree(kept, ignore_errors=True)  # a finished restore's leftovers: this one keeps its own
    _keep_own_config(data_dir, kept)
    _clear_torn_restore(data_dir, marker)
    write_bytes_atomic(marker, (data_dir + "\n").encode("utf-8"))
    if repository.in_server:
        repository.prepare()  # the server in its container reads the config file (a fetched one names this host's path)
    options = (["--log-level-console=info"] + (["--delta"] if delta else []) + repository.restore_options()
               + list(options))  # delta: checksums
    if target is not None:
        options += ["--type=time", "--target=" + target_text(target), "--target-action=promote"]
    else:
        options += ["--type=default"]
    out = repository.run("restore", *options)
    _put_back_own_config(data_dir, kept, repository.os_user)
    remove_quietly(marker)
    backup_set = re.search(r"restore backup set (\S+)", out)
    if repository.repo == BUCKET:  # the local repository, lost with the host perhaps: archiving needs both
        repository.stanza_create(online=False)
    if before_start is not None:
        before_start()
    offset = server.log_size()
    server.start()
    _wait_promoted(server, started + timeout, offset)
    last, wal = server.query("SELECT %s, pg_walfile_name(pg_current_wal_lsn())"
                             % (UTC_TEXT % "pg_last_xact_replay_timestamp()"))[0]
    last_replayed = datetime.datetime.fromisoformat(last).replace(tzinfo=datetime.UTC) if last else None
    timeline = int(wal[:8], 16)
    stop = _stop_reason(server, timeline)
    if target is not None:
        if not stop.startswith(STOPPED_AT_TIME):
            raise RecoveryError("recovery to %s did not stop at the target (the history of timeline %d says %r): it "
                                "ran to the end of the archived WAL" % (target.isoformat(), timeline, stop))
        if last_replayed is not None and last_replayed > target:
            raise RecoveryError("recovery to %s replayed a commit of %s, after the target" % (
                target.isoformat(), last_replayed.isoformat()))
    return {"target": target.isoformat() if target else None,
            "backup_set": backup_set.group(1).strip("'\",") if backup_set else None,
            "stop": "recovery stopped %s" % stop,
            "last_replayed": last_replayed.isoformat() if last_replayed else None, "timeline": timeline,
            "window": {key: value.isoformat() if isinstance(value, datetime.datetime) else value
                       for key, value in window.items()},
            "seconds": round(time.monotonic() - started, 3)}


def _stop_reason(server, timeline):
    """Why recovery ended, as the promotion wrote it into the new timeline's history file: "before 2026-12-06
    07:00:05.25+00" (or "after ...") at a time target, "no recovery target specified" at the end of the WAL. Read
    from the server, so it holds wherever the server logs."""
    rows = server.query("SELECT pg_read_file('pg_wal/%08X.history')" % timeline)
    entries = [row for row in rows if len(row) >= 3 and row[0].strip().isdigit()]
    if not entries:
        raise RecoveryError("timeline %d of %s has no history file: recovery did not end in a promotion" % (
            timeline, server.data_dir))
    return entries[-1][2].strip()


def _keep_own_config(data_dir, kept):
    """The data directory's own config files, kept aside before the restore replaces it: a backup of a cluster whose
    config lives elsewhere (Debian's /etc/postgresql) holds none, and the server restored into (a container's) needs
    its own. Copied once; a rerun after a killed restore finds them still there."""
    os.makedirs(kept, 0o700, exist_ok=True)
    for name in OWN_CONFIG_FILES:
        source, copy = os.path.join(data_dir, name), os.path.join(kept, name)
        if os.path.isfile(source) and not os.path.islink(source) and not os.path.exists(copy):
            shutil.copy2(source, copy + ".tmp")
            os.rename(copy + ".tmp", copy)


def _put_back_own_config(data_dir, kept, os_user):
    """The kept config files the backup did not bring, back into the restored data directory (the OS user's)."""
    for name in OWN_CONFIG_FILES:
        copy, target = os.path.join(kept, name), os.path.join(data_dir, name)
        if os.path.exists(copy) and not os.path.lexists(target):
            shutil.copy2(copy, target)
            give_to_os_user(target, os_user)
    shutil.rmtree(kept, ignore_errors=True)


def _make_lost_data_dir(data_dir, os_user):
    """A data directory lost with its disk comes back empty (0700, the OS user's) when its parent is there."""
    if os.path.lexists(data_dir):
        return
    if not os.path.isdir(os.path.dirname(data_dir)):
        raise RecoveryError("neither the data directory %s nor its parent exists: mount or create it first"
                            % data_dir)
    make_dir_of_os_user(data_dir, os_user)


def _clear_torn_restore(data_dir, marker):
    """A data directory a killed restore left behind (our marker says a restore into it began, and pgBackRest
    has not yet written PG_VERSION or backup.manifest, without which it refuses a delta) is emptied, so the restore
    starts over. Files without either and without the marker are not a cluster of ours: refused, untouched."""
    if not os.path.isdir(data_dir) or any(os.path.exists(os.path.join(data_dir, name))
                                          for name in ("PG_VERSION", "backup.manifest")):
        return
    entries = os.listdir(data_dir)
    if not entries:
        return
    if not os.path.exists(marker):
        raise RecoveryError("data directory %s holds files but no PG_VERSION or backup.manifest and no restore "
                            "into it was begun here: check pg1-path, or empty it to restore" % data_dir)
    for name in entries:
        remove_quietly(os.path.join(data_dir, name))


def _wait_promoted(server, deadline, log_offset):
    """Poll until the server has left recovery; a server that exits meanwhile (a target it cannot reach) raises
    with its log's FATAL line."""
    while True:
        if not server.is_running():
            raise RecoveryError("PostgreSQL of %s stopped during recovery: %s" % (
                server.data_dir, fatal_line(server.log_since(log_offset))))
        try:
            if server.query("SELECT pg_is_in_recovery()") == [["f"]]:
                return
        except RecoveryError:
            if not server.is_running():
                continue  # reported above, with the log's reason
            raise
        if time.monotonic() > deadline:
            raise RecoveryError("PostgreSQL of %s still in recovery at the deadline" % server.data_dir)
        time.sleep(POLL)


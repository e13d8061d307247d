# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A rehearsal of a restore to a random second of the recoverable window, in a scratch directory of this host; the
platform's servers are not touched.

- The database: pgBackRest restores into a scratch data directory (tablespaces mapped into it too) to the target,
  the copy starts with settings of its own (a scratch port, only a unix socket in the scratch directory with its
  own pg_hba, no archiving: it never writes into the repository), is promoted at the target and checked to have
  stopped there, and every table of the platform's database is read through.
- Redis: the AOF cut at the target is loaded into a scratch redis-server and saved as an RDB.
- The config tree: the version of the target is restored into a scratch directory, every file checked.

Each result goes to ``PITR_DIR/rehearsals.json`` (the last 20)."""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import secrets
import socket
import time

from ansible_collections.christmas.recovery.plugins.module_utils.config import config_restore, config_versions
from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError, one_line
from ansible_collections.christmas.recovery.plugins.module_utils.core.fsutil import write_bytes_atomic
from ansible_collections.christmas.recovery.plugins.module_utils.db import connection
from ansible_collections.christmas.recovery.plugins.module_utils.platform.rehearsal import timed
from ansible_collections.christmas.recovery.plugins.module_utils.platform.scratch import free_port
from ansible_collections.christmas.recovery.plugins.module_utils.platform.validation import check_result
from ansible_collections.christmas.recovery.plugins.module_utils.redis import redis_aof_restore
from ansible_collections.christmas.recovery.plugins.module_utils.sets.proof import append_to_record
from ansible_collections.christmas.recovery.plugins.module_utils.sets.protection import (
    _stamp,
    component_windows,
    describe,
    overall,
)
from ansible_collections.christmas.recovery.plugins.module_utils.sets.protection_restore import ORDER, verify_plan
from ansible_collections.christmas.recovery.plugins.module_utils.wal import pgbackrest, pitr
from ansible_collections.christmas.recovery.plugins.module_utils.wal.pg_server import (
    PgCtlServer,
    give_to_os_user,
    make_dir_of_os_user,
)

RECORD = "rehearsals.json"
SYSTEM_SCHEMAS = "('pg_catalog', 'information_schema')"
# Every table and materialized view of the database, counted through (each page read); TimescaleDB's chunks are read
# through their hypertable, so its own schemas are left out.
COUNT_TABLES = """
SELECT format('%%I.%%I', n.nspname, c.relname),
       (xpath('/row/c/text()', query_to_xml(format('SELECT count(*) AS c FROM %%I.%%I', n.nspname, c.relname),
                                            false, true, '')))[1]::text::bigint
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'm') AND NOT c.relispartition AND n.nspname NOT IN %s
  AND n.nspname NOT LIKE 'pg\\_toast%%' AND n.nspname NOT LIKE '\\_timescaledb%%'
  AND n.nspname NOT LIKE 'timescaledb\\_%%'
ORDER BY 1""" % SYSTEM_SCHEMAS


def scratch_settings(port, socket_dir, hba_file):
    """What the scratch copy of the cluster runs with, after whatever the restored configuration says."""
    def quoted(text):
        return "'%s'" % text.replace("'", "''")

    return [("port", str(port)), ("listen_addresses", "''"), ("unix_socket_directories", quoted(socket_dir)),
            ("hba_file", quoted(hba_file)), ("archive_mode", "off"), ("logging_collector", "off"), ("ssl", "off"),
            ("shared_buffers", "'128MB'"), ("synchronous_standby_names", "''"), ("primary_conninfo", "''"),
            ("cluster_name", "'christmas-rehearsal'")]


def pick_target(start, end, rng=None):
    """A random whole second strictly inside [start, end): the database reaches a time only when a commit follows
    it."""
    first, last = math.ceil(start), math.ceil(end) - 1
    if last < first:
        raise RecoveryError("the recoverable window %s .. %s holds no whole second yet: run archive.yml" % (
            _stamp(start), _stamp(end)))
    return (rng or secrets.SystemRandom()).randint(first, last)


def rehearse_to(protection, scratch, components, target=None, db_name="christmas", db_port=0, avoid=(),
                timeout=120, check_mode=False, progress=print):
    """Restore ``components`` to ``target`` (Unix seconds; a random second of the window when None) in
    ``scratch`` (a platform.scratch.ScratchDir owned by the database's OS user), check each, record the result and
    tear everything down. A failed rehearsal is recorded, then raised."""
    found = component_windows(protection, components)
    chosen = [name for name in ORDER if name in components and name in found]
    if not chosen:
        raise RecoveryError("no recovery window to rehearse: nothing archived yet (run backup.yml, then archive.yml)")
    common = overall(found)
    if common is None:
        raise RecoveryError("the components' recovery windows do not overlap: %s" % describe(found))
    when = pick_target(*common) if target is None else target
    if not common[0] <= when < common[1]:
        raise RecoveryError("rehearsal target %s is outside the recoverable window %s .. %s" % (
            _stamp(when), _stamp(common[0]), _stamp(common[1])))
    result = {"target_time": _stamp(when), "target_epoch": when, "components": chosen, "checks": [],
              "failed_checks": [], "timings": {}, "restored": {},
              "window": {"start": _stamp(common[0]), "end": _stamp(common[1])},
              "record": os.path.join(protection.pitr_dir, RECORD), "error": None}
    if check_mode:
        result.update(changed=True, passed=None)
        return result
    started_at, begin = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), time.monotonic()
    try:
        progress("rehearsing a restore of %s to %s" % (", ".join(chosen), _stamp(when)))
        plan = timed(result, "verify", lambda: verify_plan(protection, chosen, when))
        result["plan"] = {name: plan[name]["uses"] for name in chosen}
        scratch.remove_leftover(progress)
        scratch.create("pitr-" + time.strftime("%Y%m%d_%H%M%S", time.gmtime(when)))
        try:
            for name in chosen:
                checks, result["restored"][name] = timed(result, name, lambda name=name: _rehearse(
                    name, protection, scratch, when, db_name, db_port, set(avoid), timeout, progress))
                result["checks"].extend(checks)
        finally:
            progress("tearing down the scratch copy in %s" % scratch.path)
            scratch.teardown([])
    except (RecoveryError, OSError) as err:
        result["error"] = one_line(err)
    result["failed_checks"] = [check for check in result["checks"] if not check["ok"]]
    result["passed"] = result["error"] is None and bool(result["checks"]) and not result["failed_checks"]
    if result["error"] is None and not result["passed"]:
        result["error"] = "; ".join("%s: %s" % (c["name"], c["detail"]) for c in result["failed_checks"])
    result["duration_seconds"] = round(time.monotonic() - begin, 3)
    entry = {key: result[key] for key in (
        "target_time", "passed", "checks", "timings", "error", "duration_seconds", "components", "restored")}
    append_to_record(result["record"], dict(entry, started_at=started_at, host=socket.gethostname()))
    result["changed"] = True
    if not result["passed"]:
        raise RecoveryError("rehearsal of a restore to %s failed: %s" % (result["target_time"], result["error"]),
                            **result)
    return result


def _rehearse(name, protection, scratch, when, db_name, db_port, avoid, timeout, progress):
    if name == "db":
        return _rehearse_db(protection, scratch, when, db_name, db_port, avoid, timeout, progress)
    if name == "redis":
        facts = redis_aof_restore.rdb_at(protection.redis_repo, when, scratch.redis_dir, progress, timeout=timeout)
        keys = {str(db): count for db, count in sorted(facts["keys"].items())}
        return [check_result("redis: AOF cut at the target loads", True, "loads", keys or "no keys",
                             "generation %s, keys per database %s" % (facts["generation"], keys or "none"))], \
            {"generation": facts["generation"], "keys": keys}
    version_id, taken = config_versions.version_at(protection.config_repo, when)
    archive, metadata = config_versions.materialize(protection.config_repo, version_id,
                                                    os.path.join(scratch.path, "config-version"))
    done = config_restore.restore_tree(archive, metadata, scratch.config_dir, "pitr-rehearsal", False, True,
                                       progress)
    return [check_result("config: version of the target restored", True, version_id, done["entries"],
                         "version %s of %s, %d entries" % (version_id, _stamp(taken), done["entries"]))], \
        {"version": version_id, "entries": done["entries"]}


def _rehearse_db(protection, scratch, when, db_name, db_port, avoid, timeout, progress):
    user = protection.os_user
    port = db_port or free_port(avoid)
    socket_dir = make_dir_of_os_user(os.path.join(scratch.path, "socket"), user)
    hba_file = os.path.join(scratch.path, "pg_hba.conf")
    write_bytes_atomic(hba_file, b"local all all trust\n")  # the socket's directory is the scratch user's alone
    give_to_os_user(hba_file, user)
    make_dir_of_os_user(scratch.pg_data, user)
    tablespaces = make_dir_of_os_user(os.path.join(scratch.path, "tablespaces"), user)
    repository = pgbackrest.Repository(
        protection.repo_path, protection.stanza, scratch.pg_data, port, socket_dir, os_user=protection.os_user,
        cipher_pass=protection.cipher_pass, config_dir=os.path.join(scratch.path, "pgbackrest"),
        pg_bin_dir=protection.pg_bin_dir)
    repository.check_cipher()
    repository.prepare()
    server = PgCtlServer(scratch.pg_data, os_user=protection.os_user, bin_dir=protection.pg_bin_dir,
                         log_file=os.path.join(scratch.path, "postgresql.log"), timeout=timeout)

    def own_settings():
        conf = os.path.join(scratch.pg_data, "postgresql.conf")
        if not os.path.exists(conf):  # a cluster whose configuration lives outside its data directory
            write_bytes_atomic(conf, b"")
        with open(os.path.join(scratch.pg_data, "postgresql.auto.conf"), "a", encoding="utf-8") as handle:
            handle.write("# the scratch copy of a rehearsal\n")
            handle.writelines("%s = %s\n" % setting for setting in scratch_settings(port, socket_dir, hba_file))
        give_to_os_user(conf, user)

    progress("restoring the database to %s into %s (port %d)" % (_stamp(when), scratch.pg_data, port))
    try:
        done = pitr.restore(repository, server, datetime.datetime.fromtimestamp(when, datetime.UTC),
                            delta=False, timeout=timeout, before_start=own_settings,
                            options=("--tablespace-map-all=" + tablespaces,))
        checks = [check_result("db: recovery stopped at the target", True, "at or before %s" % _stamp(when),
                               done["last_replayed"], "%s; last replayed commit %s, timeline %s" % (
                                   done["stop"] or "stopped", done["last_replayed"], done["timeline"]))]
        target = connection.PgTarget(host=socket_dir, port=port, admin_user=protection.os_user)
        with connection.session(target, dbname=db_name) as conn:
            counted = connection.fetch(conn, COUNT_TABLES)
        rows = sum(count for _name, count in counted)
        checks.append(check_result("db: every table of %s reads through" % db_name, True, "readable", rows,
                                   "%d tables, %d rows" % (len(counted), rows)))
        return checks, {"backup": done["backup_set"], "timeline": done["timeline"], "rows": dict(counted)}
    finally:
        with contextlib.suppress(RecoveryError):  # the teardown kills what is left; the first error is the one
            server.stop(mode="immediate")

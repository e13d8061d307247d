# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Continuous protection of the whole platform: the database's WAL and physical backups in a pgBackRest repository,
Redis's AOF shipped with its timestamps, the config tree's versions; and the window each of them can restore."""

from __future__ import annotations

import grp
import math
import os
import pwd
import stat
import time

from ansible_collections.christmas.recovery.plugins.module_utils.config import config_versions
from ansible_collections.christmas.recovery.plugins.module_utils.core.commands import find_program
from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.core.fsutil import make_private_dir
from ansible_collections.christmas.recovery.plugins.module_utils.db import connection
from ansible_collections.christmas.recovery.plugins.module_utils.objectstore import s3
from ansible_collections.christmas.recovery.plugins.module_utils.redis import redis_aof, redis_aof_index
from ansible_collections.christmas.recovery.plugins.module_utils.sets import proof
from ansible_collections.christmas.recovery.plugins.module_utils.sets.manifest import created_time
from ansible_collections.christmas.recovery.plugins.module_utils.wal import archiving, pgbackrest, pgbackrest_text
from ansible_collections.christmas.recovery.plugins.module_utils.wal.pg_server import PG_BIN, read_postmaster_pid

REDIS_DIR, CONFIG_DIR = "redis", "config"
BUCKET_REPO = "pgbackrest"  # under the bucket's prefix: pgBackRest's repo2
DAY = 86400


def _stamp(when):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


class Protection:
    """Where continuous protection keeps the platform's history and how it reaches the database server: ``server``
    stops and starts it (a PgCtlServer for a cluster run from ``pg_data_dir``), None when it cannot be managed.

    With ``bucket`` (an objectstore Bucket), the database's WAL is archived into it as well, as pgBackRest's repo2
    under ``PREFIX/pgbackrest``, encrypted with ``bucket_cipher_pass`` when given, its full backups kept
    ``bucket_retention_days``; ``source`` ``s3`` reads the database's window and restores from there."""

    def __init__(self, backup_dir, repo, stanza, pitr_dir, pg_data_dir=None, os_user="postgres", pg_bin_dir=None,
                 server=None, redis_data_dir=None, retention_days=30, cipher_pass=None, db_port=5432,
                 service_manager="none", bucket=None, bucket_retention_days=None, bucket_cipher_pass=None,
                 source="local"):
        self.backup_dir, self.repo_path, self.stanza, self.pitr_dir = backup_dir, repo, stanza, pitr_dir
        self.db_port, self.service_manager = db_port, service_manager
        self.pg_data_dir, self.os_user, self.pg_bin_dir = pg_data_dir, os_user, pg_bin_dir or PG_BIN
        self.server, self.redis_data_dir, self.retention_days = server, redis_data_dir, retention_days
        self.cipher_pass = cipher_pass
        if source not in ("local", "s3") or (source == "s3" and bucket is None):
            raise RecoveryError("source %r: the database's history is read from local or, with christmas_s3_endpoint "
                                "set, from s3" % source)
        self.bucket, self.source = bucket, source
        self.bucket_retention_days = bucket_retention_days or retention_days
        self.bucket_cipher_pass = bucket_cipher_pass
        self.redis_repo = os.path.join(pitr_dir, REDIS_DIR)
        self.config_repo = os.path.join(pitr_dir, CONFIG_DIR)
        self._db_window = None

    def db_off_reason(self):
        """Why the database cannot be protected continuously here, or None."""
        if self.server is None:
            return ("the collection cannot stop and start the database server: set christmas_pg_data_dir (the "
                    "cluster run with pg_ctl, by its systemd unit christmas_db_service, or the host path of its data "
                    "volume with compose)")
        if not os.path.isdir(self.pg_data_dir or "") and not os.path.isdir(os.path.dirname(self.pg_data_dir or "")):
            return "christmas_pg_data_dir %s is not a directory on this host, nor is its parent" % self.pg_data_dir
        try:
            find_program("pgbackrest", ["/usr/bin", "/usr/local/bin"])
        except RecoveryError:
            return "pgbackrest is not installed on this host"
        return self.server.problem([self.repo_path, pgbackrest.default_config_dir(self.repo_path)])

    def kept_days(self, now=None, days=None):
        """Days of history kept: ``retention_days`` (or ``days``), or more while the newest proven set is older than
        that, so the point it was taken at stays restorable until a newer set is proven (a rehearsal passed)."""
        now = time.time() if now is None else now
        days = days or self.retention_days
        proven = proof.newest_proven_set_id(self.backup_dir) if os.path.isdir(self.backup_dir) else None
        if proven is None:
            return days
        return max(days, math.ceil((now - created_time(self.backup_dir, proven)) / DAY))

    def _bucket_repo(self, proven_days):
        """The bucket as pgBackRest's repo2 (its fulls kept ``bucket_retention_days``, or ``proven_days`` when
        longer), or None."""
        bucket = self.bucket
        if bucket is None:
            return None
        s3.check_bucket(bucket)
        host, port = bucket.endpoint.rsplit(":", 1)
        return pgbackrest.S3Repo(
            host=host, port=int(port), bucket=bucket.bucket, path="/%s/%s" % (bucket.prefix, BUCKET_REPO),
            region=bucket.region, key=bucket.access_key, secret=bucket.secret_key, uri_style=bucket.uri_style,
            ca_file=bucket.ca_file, verify_tls=bucket.validate_certs, cipher_pass=self.bucket_cipher_pass,
            retention_days=max(self.bucket_retention_days, proven_days))

    def bucket_problem(self):
        """Why the bucket cannot be reached now (one line naming the endpoint), or None (also without a bucket)."""
        if self.bucket is None:
            return None
        try:
            s3.Store(self.bucket).check_reachable()
        except RecoveryError as err:
            return str(err)
        return None

    def repository(self):
        """The pgBackRest repository, configured for the running server (its port and socket directory as the
        server's postmaster.pid says), encrypted with ``cipher_pass`` when given (refused when the repository's own
        encryption differs)."""
        running = read_postmaster_pid(self.pg_data_dir) if os.path.isdir(self.pg_data_dir) else None
        if running and running["port"]:
            port, socket_dir = running["port"], running["socket_dir"]
        else:  # stopped or lost: a restore needs no connection; the repository's config file knows the rest, and
            # a repository fetched onto a replacement host has none yet: the inventory's port until the server runs
            known = pgbackrest_text.read_config(os.path.join(pgbackrest.default_config_dir(
                self.repo_path), pgbackrest.CONFIG_NAME), self.stanza)
            port, socket_dir = known.get("pg1-port", self.db_port), known.get("pg1-socket-path")
        server = self.server
        proven_days = self.kept_days(days=1)  # at least 1, more while the newest proven set is older: read once
        repository = pgbackrest.Repository(
            self.repo_path, self.stanza, (server.pg1_path if server else None) or self.pg_data_dir, port, socket_dir,
            os_user=self.os_user, retention_full=max(self.retention_days, proven_days), retention_full_type="time",
            pg_bin_dir=self.pg_bin_dir, cipher_pass=self.cipher_pass, local_data_dir=self.pg_data_dir,
            in_server=None if server is None or server.runs_here else server.in_server,
            bucket=self._bucket_repo(proven_days))
        repository.check_cipher()
        if self.source != "s3":
            return repository
        repository.prepare()  # a replacement host has no config yet: pgBackRest reads the bucket's options from it
        return repository.in_bucket()

    def db_window(self):
        """The pgBackRest repository's window (Repository.window), read once: it lists the archive and reads its
        newest WAL, and a restore needs it for its checks and again for the restore itself."""
        if self._db_window is None:
            self._db_window = self.repository().window()
        return self._db_window

    def open_backup_dir_to_os_user(self):
        """The backup directory traversable (never readable) by the OS user's group, so that the server's
        archive_command reaches the repository inside it: mode 0710. Returns what changed, for the output."""
        make_private_dir(self.backup_dir)
        info = os.lstat(self.backup_dir)
        gid = pwd.getpwnam(self.os_user).pw_gid
        mode = stat.S_IMODE(info.st_mode)
        if info.st_gid == gid and mode == 0o710:
            return None
        if info.st_uid != os.geteuid():
            raise RecoveryError("backup directory %s belongs to uid %d, not to us: the database server's group "
                                "cannot be let through it" % (self.backup_dir, info.st_uid))
        os.chown(self.backup_dir, -1, gid)
        os.chmod(self.backup_dir, 0o710)
        return "backup directory %s opened to group %s for archiving (0710)" % (self.backup_dir,
                                                                             grp.getgrgid(gid).gr_name)


# ---------------------------------------------------------------- the database


def _admin_session(db):
    if not db.admin_user:
        raise RecoveryError("continuous protection of the database needs christmas_db_admin_user (a superuser): "
                            "archiving is set with ALTER SYSTEM")
    return connection.session(db, dbname=db.maintenance_db)


def _backup_kind(repository, full_days, between, now):
    """full when the newest full backup is older than ``full_days`` (or there is none), else ``between``."""
    fulls = [b for b in repository.info()["backups"] if b["type"] == "full" and not b["error"]]
    if not fulls or now - fulls[-1]["stop_epoch"] >= full_days * DAY:
        return "full"
    return between


def protect_db(protection, db, full_days=7, between="diff", archive_timeout=60, take_over=False, check_mode=False,
               progress=print):
    """Archiving set up (restarting the server once when archive_mode or wal_level change), the stanza, pgBackRest's
    check, and a physical backup; returns {"changed", "archiving", "physical"}."""
    repository = protection.repository()
    with _admin_session(db) as conn:
        plan = archiving.archiving_plan(conn, repository, take_over, archive_timeout)
        if check_mode:
            return {"changed": True, "archiving": plan, "physical": None}
        opened = protection.open_backup_dir_to_os_user()
        if opened:
            progress(opened)
        repository.prepare()
        archiving.apply_archiving(conn, plan)
    if plan["restart_needed"]:
        progress("restarting the database server to turn archiving on (%s)" % ", ".join(
            name for name in archiving.RESTART_SETTINGS if name in plan["changes"]))
        protection.server.restart()
    unreachable = protection.bucket_problem()
    if unreachable:  # pgBackRest's stanza-create, check and backup need every repository
        progress("no physical backup this time: %s" % unreachable)
        return {"changed": True, "archiving": plan, "physical": None,
                "bucket_error": "%s; no physical backup was taken, and WAL reaches the local repository only slowly "
                                "until the bucket is back (each segment is archived into both)" % unreachable}
    repository.stanza_create()
    repository.check()
    kind = _backup_kind(repository, full_days, between, time.time())
    progress("physical backup (%s) into %s" % (kind, repository.path))
    backup = repository.backup(kind)
    physical = {"tool": "pgbackrest", "version": repository.version(), "stanza": repository.stanza,
                "label": backup["label"], "type": backup["type"], "wal_start": backup["archive_start"],
                "wal_stop": backup["archive_stop"], "started_at": _stamp(backup["start_epoch"]),
                "stopped_at": _stamp(backup["stop_epoch"]), "repo": repository.path}
    result = {"changed": True, "archiving": plan, "physical": physical}
    if repository.bucket is not None:
        in_bucket = repository.in_bucket()
        try:
            kind = _backup_kind(in_bucket, full_days, between, time.time())
            progress("physical backup (%s) into %s" % (kind, in_bucket.location))
            copy = in_bucket.backup(kind)
        except RecoveryError as err:
            result["bucket_error"] = "S3 endpoint %s: physical backup into %s failed: %s" % (
                protection.bucket.endpoint, in_bucket.location, err)
        else:
            physical["bucket"] = {"label": copy["label"], "type": copy["type"], "repo": in_bucket.location}
    return result


def ship_db(protection, db, timeout=60):
    """A commit of our own, a WAL switch, and the wait until that segment is archived."""
    repository = protection.repository()
    with _admin_session(db) as conn:
        return archiving.archive_now(conn, repository, timeout)


# ---------------------------------------------------------------- all components


def protect(protection, db=None, redis_target=None, config_dir=None, full_days=7, between="diff",
            archive_timeout=60, take_over=False, check_mode=False, progress=print):
    """backup.yml's part: the database's archiving and physical backup, Redis's AOF with timestamps and its first
    shipment, a version of the config tree. Without a database server the collection can manage here, continuous
    protection is off (``off_reason``), which is no failure: the set is taken anyway."""
    reason = protection.db_off_reason()
    result = {"changed": False, "components": {}, "off_reason": reason or "", "physical": None}
    if reason:
        result["window"] = windows(protection, off_reason=reason)
        return result
    if db:
        outcome = protect_db(protection, db, full_days, between, archive_timeout, take_over, check_mode, progress)
        result["components"]["db"] = outcome
        result["physical"] = outcome["physical"]
        result["bucket_error"] = outcome.get("bucket_error", "")
        result["changed"] = True
    if redis_target:
        if check_mode:
            result["components"]["redis"] = {"changed": True}
        else:
            enabled = redis_aof.enable_timestamps(redis_target)
            shipped = redis_aof.ship_aof(redis_target, protection.redis_data_dir,
                                         protection.redis_repo)
            result["components"]["redis"] = {"aof": enabled, "shipped": shipped}
            result["changed"] = result["changed"] or enabled["changed"] or shipped["changed"]
    if config_dir:
        result["components"]["config"] = {"changed": True} if check_mode else config_versions.store_version(
            config_dir, _private(protection.config_repo))
    if not check_mode:
        prune(protection, time.time())
    result["window"] = windows(protection, db, redis_target, config_dir)
    return result


def ship(protection, db=None, redis_target=None, config_dir=None, timeout=60, progress=print):
    """archive.yml's part: everything changed since the last shipment made restorable; nothing when continuous
    protection is off (``off_reason``)."""
    reason = protection.db_off_reason()
    result = {"changed": False, "components": {}, "shipped_bytes": 0, "off_reason": reason or ""}
    if reason:
        result["window"] = windows(protection, off_reason=reason)
        return result
    if redis_target:
        shipped = redis_aof.ship_aof(redis_target, protection.redis_data_dir, protection.redis_repo)
        result["components"]["redis"] = shipped
        result["shipped_bytes"] += shipped["shipped_bytes"]
        result["changed"] = result["changed"] or shipped["changed"]
    if config_dir:
        stored = config_versions.store_version(config_dir, _private(protection.config_repo))
        result["components"]["config"] = stored
        result["shipped_bytes"] += stored.get("stored_bytes", 0)
        result["changed"] = result["changed"] or stored["changed"]
    if db:
        unreachable = protection.bucket_problem()
        if unreachable:
            raise RecoveryError("%s; shipped %s, but the database's WAL is archived into both repositories and "
                                "waits for the bucket" % (unreachable, ", ".join(sorted(result["components"])) or
                                                          "nothing else"))
        result["components"]["db"] = ship_db(protection, db, timeout)
        result["changed"] = True
    progress("shipped: %s" % ", ".join(sorted(result["components"])))
    result["window"] = windows(protection, db, redis_target, config_dir)
    return result


def _private(path):
    make_private_dir(path)
    return path


def component_windows(protection, components, problems=None):
    """{component: {"start", "end"}} (Unix seconds) of what each repository can restore now; a component with
    nothing kept yet is left out, and why goes into ``problems`` when given."""
    found = {}
    problems = {} if problems is None else problems
    if "db" in components and not protection.db_off_reason():
        try:
            window = protection.db_window()
        except RecoveryError as err:
            window, problems["db"] = None, str(err)
        if window:
            found["db"] = {"start": window["oldest"].timestamp(), "end": window["newest"].timestamp()}
    if "redis" in components:
        window = redis_aof_index.window(protection.redis_repo) if os.path.isdir(protection.redis_repo) else None
        if window:
            found["redis"] = {"start": window["start"], "end": window["end"]}
    if "config" in components:
        window = config_versions.window(protection.config_repo) if os.path.isdir(protection.config_repo) else None
        if window:
            found["config"] = {"start": window["start"], "end": window["end"]}
    return found


def windows(protection, db=None, redis_target=None, config_dir=None, off_reason=None):
    """The recovery window for the metrics and the reports: {"enabled", "reason", "components", "start", "end"}:
    start and end are the span every component covers."""
    components = [name for name, on in (("db", db), ("redis", redis_target), ("config", config_dir)) if on]
    reason = off_reason or protection.db_off_reason()
    found = {} if reason else component_windows(protection, components)
    common = overall(found)
    return {"enabled": reason is None, "reason": reason or "", "components": found,
            "start": common[0] if common else None, "end": common[1] if common else None,
            "text": describe(found)}


def overall(found):
    """(start, end) of the span every component covers, or None when they do not overlap (or none is kept)."""
    if not found:
        return None
    start, end = max(w["start"] for w in found.values()), min(w["end"] for w in found.values())
    return (start, end) if start <= end else None


def describe(found):
    return "; ".join("%s %s .. %s" % (name, _stamp(w["start"]), _stamp(w["end"])) for name, w in sorted(
        found.items())) or "nothing archived yet"


def prune(protection, now):
    """Redis's AOF and the config versions kept for the retention window (longer while the newest proven set is
    older), never leaving a hole; pgBackRest expires its own backups and WAL by the same number of days."""
    keep_from = now - protection.kept_days(now) * DAY
    if os.path.isdir(protection.redis_repo):
        redis_aof.prune(protection.redis_repo, keep_from)
    if os.path.isdir(protection.config_repo):
        config_versions.prune(protection.config_repo, keep_from)


def verify(protection, db=None, redis_target=None, config_dir=None):
    """Every repository's files against their checksums (pgBackRest's verify report read, not its exit status)."""
    checked = {}
    if db and not protection.db_off_reason():
        checked["db"] = protection.repository().verify()
    if redis_target and os.path.isdir(protection.redis_repo):
        checked["redis"] = redis_aof_index.verify_repository(protection.redis_repo)
    if config_dir and os.path.isdir(protection.config_repo):
        checked["config"] = [config_versions.verify_version(protection.config_repo, version_id)
                             for version_id, _time in config_versions.versions(protection.config_repo)]
    return checked

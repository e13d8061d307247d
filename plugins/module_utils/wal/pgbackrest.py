# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A pgBackRest repository on a posix path (repo1), and optionally a second one in an S3 bucket (repo2) that WAL is
archived to as well: its config file (0600, owned by the cluster's OS user, the only place the cipher passes and the
bucket's secret are written), pgBackRest commands run as that user against one repository, backups and what they
cover read from ``info --output=json``, the recoverable window, and ``verify`` whose output is parsed (it exits 0 on
corrupt files)."""

from __future__ import annotations

import collections
import copy
import datetime
import grp
import gzip
import json
import os
import pwd
import re
import shlex
import shutil

from ansible_collections.christmas.recovery.plugins.module_utils.core import commands
from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.core.fsutil import remove_quietly, write_bytes_atomic
from ansible_collections.christmas.recovery.plugins.module_utils.wal.pg_server import (
    PG_BIN,
    as_os_user,
    give_to_os_user,
    os_user_entry,
)
from ansible_collections.christmas.recovery.plugins.module_utils.wal.pgbackrest_text import (
    config_text,
    newest_commit_time,
    parse_history,
    parse_info,
    pgbackrest_error,
    segment_name,
    verify_problems,
)

BACKUP_KINDS = ("full", "diff", "incr")
OPENSSL_SALTED = b"Salted__"
CONFIG_NAME = "pgbackrest.conf"
# WAL segments stay gzip, which the window's reader opens with the standard library; backups are Zstandard, which a
# restore decompresses several times faster at about gzip's size.
WAL_COMPRESS, BACKUP_COMPRESS = "gz", "zst"
RETENTION_TYPES = ("count", "time")
SEGMENT_FILE_RE = re.compile(r"(?:^|/)([0-9A-F]{24})-[0-9a-f]{40}(?:\.\w+)?$")
HISTORY_FILE_RE = re.compile(r"(?:^|/)([0-9A-F]{8})\.history$")
NEWEST_SEGMENTS_TRIED = 4
SERVER_COMMANDS = ("stanza-create", "check", "backup")  # they connect to the server and read its data directory
# the commands that act on one repository (``--repo``); archive-push, stanza-create and check act on every one
ONE_REPO_COMMANDS = ("backup", "info", "repo-get", "repo-ls", "restore", "verify", "expire")
LOCAL, BUCKET = 1, 2
BUCKET_ARCHIVE_TIMEOUT = 10
BUCKET_CA_NAME = "repo2-ca.pem"  # the bucket's CA, copied beside the config: the server's user must read it
# The bucket as pgBackRest's repo2: host and port of its S3 endpoint (always HTTPS), the path of the repository in
# the bucket, its own cipher pass (None: not encrypted) and its full backups' retention in days.
S3Repo = collections.namedtuple("S3Repo", "host port bucket path region key secret uri_style ca_file verify_tls "
                                          "cipher_pass retention_days")


def check_traversable(path, os_user):
    """Every directory above ``path`` must let ``os_user`` pass (search permission as owner, group member or
    other: a backup directory of mode 0710 whose group is the user's is enough)."""
    entry = os_user_entry(os_user)
    groups = set(os.getgrouplist(entry.pw_name, entry.pw_gid))
    probe = os.path.dirname(os.path.abspath(path))
    while True:
        info = os.stat(probe)
        if info.st_uid == entry.pw_uid:
            allowed = info.st_mode & 0o100
        elif info.st_gid in groups:
            allowed = info.st_mode & 0o010
        else:
            allowed = info.st_mode & 0o001
        if not allowed and entry.pw_uid != 0:
            raise RecoveryError(
                "directory %s (mode %04o, owner %s:%s) is not traversable by %s, who runs pgBackRest: give that "
                "user's group search permission (e.g. chmod 0710, chgrp %s)" % (
                    probe, info.st_mode & 0o7777, _name(pwd.getpwuid, info.st_uid), _name(grp.getgrgid, info.st_gid),
                    os_user, _name(grp.getgrgid, entry.pw_gid)))
        if probe == os.path.dirname(probe):
            return
        probe = os.path.dirname(probe)


def _name(lookup, number):
    try:
        return lookup(number)[0]
    except KeyError:
        return str(number)


def default_config_dir(path):
    """Where a repository's config file, spool, lock and log directories live by default: beside it."""
    return os.path.abspath(path) + ".conf.d"


class Repository:
    """A posix pgBackRest repository at ``path`` for one stanza. Its config file, spool, lock and log directories
    live in ``config_dir`` (default ``PATH.conf.d`` beside it), private to ``os_user``.

    ``pg_data_dir``, port and socket directory are the server's own view. A server in a container
    (``in_server``: argv to run a program there by name) sees its data directory elsewhere than this host
    (``local_data_dir``): the commands that need the server, archive_command, restore_command and pg_waldump run in
    the container; info, verify, repo-get and restore (the server stopped) run here."""

    def __init__(self, path, stanza, pg_data_dir, pg_port, pg_socket_dir, os_user="postgres", cipher_pass=None,
                 db_user="postgres", config_dir=None, retention_full=2, retention_full_type="count", process_max=2,
                 pg_bin_dir=PG_BIN, in_server=None, local_data_dir=None, bucket=None):
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", stanza or ""):
            raise RecoveryError("stanza name %r: use letters, digits, '.', '_' and '-'" % stanza)
        if retention_full_type not in RETENTION_TYPES:
            raise RecoveryError("retention_full_type %r: choose one of %s" % (retention_full_type,
                                                                             ", ".join(RETENTION_TYPES)))
        self.path, self.stanza = os.path.abspath(path), stanza
        self.pg_data_dir, self.pg_port, self.pg_socket_dir = os.path.abspath(pg_data_dir), int(pg_port), pg_socket_dir
        self.os_user, self.db_user, self.cipher_pass = os_user, db_user, cipher_pass
        self.config_dir = os.path.abspath(config_dir or default_config_dir(self.path))
        self.config_file = os.path.join(self.config_dir, CONFIG_NAME)
        self.retention_full, self.retention_full_type = retention_full, retention_full_type
        self.process_max, self.pg_bin_dir = process_max, pg_bin_dir
        self.in_server = in_server
        self.local_data_dir = os.path.abspath(local_data_dir or pg_data_dir)
        self.program = commands.find_program("pgbackrest", ["/usr/bin", "/usr/local/bin"])
        self.bucket, self.repo = bucket, LOCAL

    def in_bucket(self):
        """This repository read from and backed up into the bucket (repo2) instead of the local path (repo1)."""
        if self.bucket is None:
            raise RecoveryError("pgBackRest stanza %s has no repository in a bucket: set christmas_s3_endpoint" %
                                self.stanza)
        other = copy.copy(self)
        other.repo = BUCKET
        return other

    @property
    def location(self):
        """Where the repository read is: its path, or ``s3://BUCKET/PATH`` for the bucket's."""
        if self.repo == BUCKET:
            return "s3://%s%s" % (self.bucket.bucket, self.bucket.path)
        return self.path

    # ------------------------------------------------------------------ setup

    def prepare(self):
        """Create the repository and config directories (0700, owned by the OS user) and write the config file;
        returns True when the config file changed."""
        entry = os_user_entry(self.os_user)
        for directory in (self.path, self.config_dir):
            check_traversable(directory, self.os_user)
            self._own_private_dir(directory, entry)
        for name in ("spool", "lock", "log", "tmp"):
            self._own_private_dir(os.path.join(self.config_dir, name), entry)
        if self.bucket is not None and self.bucket.ca_file:
            try:
                with open(self.bucket.ca_file, "rb") as handle:
                    authority = handle.read()
            except OSError as err:
                raise RecoveryError("christmas_s3_ca_file %s cannot be read: %s" % (self.bucket.ca_file,
                                                                                    err.strerror)) from None
            write_bytes_atomic(os.path.join(self.config_dir, BUCKET_CA_NAME), authority)
            give_to_os_user(os.path.join(self.config_dir, BUCKET_CA_NAME), self.os_user)
        text = self.render_config().encode("utf-8")
        try:
            with open(self.config_file, "rb") as handle:
                if handle.read() == text:
                    return False
        except FileNotFoundError:
            pass
        write_bytes_atomic(self.config_file, text)
        give_to_os_user(self.config_file, self.os_user)
        return True

    @staticmethod
    def _own_private_dir(path, entry):
        """``path`` as a 0700 directory of the OS user; an existing one of someone else only when it is empty."""
        if not os.path.lexists(path):
            if not os.path.isdir(os.path.dirname(path)):
                raise RecoveryError("parent directory of %s does not exist" % path)
            os.mkdir(path, 0o700)
        elif not os.path.isdir(path) or os.path.islink(path):
            raise RecoveryError("%s exists and is not a directory" % path)
        info = os.lstat(path)
        if info.st_uid != entry.pw_uid:
            if os.listdir(path):
                raise RecoveryError("directory %s belongs to uid %d, not to %s, and is not empty: give it to %s or "
                                    "use another directory" % (path, info.st_uid, entry.pw_name, entry.pw_name))
            os.chown(path, entry.pw_uid, entry.pw_gid)
        os.chmod(path, 0o700)

    def render_config(self):
        settings = [("repo1-path", self.path), ("repo1-retention-full", str(self.retention_full)),
                    ("repo1-retention-full-type", self.retention_full_type),
                    ("process-max", str(self.process_max)), ("compress-type", WAL_COMPRESS), ("start-fast", "y"),
                    ("archive-async", "y"),
                    ("spool-path", os.path.join(self.config_dir, "spool")),
                    ("lock-path", os.path.join(self.config_dir, "lock")),
                    ("log-path", os.path.join(self.config_dir, "log"))]
        if self.cipher_pass:
            settings += [("repo1-cipher-type", "aes-256-cbc"), ("repo1-cipher-pass", self.cipher_pass)]
        settings += self._bucket_settings()
        stanza = [("pg1-path", self.pg_data_dir), ("pg1-port", str(self.pg_port)),
                  ("pg1-socket-path", self.pg_socket_dir), ("pg1-user", self.db_user)]
        sections = [("backup", [("compress-type", BACKUP_COMPRESS)])]
        if self.bucket is not None:
            # a segment is acknowledged once in both repositories; while the bucket cannot be reached, each attempt
            # gives up on it after this many seconds, and the local repository still gets the segment meanwhile
            sections.append(("archive-push", [("io-timeout", str(BUCKET_ARCHIVE_TIMEOUT))]))
        return config_text(settings, self.stanza, [(name, value) for name, value in stanza if value is not None],
                           sections)

    def _bucket_settings(self):
        """repo2 in the bucket: path-style or host-style requests to the endpoint over TLS, checked against the CA
        copied beside the config (or the system's), its retention and its own cipher."""
        bucket = self.bucket
        if bucket is None:
            return []
        settings = [("repo2-type", "s3"), ("repo2-path", bucket.path), ("repo2-s3-bucket", bucket.bucket),
                    ("repo2-s3-endpoint", bucket.host), ("repo2-storage-port", str(bucket.port)),
                    ("repo2-s3-region", bucket.region), ("repo2-s3-uri-style", bucket.uri_style),
                    ("repo2-s3-key", bucket.key), ("repo2-s3-key-secret", bucket.secret),
                    ("repo2-retention-full", str(bucket.retention_days)), ("repo2-retention-full-type", "time")]
        if bucket.ca_file:
            settings.append(("repo2-storage-ca-file", os.path.join(self.config_dir, BUCKET_CA_NAME)))
        if not bucket.verify_tls:
            settings.append(("repo2-storage-verify-tls", "n"))
        if bucket.cipher_pass:
            settings += [("repo2-cipher-type", "aes-256-cbc"), ("repo2-cipher-pass", bucket.cipher_pass)]
        return settings

    def check_cipher(self):
        """Refuse a configuration whose encryption differs from the repository's: pgBackRest keeps a stanza's cipher
        for life, and its own error on a mismatch names neither side. The stanza's info files are read (encrypted
        ones are OpenSSL's salted format)."""
        for kind, name in (("backup", "backup.info"), ("archive", "archive.info")):
            path = os.path.join(self.path, kind, self.stanza, name)
            try:
                with open(path, "rb") as handle:
                    encrypted = handle.read(len(OPENSSL_SALTED)) == OPENSSL_SALTED
            except FileNotFoundError:
                continue
            except OSError as err:
                raise RecoveryError("pgBackRest info file %s cannot be read: %s" % (path, err.strerror)) from None
            if encrypted != bool(self.cipher_pass):
                raise RecoveryError(
                    "pgBackRest repository %s (stanza %s) is %s but christmas_encryption is %s: a repository keeps "
                    "its encryption; set christmas_encryption back or use a new christmas_pitr_repo" % (
                        self.path, self.stanza, "encrypted" if encrypted else "not encrypted",
                        "off" if encrypted else "on"))

    def _server_command(self, command):
        """A pgBackRest command line the server runs through a shell (hence the quoting)."""
        return "%s --config=%s --stanza=%s %s" % (shlex.quote("pgbackrest" if self.in_server else self.program),
                                                  shlex.quote(self.config_file), shlex.quote(self.stanza), command)

    def archive_command(self):
        return self._server_command("archive-push %p")

    def restore_options(self):
        """What a restore here into a server's data directory seen elsewhere adds: this host's path, and the
        restore_command as the server runs it."""
        if self.local_data_dir == self.pg_data_dir:
            return []
        return ["--pg1-path=" + self.local_data_dir, "--recovery-option=restore_command=" + self._server_command(
            ("--repo=%d " % self.repo if self.bucket else "") + 'archive-get %f "%p"')]

    # ------------------------------------------------------------------ commands

    def _arguments(self, command, options, args):
        if self.bucket is not None and command in ONE_REPO_COMMANDS:
            options = ("--repo=%d" % self.repo, *options)
        return ["--config=" + self.config_file, "--stanza=" + self.stanza, *options, command, *args]

    def argv(self, command, *options, args=()):
        """The command line of ``command`` run here as the OS user (beside the server in its container for those
        that need the server)."""
        if self.in_server and command in SERVER_COMMANDS and "--no-online" not in options:
            return self.in_server(["pgbackrest", *self._arguments(command, options, args)])
        if self.in_server and command == "restore" and os.geteuid() == 0:
            # the engine keeps volumes below a directory only root may pass; pgBackRest run by root gives the
            # restored files to the cluster's user, whose uid the container's server has
            return [self.program, *self._arguments(command, options, args)]
        return as_os_user(self.os_user, [self.program, *self._arguments(command, options, args)])

    def run(self, command, *options, args=()):
        """Run a pgBackRest command as the OS user (``args`` follow the command); its ``ERROR: [code]: message``
        line is the error."""
        if not os.path.exists(self.config_file):
            raise RecoveryError("pgBackRest config %s does not exist: prepare the repository first" % self.config_file)
        return commands.run(self.argv(command, *options, args=args), "pgbackrest %s" % command, env=self._env(),
                            cause=pgbackrest_error)

    @staticmethod
    def _env():
        """PGBACKREST_* variables would override the config file: the file alone decides."""
        return {name: None for name in os.environ if name.startswith("PGBACKREST_")}

    def version(self):
        """pgBackRest's version, as ``pgbackrest version`` prints it (``pgBackRest 2.45``): ``2.45``."""
        return commands.run([self.program, "version"], "pgbackrest version").split()[-1]

    def stanza_create(self, online=True):
        """The stanza in every repository; ``online=False`` with the server stopped (its data directory's
        pg_control read here)."""
        if online:
            self.run("stanza-create")
        else:
            self.run("stanza-create", "--no-online", "--pg1-path=" + self.local_data_dir)

    def check(self):
        """pgBackRest's own end-to-end test: the server reachable, a WAL switch archived into the repository."""
        self.run("check")

    def info(self):
        return parse_info(self.run("info", "--output=json"), self.stanza)

    def backup(self, kind="full"):
        """Take a backup; returns the new backup as ``info`` reports it (label, WAL range, times, sizes)."""
        if kind not in BACKUP_KINDS:
            raise RecoveryError("backup kind %r: choose one of %s" % (kind, ", ".join(BACKUP_KINDS)))
        before = {backup["label"] for backup in self.info()["backups"]}
        self.run("backup", "--type=" + kind)
        new = [backup for backup in self.info()["backups"] if backup["label"] not in before]
        if not new:
            raise RecoveryError("pgbackrest backup --type=%s ended but info lists no new backup" % kind)
        return new[-1]

    def verify(self):
        """Check every WAL and backup file against its checksum. pgBackRest exits 0 when it finds corrupt or
        missing files, so its report is parsed: any named file or a summary status other than ok raises."""
        out = self.run("verify", "--output=text", "--verbose", "--log-level-console=info", "--job-retry=0")
        files, bad = verify_problems(out)
        if files or bad:
            raise RecoveryError("pgbackrest verify of stanza %s in %s found problems: %s" % (
                self.stanza, self.location, "; ".join(files) or "status " + ", ".join(bad)))
        return {"stanza": self.stanza, "status": "ok", "repo": self.location}

    # ------------------------------------------------------------------ what a restore can reach

    def window(self):
        """The times a point-in-time restore can reach, as aware UTC datetimes.

        ``oldest``: the second after the stop time of the oldest backup whose WAL from its start on is in the
        archive. Recovery must replay a backup up to its end before it is consistent; a target before that fails
        ("requested recovery stop point is before consistent recovery point"), so a backup's start is not
        reachable, its end is. pgBackRest records that end in whole seconds and picks a backup whose stop time is
        before the target, so the first whole second after it is the oldest target it accepts.

        ``newest``: the time of the last commit (or abort) record in the newest archived WAL segment, read from the
        repository itself (archive-get, pg_waldump). Recovery to a time stops at the first commit after that time,
        so a target is reached only when a later commit is archived: targets strictly before ``newest`` are
        reachable; PostgreSQL 15 refuses to start on a target beyond the archived WAL ("recovery ended before
        configured recovery target was reached"). archive_now writes such a commit every time it runs. On several
        timelines this is the newest timeline's (what recovery_target_timeline=latest follows)."""
        info = self.info()
        if info["status_code"] != 0:
            raise RecoveryError("pgBackRest stanza %s: %s" % (self.stanza, info["status"]))
        current = [archive for archive in info["archives"] if archive["db_id"] == max(info["db_ids"])]
        if not current or not current[0]["max"]:
            raise RecoveryError("no WAL archived for stanza %s yet" % self.stanza)
        archive = current[0]
        covered = [backup for backup in info["backups"] if backup["db_id"] == archive["db_id"] and not backup["error"]
                   and backup["archive_start"] >= archive["min"]]
        if not covered:
            raise RecoveryError("stanza %s has no backup whose WAL is archived" % self.stanza)
        segment, newest = self._newest_commit(archive)
        oldest = datetime.datetime.fromisoformat(covered[0]["stop_time"]) + datetime.timedelta(seconds=1)
        return {"oldest": oldest, "oldest_backup": covered[0]["label"], "newest": newest, "newest_segment": segment,
                "archive_id": archive["id"]}

    def _newest_commit(self, archive):
        """(segment, time) of the newest commit a restore following the latest timeline can reach: the last
        commit in the newest segments of that timeline or, when none is archived there yet, the last one before
        the timeline branched off its parent (and so on up the history). Read with repo-get, which needs no data
        directory (archive-get reads pg_control): the window is known also when the cluster is lost."""
        archive_dir = "archive/%s/%s" % (self.stanza, archive["id"])
        listed = json.loads(self.run("repo-ls", "--output=json", "--recurse", args=[archive_dir]))
        segments = {match.group(1): path for path, match in ((path, SEGMENT_FILE_RE.search(path)) for path in listed)
                    if match}
        histories = {int(match.group(1), 16): path for path, match in
                     ((path, HISTORY_FILE_RE.search(path)) for path in listed) if match}
        timeline = max([int(name[:8], 16) for name in segments] + list(histories) or [0])
        before, segment_size = None, None
        while timeline:
            names = sorted((name for name in segments if int(name[:8], 16) == timeline), reverse=True)
            if before is not None and names:
                segment_size = segment_size or self._fetch(archive_dir, segments[names[0]], os.path.getsize,
                                                           names[0])
                names = [name for name in names if name <= segment_name(timeline, before, segment_size)]
            for name in names[:NEWEST_SEGMENTS_TRIED]:
                found = newest_commit_time(self._fetch(archive_dir, segments[name], self._waldump, name), before)
                if found:
                    return name, found
            if timeline not in histories:
                break
            text = self._fetch(archive_dir, histories[timeline], _read_text)
            timeline, branched = parse_history(text, timeline)
            before = branched if before is None else min(before, branched)  # a nearer branch point limits more
        raise RecoveryError("no commit found in the archived WAL of stanza %s that a restore can reach (newest "
                            "segment %s): archive a commit first (archive_now)" % (
                                self.stanza, max(segments) if segments else "none"))

    def _fetch(self, archive_dir, path, read, name=None):
        """``read(file)`` of the archived file ``path`` (decrypted by repo-get, decompressed here) as ``name`` (a
        WAL segment's own name: pg_waldump reads the timeline and position from it) in our private tmp directory,
        owned by the OS user (pg_waldump runs as that user); removed after."""
        name = name or os.path.basename(path)
        raw, plain = (os.path.join(self.config_dir, "tmp", name + suffix) for suffix in (".repo", ""))
        try:
            with os.fdopen(os.open(raw, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600), "wb") as out:
                commands.finish(commands.start(self.argv("repo-get", args=[archive_dir + "/" + path]),
                                               env=self._env(), stdout=out), "pgbackrest repo-get of %s" % name)
            if path.endswith(".gz"):
                with gzip.open(raw, "rb") as source, open(plain, "wb") as target:
                    shutil.copyfileobj(source, target, 1024 * 1024)
            elif path.endswith(".history"):
                os.rename(raw, plain)
            else:
                raise RecoveryError("archived WAL %s is not gz-compressed (compress-type=gz is what this repository's "
                                    "config sets)" % path)
            give_to_os_user(plain, self.os_user)
            return read(plain)
        except (OSError, EOFError) as err:
            raise RecoveryError("cannot read archived WAL %s: %s" % (name, err)) from None
        finally:
            remove_quietly(raw)
            remove_quietly(plain)

    def _waldump(self, path):
        """pg_waldump of the server's version, beside the server (in its container: the file is in our tmp
        directory, mounted there at the same path)."""
        if self.in_server:
            argv = self.in_server(["env", "TZ=UTC", "pg_waldump", "--rmgr=Transaction", path])
        else:
            argv = as_os_user(self.os_user, [os.path.join(self.pg_bin_dir, "pg_waldump"), "--rmgr=Transaction", path])
        return commands.run(argv, "pg_waldump of archived WAL %s" % os.path.basename(path), env={"TZ": "UTC"})


def _read_text(path):
    with open(path, encoding="utf-8") as handle:
        return handle.read()

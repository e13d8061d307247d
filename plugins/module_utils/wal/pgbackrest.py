# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A pgBackRest repository on a posix path: its config file (0600, owned by the cluster's OS user, the only place
the cipher pass is written), pgBackRest commands run as that user, backups and what they cover read from
``info --output=json``, the recoverable window, and ``verify`` whose output is parsed (it exits 0 on corrupt files)."""

from __future__ import annotations

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

BACKUP_KINDS = ("full", "diff", "incr")
OPENSSL_SALTED = b"Salted__"
CONFIG_NAME = "pgbackrest.conf"
# WAL segments stay gzip, which the window's reader opens with the standard library; backups are Zstandard, which a
# restore decompresses several times faster at about gzip's size.
WAL_COMPRESS, BACKUP_COMPRESS = "gz", "zst"
RETENTION_TYPES = ("count", "time")
SEGMENT_FILE_RE = re.compile(r"(?:^|/)([0-9A-F]{24})-[0-9a-f]{40}(?:\.\w+)?$")
HISTORY_FILE_RE = re.compile(r"(?:^|/)([0-9A-F]{8})\.history$")
COMMIT_RE = re.compile(r"lsn: ([0-9A-F]+/[0-9A-F]+),.*desc: (?:COMMIT|ABORT)(?:_PREPARED)? "
                       r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) UTC")
VERIFY_FILE_RE = re.compile(r"P\d+\s+INFO: ((?:invalid|file missing|missing)[^'\n]*?)'?([\w./-]+\.\w+|[\w./-]+)'?"
                            r"(?::|$)", re.M)
VERIFY_STATUS_RE = re.compile(r"^\s*status: (\w+)", re.M)
NEWEST_SEGMENTS_TRIED = 4
SERVER_COMMANDS = ("stanza-create", "check", "backup")  # they connect to the server and read its data directory


def pgbackrest_error(text):
    """pgBackRest's own ``ERROR: [code]: message`` line, else the usual first error line."""
    for line in text.splitlines():
        if line.strip().startswith("ERROR:"):
            return line.strip()
    return commands.cause_line(text)


def utc_iso(epoch):
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).isoformat()


def parse_backup(entry):
    """One backup of ``info --output=json`` as we report it: label, kind, WAL range, UTC times, sizes."""
    return {
        "label": entry["label"], "type": entry["type"], "prior": entry.get("prior"),
        "archive_start": entry["archive"]["start"], "archive_stop": entry["archive"]["stop"],
        "lsn_start": entry.get("lsn", {}).get("start"), "lsn_stop": entry.get("lsn", {}).get("stop"),
        "start_time": utc_iso(entry["timestamp"]["start"]), "stop_time": utc_iso(entry["timestamp"]["stop"]),
        "start_epoch": entry["timestamp"]["start"], "stop_epoch": entry["timestamp"]["stop"],
        "size": entry["info"]["size"], "delta": entry["info"]["delta"],
        "repo_size": entry["info"]["repository"]["size"], "repo_delta": entry["info"]["repository"]["delta"],
        "db_id": entry["database"]["id"], "error": bool(entry.get("error")),
    }


def parse_info(text, stanza):
    """The stanza's part of ``info --output=json``: status, cipher, backups (oldest first) and WAL ranges."""
    try:
        stanzas = json.loads(text)
    except ValueError as err:
        raise RecoveryError("pgbackrest info printed no JSON: %s" % err) from None
    found = [entry for entry in stanzas if entry.get("name") == stanza]
    if not found:
        raise RecoveryError("pgbackrest info does not list stanza %s" % stanza)
    entry = found[0]
    return {
        "stanza": stanza, "status_code": entry["status"]["code"], "status": entry["status"]["message"],
        "cipher": entry.get("cipher"),
        "backups": sorted((parse_backup(backup) for backup in entry.get("backup", [])),
                          key=lambda backup: backup["start_time"]),
        "archives": [{"id": archive["id"], "db_id": archive["database"]["id"], "min": archive.get("min"),
                      "max": archive.get("max")} for archive in entry.get("archive", [])],
        "db_ids": [db["id"] for db in entry.get("db", [])],
    }


def lsn_value(text):
    high, low = text.split("/")
    return (int(high, 16) << 32) + int(low, 16)


def newest_commit_time(waldump_text, before_lsn=None):
    """The time of the last commit or abort record pg_waldump printed (run with TZ=UTC), only those before
    ``before_lsn`` when given; None when there is none."""
    times = [stamp for lsn, stamp in COMMIT_RE.findall(waldump_text)
             if before_lsn is None or lsn_value(lsn) < before_lsn]
    if not times:
        return None
    return datetime.datetime.fromisoformat(times[-1]).replace(tzinfo=datetime.UTC)


def parse_history(text, timeline):
    """(parent timeline, LSN where ``timeline`` branched off it) from the last line of a timeline history file."""
    lines = [line.split() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    try:
        return int(lines[-1][0]), lsn_value(lines[-1][1])
    except (IndexError, ValueError):
        raise RecoveryError("history file of timeline %d is not a timeline history" % timeline) from None


def segment_name(timeline, lsn, segment_size):
    """The WAL segment holding ``lsn`` on ``timeline``."""
    per_id = 0x100000000 // segment_size
    number = lsn // segment_size
    return "%08X%08X%08X" % (timeline, number // per_id, number % per_id)


def verify_problems(text):
    """What ``pgbackrest verify --log-level-console=info`` reported: (files it named with the reason, status lines
    of the summary that are not ``ok``). It exits 0 whatever it found, so this is the verdict."""
    files = ["%s (%s)" % (path, reason.strip().rstrip(":")) for reason, path in VERIFY_FILE_RE.findall(text)]
    statuses = VERIFY_STATUS_RE.findall(text)
    bad = sorted({status for status in statuses if status != "ok"})  # the log and the text summary both say it
    if not statuses:
        bad = ["no status reported"]
    return files, bad


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


def config_text(settings_global, stanza, settings_stanza, settings_commands=()):
    """The config file: the global section, ``settings_commands`` as (command, settings) sections
    ``[global:COMMAND]`` (options of that command alone), then the stanza's section."""
    lines = ["[global]"]
    lines += ["%s=%s" % item for item in settings_global]
    for command, settings in settings_commands:
        lines += ["", "[global:%s]" % command]
        lines += ["%s=%s" % item for item in settings]
    lines += ["", "[%s]" % stanza]
    lines += ["%s=%s" % item for item in settings_stanza]
    for line in lines:
        if "\n" in line or "\r" in line or "\x00" in line:
            raise RecoveryError("pgBackRest option %s holds a line break or NUL" % line.split("=", 1)[0])
    return "\n".join(lines) + "\n"


def default_config_dir(path):
    """Where a repository's config file, spool, lock and log directories live by default: beside it."""
    return os.path.abspath(path) + ".conf.d"


def read_config(path, stanza):
    """The options of ``path`` (a config file ``config_text`` wrote) for ``stanza``: its global section, then the
    stanza's; empty when the file does not exist."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except FileNotFoundError:
        return {}
    except OSError as err:
        raise RecoveryError("pgBackRest config %s cannot be read: %s" % (path, err.strerror)) from None
    options, section = {}, None
    for line in (line.strip() for line in lines):
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif "=" in line and not line.startswith("#") and section in ("global", stanza):
            name, value = line.split("=", 1)
            options[name.strip()] = value.strip()
    return options


class Repository:
    """A posix pgBackRest repository at ``path`` for one stanza. Its config file, spool, lock and log directories
    live in ``config_dir`` (default ``PATH.conf.d`` beside it), private to ``os_user``.

    ``pg_data_dir``, port and socket directory are the server's own view. A server in a container
    (``in_server``: argv to run a program there by name) sees its data directory elsewhere than this host
    (``local_data_dir``): the commands that need the server, archive_command, restore_command and pg_waldump run in
    the container; info, verify, repo-get and restore (the server stopped) run here."""

    def __init__(self, path, stanza, pg_data_dir, pg_port, pg_socket_dir, os_user="postgres", cipher_pass=None,
                 db_user="postgres", config_dir=None, retention_full=2, retention_full_type="count", process_max=2,
                 pg_bin_dir=PG_BIN, in_server=None, local_data_dir=None):
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
        stanza = [("pg1-path", self.pg_data_dir), ("pg1-port", str(self.pg_port)),
                  ("pg1-socket-path", self.pg_socket_dir), ("pg1-user", self.db_user)]
        return config_text(settings, self.stanza, [(name, value) for name, value in stanza if value is not None],
                           [("backup", [("compress-type", BACKUP_COMPRESS)])])

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
        return ["--pg1-path=" + self.local_data_dir,
                "--recovery-option=restore_command=" + self._server_command('archive-get %f "%p"')]

    # ------------------------------------------------------------------ commands

    def _arguments(self, command, options, args):
        return ["--config=" + self.config_file, "--stanza=" + self.stanza, *options, command, *args]

    def argv(self, command, *options, args=()):
        """The command line of ``command`` run here as the OS user (beside the server in its container for those
        that need the server)."""
        if self.in_server and command in SERVER_COMMANDS:
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

    def stanza_create(self):
        self.run("stanza-create")

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
            raise RecoveryError("pgbackrest verify of stanza %s found problems: %s" % (
                self.stanza, "; ".join(files) or "status " + ", ".join(bad)))
        return {"stanza": self.stanza, "status": "ok"}

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

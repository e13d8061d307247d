# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A PostgreSQL server run from its data directory with pg_ctl, as the cluster's OS user: stop, start, restart,
whether it runs, and SQL over its unix socket (peer login, as pgBackRest itself connects)."""

from __future__ import annotations

import os
import pwd
import subprocess
import time

from ansible_collections.christmas.recovery.plugins.module_utils.core import commands
from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError

PG_BIN = "/usr/lib/postgresql/15/bin"
POLL = 0.2


def os_user_entry(os_user):
    try:
        return pwd.getpwnam(os_user)
    except KeyError:
        raise RecoveryError("OS user %s does not exist on this host" % os_user) from None


def give_to_os_user(path, os_user):
    """``path`` owned by ``os_user`` (and its group) when we are root; otherwise it is ours already."""
    if os.geteuid() == 0:
        entry = os_user_entry(os_user)
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return path


def make_dir_of_os_user(path, os_user):
    """A new 0700 directory ``path`` of ``os_user``."""
    os.mkdir(path, 0o700)
    return give_to_os_user(path, os_user)


def as_os_user(os_user, argv):
    """``argv`` run as ``os_user``: directly when we already are that user, else through runuser (we are root)."""
    if os.geteuid() == os_user_entry(os_user).pw_uid:
        return list(argv)
    if os.geteuid() != 0:
        raise RecoveryError("%s must run as %s: run this as root or as that user" % (os.path.basename(argv[0]),
                                                                                   os_user))
    return [commands.find_program("runuser", ["/usr/sbin", "/sbin"]), "-u", os_user, "--", *argv]


def read_postmaster_pid(data_dir):
    """What a running postmaster wrote into postmaster.pid: pid, port, first socket directory, first listen
    address and its status (``starting``, ``ready``, ``standby``, ``stopping``); None when there is no file."""
    try:
        with open(os.path.join(data_dir, "postmaster.pid"), encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except FileNotFoundError:
        return None
    lines += [""] * (8 - len(lines))
    return {"pid": int(lines[0]) if lines[0].strip().isdigit() else None, "port": lines[3].strip(),
            "socket_dir": lines[4].strip(), "listen": lines[5].strip(), "status": lines[7].strip()}


class PgCtlServer:
    """The server of ``data_dir``; its port, socket directories and listen addresses come from its own
    postgresql.conf / postgresql.auto.conf, never from the command line, so that a restart brings back the same
    server. pg_ctl's output goes to ``log_file`` (default: ``DATA_DIR.log`` beside the data directory, where a
    delta restore does not remove it). A cluster whose config files live elsewhere (Debian's
    ``/etc/postgresql/15/main``, whose ``data_directory`` names ``data_dir``) is run with ``pg_ctl -D config_dir``."""

    def __init__(self, data_dir, os_user="postgres", bin_dir=PG_BIN, log_file=None, timeout=120, db_user=None,
                 config_dir=None):
        self.data_dir = os.path.abspath(data_dir)
        self.config_dir = os.path.abspath(config_dir) if config_dir else self.data_dir
        self.os_user, self.bin_dir, self.timeout = os_user, bin_dir, timeout
        self.db_user = db_user or os_user
        self.log_file = log_file or self.data_dir.rstrip("/") + ".log"

    runs_here = True  # its programs run on this host (a container's run inside it: ComposeServer)

    @property
    def pg1_path(self):
        """The data directory as the server (and pgBackRest's commands beside it) sees it."""
        return self.data_dir

    def tool_argv(self, program, *args):
        """One of PostgreSQL's programs (psql, pg_isready) run as the OS user beside the server."""
        return as_os_user(self.os_user, [os.path.join(self.bin_dir, program), *args])

    def problem(self, paths):
        """Why pgBackRest's commands beside this server could not reach ``paths`` (the repository), or None."""
        return None

    def _pg_ctl(self, *args):
        return as_os_user(self.os_user, [os.path.join(self.bin_dir, "pg_ctl"), "-D", self.config_dir, *args])

    def is_running(self):
        """pg_ctl status: 0 running, 3 not running, 4 no usable data directory (a lost or half-restored one, which
        runs no server either)."""
        proc = subprocess.run(self._pg_ctl("status"), stdin=subprocess.DEVNULL, capture_output=True, check=False)
        return proc.returncode == 0

    def log_size(self):
        try:
            return os.path.getsize(self.log_file)
        except FileNotFoundError:
            return 0

    def log_since(self, offset):
        """What the server logged to ``log_file`` after ``offset`` (see log_size)."""
        try:
            with open(self.log_file, "rb") as handle:
                handle.seek(offset)
                return handle.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def stop(self, mode="fast"):
        """Stop and wait (pg_ctl -w, then postmaster.pid gone); False when it was not running."""
        if not self.is_running():
            return False
        commands.run(self._pg_ctl("-m", mode, "-w", "-t", str(self.timeout), "stop"), "pg_ctl stop of %s"
                     % self.data_dir)
        self._wait(lambda: read_postmaster_pid(self.data_dir) is None, "the postmaster of %s to exit")
        return True

    def start(self):
        """Start and wait until it accepts connections (pg_ctl -w, then pg_isready on its own socket); False when
        it ran already. A server that exits while starting (a failed recovery) raises with the log's FATAL line."""
        if self.is_running():
            return False
        offset = self.log_size()
        try:
            commands.run(self._pg_ctl("-l", self.log_file, "-w", "-t", str(self.timeout), "start"),
                         "pg_ctl start of %s" % self.data_dir)
        except RecoveryError as err:
            raise RecoveryError("%s; server log: %s" % (err, fatal_line(self.log_since(offset)))) from None
        self._wait(self.accepts_connections, "%s to accept connections" % self.data_dir, offset)
        return True

    def restart(self):
        self.stop()
        return self.start()

    def connection(self):
        """(socket directory, port) of the running server, from postmaster.pid."""
        info = read_postmaster_pid(self.data_dir)
        if not info or not info["port"]:
            raise RecoveryError("PostgreSQL of %s is not running (no postmaster.pid)" % self.data_dir)
        return info["socket_dir"] or "127.0.0.1", info["port"]

    def accepts_connections(self):
        host, port = self.connection()
        argv = self.tool_argv("pg_isready", "-q", "-h", host, "-p", port, "-U", self.db_user, "-d", "postgres")
        return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, check=False).returncode == 0

    def query(self, statement):
        """Rows of ``statement`` (lists of strings) run by psql as the OS user over the server's socket."""
        host, port = self.connection()
        argv = self.tool_argv("psql", "-X", "-q", "-A", "-t", "-F", "\t", "-v", "ON_ERROR_STOP=1", "-h", host, "-p",
                              port, "-U", self.db_user, "-d", "postgres", "-c", statement)
        out = commands.run(argv, "psql on %s" % self.data_dir, env={"PGAPPNAME": "christmas.recovery"})
        return [line.split("\t") for line in out.splitlines() if line]

    def _wait(self, condition, what, log_offset=None):
        deadline = time.monotonic() + self.timeout
        while not condition():
            if log_offset is not None and read_postmaster_pid(self.data_dir) is None:
                raise RecoveryError("PostgreSQL of %s exited while starting: %s" % (
                    self.data_dir, fatal_line(self.log_since(log_offset))))
            if time.monotonic() > deadline:
                raise RecoveryError("timed out after %d s waiting for %s" % (self.timeout, what))
            time.sleep(POLL)


def fatal_line(log_text):
    """The first FATAL or PANIC line of a server log excerpt (why a start failed), else its last line."""
    lines = [line.strip() for line in log_text.splitlines() if line.strip()]
    fatal = [line for line in lines if "FATAL:" in line or "PANIC:" in line]
    return (fatal[:1] or lines[-1:] or ["nothing logged"])[0]

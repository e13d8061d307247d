# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A rehearsal's scratch directory and the throwaway servers in it: owned by a marker, locked, every process started
in it found and stopped, removed after."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time

from ansible_collections.christmas.recovery.plugins.module_utils.core import commands
from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError

MARKER = ".christmas-rehearsal"
STOP_SECONDS = 30


class RehearsalBusy(RecoveryError):
    """Another rehearsal holds the scratch directory: no verdict on the set, so nothing is recorded beside it."""


# ---------------------------------------------------------------- pure helpers


def _cwd_of(pid):
    try:
        return os.readlink("/proc/%s/cwd" % pid)  # a removed directory reads as "PATH (deleted)"
    except OSError:
        return None


def _stat_of(pid):
    """The fields of /proc/PID/stat after the command name (state, parent pid, ...), or None when it is gone."""
    try:
        with open("/proc/%s/stat" % pid, encoding="ascii", errors="replace") as handle:
            return handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def processes_in(root):
    """Live processes whose working directory is ``root`` or below it: the scratch servers chdir there."""
    root = os.path.realpath(root)
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        cwd = _cwd_of(pid)
        if cwd and (cwd == root or cwd.startswith(root + os.sep)) and int(pid) != os.getpid():
            stat = _stat_of(pid)
            if stat and stat[0] != "Z":  # a zombie is dead already
                found.append(int(pid))
    return found


def _signal(pids, sig):
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def stop_processes_in(root, first_signals=(), timeout=STOP_SECONDS):
    """Send each (pid, signal) of ``first_signals``, wait for everything running in ``root`` to end, then SIGKILL
    what is left; returns how many processes there were."""
    seen = set(processes_in(root))
    for pid, sig in first_signals:
        _signal([pid], sig)
    deadline = time.monotonic() + (timeout if first_signals else 0)
    while True:
        left = processes_in(root)
        seen.update(left)
        if not left:
            return len(seen)
        if time.monotonic() >= deadline:
            _signal(left, signal.SIGKILL)
            if time.monotonic() >= deadline + 10:
                raise RecoveryError("processes %s in %s survive SIGKILL" % (", ".join(map(str, left)), root))
        time.sleep(0.1)


def _parent_of(pid):
    stat = _stat_of(pid)
    return int(stat[1]) if stat else None


def _pid_from(path):
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            return int(handle.readline().strip())
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------- the scratch directory


class ScratchDir:
    """The rehearsal's private directory, owned by the servers' OS user, 0700, flock'ed while in use."""

    def __init__(self, path, uid, gid):
        self.path, self.uid, self.gid = os.path.abspath(path), uid, gid
        self.pg_data = os.path.join(self.path, "pgdata")
        self.redis_dir = os.path.join(self.path, "redis")
        self.config_dir = os.path.join(self.path, "config")
        self.fd = None
        self.leftover_removed = False

    def exists(self):
        """Whether a rehearsal's directory is there (a leftover, or one in use); raises for anything else."""
        if not os.path.lexists(self.path):
            return False
        if not (os.path.isdir(self.path) and not os.path.islink(self.path)
                and os.path.isfile(os.path.join(self.path, MARKER))):
            raise RecoveryError("scratch_dir %s exists and is not a rehearsal's scratch directory (no %s in it): "
                                "remove it or choose another" % (self.path, MARKER))
        return True

    def _holder(self):
        try:
            with open(os.path.join(self.path, MARKER), encoding="utf-8") as handle:
                return json.load(handle).get("pid", "unknown")
        except (OSError, ValueError, AttributeError):
            return "unknown"

    def _lock(self, fd):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EAGAIN, errno.EACCES):
                raise RehearsalBusy("another rehearsal (pid %s) is running in %s" % (
                    self._holder(), self.path)) from None
            raise

    def remove_leftover(self, progress):
        """A directory a killed rehearsal left: its servers stopped (PostgreSQL immediately), then removed."""
        if not self.exists():
            return
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        self._lock(fd)
        try:
            progress("removing the scratch directory %s a killed rehearsal left" % self.path)
            # PostgreSQL's immediate shutdown (its backends follow the postmaster), a clean stop for anything else.
            postmaster = _pid_from(os.path.join(self.pg_data, "postmaster.pid"))
            first = [(pid, signal.SIGQUIT if pid == postmaster else signal.SIGTERM)
                     for pid in processes_in(self.path) if pid == postmaster or _parent_of(pid) != postmaster]
            stopped = stop_processes_in(self.path, first, timeout=10)
            progress("stopped %d processes of the killed rehearsal" % stopped)
            _remove_tree(self.path)
            self.leftover_removed = True
        finally:
            os.close(fd)

    def create(self, set_id):
        parent = os.path.dirname(self.path)
        if not os.path.isdir(parent):
            os.makedirs(parent, 0o711)
        os.mkdir(self.path, 0o700)
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        self._lock(fd)
        self.fd = fd
        if os.geteuid() == 0:
            os.chown(self.path, self.uid, self.gid)
        marker = {"pid": os.getpid(), "host": socket.gethostname(), "set_id": set_id,
                  "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        with open(os.open(os.path.join(self.path, MARKER), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w",
                  encoding="utf-8") as handle:
            json.dump(marker, handle)
        os.mkdir(self.redis_dir, 0o700)
        if os.geteuid() == 0:
            os.chown(self.redis_dir, self.uid, self.gid)

    def teardown(self, servers):
        """Stop the servers fast, then anything else still running in the directory, and remove it; only a
        directory this run made and holds."""
        if self.fd is None:
            return
        try:
            first = [(server.proc.pid, server.stop_signal) for server in servers if server.proc.poll() is None]
            stop_processes_in(self.path, first)
            for server in servers:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    server.proc.wait(timeout=1)
            _remove_tree(self.path)
        finally:
            os.close(self.fd)
            self.fd = None


def _remove_tree(path):
    """rmtree that also takes a restored tree whose directories are read-only (when not running as root)."""

    def writable_again(function, name, _exc):
        os.chmod(os.path.dirname(name), 0o700)
        function(name)

    if os.path.lexists(path):
        shutil.rmtree(path, onerror=writable_again)


def check_reachable(path, uid, gids):
    """Each existing ancestor of ``path`` must let ``uid`` through (PostgreSQL and Redis run as that user)."""
    if uid == os.geteuid():
        return
    current = os.path.dirname(os.path.abspath(path))
    while True:
        if os.path.isdir(current):
            info = os.stat(current)
            if info.st_uid == uid:
                ok = info.st_mode & 0o100
            elif info.st_gid in gids:
                ok = info.st_mode & 0o010
            else:
                ok = info.st_mode & 0o001
            if not ok:
                raise RecoveryError("scratch_dir %s: %s (mode %s) does not let the scratch user %s through" % (
                    path, current, oct(info.st_mode & 0o7777), pwd.getpwuid(uid).pw_name))
        if current == os.path.dirname(current):
            return
        current = os.path.dirname(current)


# ---------------------------------------------------------------- servers


def free_port(avoid):
    for _attempt in range(20):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in avoid:
            return port
    raise RecoveryError("no free port on 127.0.0.1")


class Server:
    """A scratch server running in the foreground as our child; it dies with us (PR_SET_PDEATHSIG)."""

    def __init__(self, name, proc, log, stop_signal):
        self.name, self.proc, self.log, self.stop_signal = name, proc, log, stop_signal


def last_log_line(log):
    try:
        with open(log, encoding="utf-8", errors="replace") as handle:
            return commands.cause_line(handle.read()[-8000:])
    except OSError:
        return "no log"


def spawn(argv, scratch, log, user, stdin=subprocess.DEVNULL, pass_fds=()):
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        return subprocess.Popen(
            argv, stdin=stdin, stdout=fd, stderr=fd, cwd=scratch.path, umask=0o077, pass_fds=pass_fds,
            env=commands.child_env({"PGPASSWORD": None, "PGPASSFILE": None, "LC_ALL": "C"}),
            user=user[0], group=user[1], extra_groups=user[2],
            preexec_fn=commands.die_with_parent,  # noqa: PLW1509 - started when no other thread runs
        )
    finally:
        os.close(fd)


def run_as(scratch):
    """(uid, gid, supplementary groups) for Popen: the scratch user as root, nothing to change otherwise."""
    if os.geteuid() != 0:
        return None, None, None
    return scratch.uid, scratch.gid, []


def wait_ready(server, ready, timeout):
    deadline = time.monotonic() + timeout
    while True:
        if server.proc.poll() is not None:
            raise RecoveryError("the scratch %s exited at start (exit %s): %s" % (
                server.name, server.proc.returncode, last_log_line(server.log)))
        try:
            ready()
            return
        except RecoveryError as err:
            if time.monotonic() >= deadline:
                raise RecoveryError("the scratch %s did not accept connections in %d s: %s" % (
                    server.name, timeout, err)) from None
        time.sleep(0.2)



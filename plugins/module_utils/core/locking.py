# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One writer per backup directory, or any number of readers: an flock'ed lock file that records its writer."""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import time

from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.core.fsutil import FILE_MODE

LOCK_NAME = ".christmas-recovery.lock"


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # no such process, or a number no process can have
        return False
    except PermissionError:
        pass
    return not _is_zombie(pid)


def _is_zombie(pid):
    """A holder killed but not yet reaped by its parent still answers kill(pid, 0), yet it is dead."""
    try:
        with open("/proc/%d/stat" % pid, encoding="ascii", errors="replace") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False  # no /proc here: kill(pid, 0) is all we know


READERS = "a restore, rehearsal, verification or offsite copy reading its sets"


class DirectoryLock:
    """Lock on a backup directory; the kernel drops it when its holder dies, so a stale file is harmless.

    Backups and retention take it exclusively; readers (``shared=True``) take it together, so no set is deleted while
    one reads it. Only an exclusive holder writes itself into the file: readers would overwrite each other.
    ``stale_holder`` names the dead process whose leftover lock file was taken over, if any.
    """

    def __init__(self, directory, wait_seconds=0, shared=False):
        self.path = os.path.join(directory, LOCK_NAME)
        self.wait_seconds = wait_seconds
        self.shared = shared
        self.stale_holder = None
        self._fd = None

    def _holder(self):
        try:
            # Only informative: garbage left in the file must not stop a backup.
            with open(self.path, encoding="utf-8", errors="replace") as handle:
                return handle.read().strip()
        except OSError:
            return ""

    def _open(self):
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, FILE_MODE)
        except OSError as err:
            if not self.shared or err.errno not in (errno.EACCES, errno.EROFS):
                raise
        try:  # a reader of a directory it may not write: the lock file a writer made is enough to share
            return os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as err:
            if err.errno in (errno.ENOENT, errno.EACCES, errno.EROFS):
                return None  # nobody with our rights can delete a set here either
            raise

    def __enter__(self):
        fd = self._open()
        if fd is None:
            return self
        deadline = time.monotonic() + self.wait_seconds
        while True:
            try:
                fcntl.flock(fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
                break
            except OSError as err:
                if err.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                if time.monotonic() >= deadline:
                    holder = self._holder()
                    os.close(fd)
                    raise RecoveryError(
                        "backup directory %s is locked by %s; %s" % (
                            os.path.dirname(self.path), holder or READERS,
                            "another backup or prune is running" if holder else "retry when it has finished")
                    ) from None
                time.sleep(0.2)
        if self.shared:
            self._fd = fd
            return self
        previous = self._holder()
        if previous:
            fields = dict(part.split("=", 1) for part in previous.split() if "=" in part)
            pid = fields.get("pid", "")
            if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
                self.stale_holder = previous
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, ("pid=%d host=%s since=%s\n" % (
                os.getpid(), socket.gethostname(), time.strftime("%Y-%m-%dT%H:%M:%S%z"))).encode(), 0)
        except OSError as err:  # e.g. a full disk: say which file, and let go of the lock
            os.close(fd)
            raise RecoveryError("cannot write the lock file %s: %s" % (self.path, err.strerror)) from None
        self._fd = fd
        return self

    def __exit__(self, *exc):
        if self._fd is None:
            return False
        if not self.shared:
            os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None
        return False

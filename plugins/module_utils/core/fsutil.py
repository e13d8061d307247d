# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private files and directories, atomic writes, streaming checksums."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil

from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError

FILE_MODE = 0o600
DIR_MODE = 0o700
CHUNK = 1024 * 1024


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_private_dir(path):
    """Create ``path`` (and parents) as 0700 whatever the umask; an existing directory keeps its mode."""
    if os.path.isdir(path):
        return False
    parent = os.path.dirname(os.path.abspath(path))
    if parent != path:
        make_private_dir(parent)  # makedirs would create missing parents 0777 & ~umask: world-writable under umask 0
    os.makedirs(path, DIR_MODE, exist_ok=True)
    os.chmod(path, DIR_MODE)
    return True


def tighten_private_dir(path):
    """An existing directory that others may read or write: tightened to 0700 when it is ours (returns what was
    done, for the output), refused when it belongs to someone else; None when it was private already. Its group
    may traverse it (0710: continuous protection lets the database server's archive_command through)."""
    info = os.lstat(path)
    mode = info.st_mode & 0o7777
    if not mode & 0o067:
        return None
    if info.st_uid != os.geteuid():
        raise RecoveryError("directory %s is mode %04o and owned by uid %d, not by us (uid %d): make it private "
                            "(chmod 0700) or use another directory" % (path, mode, info.st_uid, os.geteuid()))
    os.chmod(path, DIR_MODE)
    return "tightened %s from %04o to %04o" % (path, mode, DIR_MODE)


def make_tree_private(root):
    """Directories 0700 and files 0600 below ``root``, symlinks untouched."""
    os.chmod(root, DIR_MODE)
    for base, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(os.path.join(base, name), DIR_MODE)
        for name in files:
            path = os.path.join(base, name)
            if not os.path.islink(path):
                os.chmod(path, FILE_MODE)


def name_file(err, path):
    """Errors of buffered writes carry no file name; the operator needs it (which file met a full disk?)."""
    if err.filename is None:
        err.filename = path
    return err


def write_json_atomic(path, data):
    """Write JSON to a temporary name, fsync, rename over ``path``, fsync the directory."""
    write_bytes_atomic(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def write_bytes_atomic(path, data):
    """Write ``data`` (0600) to a temporary name, fsync, rename over ``path``, fsync the directory."""
    directory, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(directory, ".%s.tmp" % name)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), FILE_MODE)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.rename(tmp, path)
    except OSError as err:
        remove_quietly(tmp)
        raise name_file(err, path) from None
    except BaseException:
        remove_quietly(tmp)
        raise
    fsync_dir(directory)


def remove_quietly(path):
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass


def read_blocks(handle):
    """Yield a file object's content in CHUNK-sized blocks."""
    while True:
        block = handle.read(CHUNK)
        if not block:
            return
        yield block


def sha256_file(path):
    """Return (size, hex digest) of a regular file, read in large chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb", buffering=0) as handle:
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        while True:
            count = handle.readinto(buf)
            if not count:
                break
            digest.update(view[:count])
            size += count
    return size, digest.hexdigest()


class HashingWriter:
    """A binary file written under a temporary name, hashed while written, renamed into place on ``commit``."""

    def __init__(self, path):
        self.path = path
        self.tmp_path = os.path.join(os.path.dirname(path), ".%s.tmp" % os.path.basename(path))
        fd = os.open(self.tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
        self._handle = os.fdopen(fd, "wb", buffering=CHUNK)
        self._digest = hashlib.sha256()
        self.size = 0

    def write(self, data):
        try:
            self._handle.write(data)
        except OSError as err:
            raise name_file(err, self.path) from None
        self._digest.update(data)
        self.size += len(data)
        return len(data)

    def tell(self):
        return self.size

    def commit(self):
        try:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
            os.rename(self.tmp_path, self.path)
        except OSError as err:
            raise name_file(err, self.path) from None
        return self.size, self._digest.hexdigest()

    def abort(self):
        """Cleanup never raises: closing flushes what a full disk refused, and that error must not replace the
        caller's, nor leave the temporary file behind."""
        with contextlib.suppress(OSError):
            self._handle.close()
        remove_quietly(self.tmp_path)


def tree_bytes(root):
    """Bytes in the regular files below ``root`` (for progress reports)."""
    total = 0
    for base, _dirs, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(base, name)).st_size
            except FileNotFoundError:
                continue  # renamed or removed while we looked
    return total


def free_bytes(path):
    """Free bytes on the file system holding ``path`` (or its nearest existing parent)."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    stats = os.statvfs(probe)
    return stats.f_bavail * stats.f_frsize


def filesystem_usage(path):
    """Size and free bytes (as an unprivileged writer sees them) of the file system holding ``path`` (or its nearest
    existing parent), and the free share in percent."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    stats = os.statvfs(probe)
    size, free = stats.f_blocks * stats.f_frsize, stats.f_bavail * stats.f_frsize
    return {"path": probe, "size_bytes": size, "free_bytes": free,
            "free_percent": round(100.0 * free / size, 2) if size else 0.0}


def require_free_space(path, needed, what):
    available = free_bytes(path)
    if available < needed:
        raise RecoveryError(
            "not enough disk space for %s on %s: %d MiB needed, %d MiB free"
            % (what, path, needed // 2**20 + 1, available // 2**20)
        )
    return available

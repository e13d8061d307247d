# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The config tree archived with modes, links and empty directories; hardlinks stored as copies, special files skipped.

The archive is checked member by member before a restore (``check_members``); config_restore.py restores it."""

from __future__ import annotations

import hashlib
import math
import os
import stat
import tarfile

from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.core.fsutil import (
    CHUNK,
    HashingWriter,
    read_blocks,
    sha256_file,
)
from ansible_collections.christmas.recovery.plugins.module_utils.core.safe_paths import (
    check_relative_name,
    link_stays_inside,
)

ARCHIVE_FILE = "config.tar"
ALLOWED_TYPES = {tarfile.REGTYPE: "file", tarfile.AREGTYPE: "file", tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "link"}
MAX_ID = 2**32 - 2  # the largest uid/gid chown can set: 2**32 - 1 means "leave unchanged"
MAX_MTIME = 2**40  # seconds, some 35,000 years: far inside what utime accepts
SPECIAL_KINDS = ((stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
                 (stat.S_ISBLK, "block device"))
HARDLINKS_STORED_AS = "copies"  # each name of a hardlinked file is archived as a regular file of its own


class TreeDigest:
    """SHA-256 over the sorted (type, path, mode, content digest or link target) of every entry."""

    def __init__(self):
        self.entries = []

    def add(self, kind, name, mode, detail=""):
        self.entries.append((kind, name, stat.S_IMODE(mode), detail))

    def with_modes(self, mode_of):
        """The digest of the same tree with every file's and directory's mode passed through ``mode_of``."""
        other = TreeDigest()
        other.entries = [(kind, name, mode if kind == "link" else mode_of(mode), detail)
                         for kind, name, mode, detail in self.entries]
        return other

    def hexdigest(self):
        digest = hashlib.sha256()
        for entry in sorted("%s\0%s\0%o\0%s\n" % entry for entry in self.entries):
            digest.update(entry.encode("utf-8", "surrogateescape"))
        return digest.hexdigest()


def special_kind(mode):
    """'FIFO', 'socket', 'character device' or 'block device'; None for files, directories and symlinks."""
    return next((kind for test, kind in SPECIAL_KINDS if test(mode)), None)


class HashingReader:
    """A file object hashed (SHA-256) as it is read."""

    def __init__(self, handle):
        self._handle, self.digest = handle, hashlib.sha256()

    def read(self, size=-1):
        data = self._handle.read(size)
        self.digest.update(data)
        return data


def walk_tree(root, skip=()):
    """Yield (relative name, lstat) for every entry below ``root``, parents first, without following links; the
    top-level names in ``skip`` are left out."""
    stack = [""]
    while stack:
        relative = stack.pop()
        directory = os.path.join(root, relative) if relative else root
        for name in sorted(os.listdir(directory), reverse=True):
            if not relative and name in skip:
                continue
            child = relative + "/" + name if relative else name
            info = os.lstat(os.path.join(root, child))
            yield child, info
            if stat.S_ISDIR(info.st_mode):
                stack.append(child)


def current_tree_digest(root):
    """Digest of a tree on disk, comparable with the manifest's ``tree_sha256`` (special files are left out, as the
    archive leaves them out); None when it does not exist."""
    if not os.path.isdir(root):
        return None
    digest = TreeDigest()
    digest.add("root", ".", os.lstat(root).st_mode)
    for name, info in walk_tree(root):
        path = os.path.join(root, name)
        if stat.S_ISDIR(info.st_mode):
            digest.add("dir", name, info.st_mode)
        elif stat.S_ISLNK(info.st_mode):
            digest.add("link", name, 0, os.readlink(path))
        elif stat.S_ISREG(info.st_mode):
            digest.add("file", name, info.st_mode, sha256_file(path)[1])
    return digest.hexdigest()


def plan_archive(root):
    """Walk the tree as ``archive_tree`` will, before anything expensive runs: refuse what cannot be archived (an
    escaping symlink, an unreadable entry) in one line; returns (special files to skip, hardlinked names)."""
    if not os.path.isdir(root):
        raise RecoveryError("config_dir %s is not a directory" % root)
    skipped, hardlinked = [], []
    try:
        if not os.access(root, os.R_OK | os.X_OK):
            raise PermissionError(13, "Permission denied", root)
        for name, info in walk_tree(root):
            path = os.path.join(root, name)
            kind = special_kind(info.st_mode)
            if kind:
                skipped.append({"path": name, "type": kind})
            elif stat.S_ISLNK(info.st_mode):
                target = os.readlink(path)
                if not link_stays_inside(name, target):
                    raise RecoveryError(
                        "config symlink %s -> %s points outside %s; it could not be restored safely (make it "
                        "relative and inside the tree)" % (name, target, root))
            elif stat.S_ISDIR(info.st_mode) and not os.access(path, os.R_OK | os.X_OK):
                raise PermissionError(13, "Permission denied", path)
            elif stat.S_ISREG(info.st_mode):
                if not os.access(path, os.R_OK):
                    raise PermissionError(13, "Permission denied", path)
                if info.st_nlink > 1:
                    hardlinked.append(name)
    except OSError as err:
        raise RecoveryError("config tree %s cannot be read, nothing backed up: %s: %s" % (
            root, err.filename or root, err.strerror)) from None
    return skipped, hardlinked


def skipped_warnings(section):
    """The warnings a backup gives for the special files its config archive left out."""
    return ["config entry %s is a %s: skipped, not in the backup" % (item["path"], item["type"])
            for item in (section or {}).get("skipped", [])]


def archive_tree(root, set_dir, progress=print):
    """Write the tree as a PAX tar; refuse what could not be restored faithfully (special files, escaping links)."""
    if not os.path.isdir(root):
        raise RecoveryError("config_dir %s is not a directory" % root)
    progress("archiving config tree %s" % root)
    writer = HashingWriter(os.path.join(set_dir, ARCHIVE_FILE))
    digest = TreeDigest()
    counts = {"file": 0, "dir": 0, "link": 0}
    skipped, hardlinked = [], []
    try:
        root_info = os.lstat(root)
        digest.add("root", ".", root_info.st_mode)
        with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT, encoding="utf-8",
                          errors="surrogateescape", bufsize=CHUNK) as archive:
            for name, info in walk_tree(root):
                path = os.path.join(root, name)
                kind = special_kind(info.st_mode)
                if kind:
                    progress("skipping config entry %s: a %s" % (name, kind))
                    skipped.append({"path": name, "type": kind})
                    continue
                member = archive.gettarinfo(path, arcname=name)
                if stat.S_ISREG(info.st_mode):
                    if member.islnk():  # a second name of a file already archived: stored as a copy
                        member.type, member.linkname, member.size = tarfile.REGTYPE, "", info.st_size
                    if info.st_nlink > 1:
                        hardlinked.append(name)
                    with open(path, "rb") as handle:
                        reader = HashingReader(handle)
                        archive.addfile(member, reader)
                    digest.add("file", name, info.st_mode, reader.digest.hexdigest())
                    counts["file"] += 1
                elif stat.S_ISDIR(info.st_mode):
                    archive.addfile(member)
                    digest.add("dir", name, info.st_mode)
                    counts["dir"] += 1
                elif stat.S_ISLNK(info.st_mode):
                    if not link_stays_inside(name, member.linkname):
                        raise RecoveryError(
                            "config symlink %s -> %s points outside %s; it could not be restored safely (make it "
                            "relative and inside the tree)" % (name, member.linkname, root))
                    archive.addfile(member)
                    digest.add("link", name, 0, member.linkname)
                    counts["link"] += 1
        size, sha = writer.commit()
    except OSError as err:
        writer.abort()
        raise RecoveryError("archiving config tree %s failed: %s: %s" % (
            root, err.filename or root, err.strerror)) from None
    except BaseException:
        writer.abort()
        raise
    # Absolute: recorded for the operator; a restore always goes into the config_dir it is given.
    metadata = {"source_dir": os.path.abspath(root), "root_mode": "%o" % stat.S_IMODE(root_info.st_mode),
                "root_owner": [root_info.st_uid, root_info.st_gid], "entries": counts,
                "tree_sha256": digest.hexdigest(), "skipped": sorted(skipped, key=lambda item: item["path"]),
                "hardlinks": {"stored_as": HARDLINKS_STORED_AS, "paths": sorted(hardlinked)}}
    return metadata, {ARCHIVE_FILE: (size, sha)}


def check_members(path):
    """List the archive and check every member; return the members, their total size and the tree digest.

    Only regular files, directories and symlinks staying inside the tree; no absolute names, no ``..``, no duplicates,
    nothing beneath a symlink.
    """
    members = []
    names = {}
    total = 0
    digest = TreeDigest()
    try:
        with tarfile.open(path, mode="r:", encoding="utf-8", errors="surrogateescape") as archive:
            for member in archive:
                name = member.name
                label = "config archive member %r" % name[:200]
                if member.type not in ALLOWED_TYPES:
                    raise RecoveryError("%s is a %s; only files, directories and symlinks are restored" % (
                        label, "hardlink" if member.islnk() else "device, FIFO or other special file"))
                parts = check_relative_name(name, "config archive member")
                if not _settable(member):
                    raise RecoveryError("%s has an owner or time that cannot be set (uid %r, gid %r, mtime %r)" % (
                        label, member.uid, member.gid, member.mtime))
                clean = "/".join(parts)
                if clean in names:
                    raise RecoveryError("%s appears twice in the archive" % label)
                parent = "/".join(parts[:-1])
                if parent and parent not in names:
                    raise RecoveryError("%s lies beneath %r, which is not listed before it" % (label, parent[:200]))
                if parent and names[parent] != "dir":
                    raise RecoveryError("%s lies beneath a %s, not a directory" % (label, names[parent]))
                kind = ALLOWED_TYPES[member.type]
                if kind == "link":
                    if not link_stays_inside(clean, member.linkname):
                        raise RecoveryError("%s is a symlink to %r, outside the tree" % (label, member.linkname))
                    digest.add("link", clean, 0, member.linkname)
                elif kind == "file":
                    content = hashlib.sha256()
                    handle = archive.extractfile(member)
                    for block in read_blocks(handle):
                        content.update(block)
                    digest.add("file", clean, member.mode, content.hexdigest())
                    total += member.size
                else:
                    digest.add("dir", clean, member.mode)
                names[clean] = kind
                members.append((clean, kind, member))
    except (tarfile.TarError, EOFError) as err:
        raise RecoveryError("config archive %s is unreadable: %s" % (os.path.basename(path), err)) from None
    return members, total, digest


def _settable(member):
    """Whether chown and utime accept the member's numbers; a PAX header can carry any, even negative or NaN."""
    return (0 <= member.uid <= MAX_ID and 0 <= member.gid <= MAX_ID and math.isfinite(member.mtime)
            and abs(member.mtime) < MAX_MTIME)

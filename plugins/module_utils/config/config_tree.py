# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The config tree: archived with modes, links and empty directories; restored beside the old tree, then swapped."""

from __future__ import annotations

import hashlib
import math
import os
import stat
import tarfile
import time

from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.core.fsutil import (
    CHUNK,
    DIR_MODE,
    HashingWriter,
    fsync_dir,
    read_blocks,
    remove_quietly,
    require_free_space,
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


class TreeDigest:
    """SHA-256 over the sorted (type, path, mode, content digest or link target) of every entry."""

    def __init__(self):
        self.entries = []

    def add(self, kind, name, mode, detail=""):
        self.entries.append("%s\0%s\0%o\0%s\n" % (kind, name, stat.S_IMODE(mode), detail))

    def hexdigest(self):
        digest = hashlib.sha256()
        for entry in sorted(self.entries):
            digest.update(entry.encode("utf-8", "surrogateescape"))
        return digest.hexdigest()


class _HashingReader:
    def __init__(self, handle):
        self._handle, self.digest = handle, hashlib.sha256()

    def read(self, size=-1):
        data = self._handle.read(size)
        self.digest.update(data)
        return data


def walk_tree(root):
    """Yield (relative name, lstat) for every entry below ``root``, parents first, without following links."""
    stack = [""]
    while stack:
        relative = stack.pop()
        directory = os.path.join(root, relative) if relative else root
        for name in sorted(os.listdir(directory), reverse=True):
            child = relative + "/" + name if relative else name
            info = os.lstat(os.path.join(root, child))
            yield child, info
            if stat.S_ISDIR(info.st_mode):
                stack.append(child)


def current_tree_digest(root):
    """Digest of a tree on disk, comparable with the manifest's ``tree_sha256``; None when it does not exist."""
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
        else:
            digest.add("other", name, info.st_mode)
    return digest.hexdigest()


def archive_tree(root, set_dir, progress=print):
    """Write the tree as a PAX tar; refuse what could not be restored faithfully (special files, escaping links)."""
    if not os.path.isdir(root):
        raise RecoveryError("config_dir %s is not a directory" % root)
    progress("archiving config tree %s" % root)
    writer = HashingWriter(os.path.join(set_dir, ARCHIVE_FILE))
    digest = TreeDigest()
    counts = {"file": 0, "dir": 0, "link": 0}
    try:
        root_info = os.lstat(root)
        digest.add("root", ".", root_info.st_mode)
        with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT, encoding="utf-8",
                          errors="surrogateescape", bufsize=CHUNK) as archive:
            for name, info in walk_tree(root):
                path = os.path.join(root, name)
                member = archive.gettarinfo(path, arcname=name)
                if stat.S_ISREG(info.st_mode):
                    with open(path, "rb") as handle:
                        reader = _HashingReader(handle)
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
                else:
                    raise RecoveryError("config entry %s is not a file, directory or symlink" % path)
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
                "tree_sha256": digest.hexdigest()}
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


def _owners_match(dest, members, metadata):
    """The tree digest leaves owners out (uids differ between hosts), but a restore as root sets them: as root, a
    tree whose entries have other owners is not yet the archived one."""
    if os.geteuid() != 0:
        return True
    expected = [(dest, metadata["root_owner"])] + [(os.path.join(dest, name), (member.uid, member.gid))
                                                    for name, _kind, member in members]
    try:
        owners = [os.lstat(path) for path, _owner in expected]
    except OSError:  # changed while we looked: restore
        return False
    return all((info.st_uid, info.st_gid) == tuple(owner)
               for info, (_path, owner) in zip(owners, expected, strict=True))


def restore_tree(archive_path, metadata, dest, set_id, check_mode=False, force=False, progress=print):
    """Make ``dest`` identical to the archived tree; the current tree is first moved aside as a safety copy."""
    members, total, digest = check_members(archive_path)
    digest.add("root", ".", int(metadata["root_mode"], 8))
    if digest.hexdigest() != metadata["tree_sha256"]:
        raise RecoveryError("config archive %s does not match the manifest's tree checksum" % archive_path)
    dest = os.path.abspath(dest.rstrip("/"))
    parent, base = os.path.split(dest)
    stamp = time.strftime("%Y%m%d_%H%M%S")
    safety = "%s.pre-restore-%s" % (dest, stamp)
    result = {"config_dir": dest, "entries": len(members)}
    if not force and current_tree_digest(dest) == metadata["tree_sha256"] and _owners_match(dest, members, metadata):
        result.update(changed=False, state="already identical to set %s" % set_id, safety_copy=None)
        return result
    free = require_free_space(parent, int(total * 1.05) + 2**20, "config restore into %s" % parent)
    result.update(changed=True, free_bytes=free)
    if check_mode:
        result.update(state="would replace %s (current tree moved to %s)" % (dest, safety), safety_copy=None)
        return result
    progress("restoring config tree into %s" % dest)
    os.makedirs(parent, exist_ok=True)
    staging = os.path.join(parent, ".%s.restore-%s" % (base, set_id))
    remove_quietly(staging)
    os.mkdir(staging, DIR_MODE)
    try:
        _extract(archive_path, members, staging)
        if os.geteuid() == 0:
            os.chown(staging, *metadata["root_owner"])
        os.chmod(staging, int(metadata["root_mode"], 8))
    except OSError as err:
        remove_quietly(staging)
        raise RecoveryError("extracting config into %s failed: %s: %s" % (
            staging, err.filename or staging, err.strerror)) from None
    except BaseException:
        remove_quietly(staging)
        raise
    if os.path.lexists(dest):
        progress("moving the current config tree aside to %s" % safety)
        os.rename(dest, safety)
        result["safety_copy"] = safety
    else:
        result["safety_copy"] = None
    os.rename(staging, dest)
    fsync_dir(parent)
    result["state"] = "restored from set %s" % set_id
    return result


def _extract(archive_path, members, staging):
    """Create members below ``staging`` only: exclusive creates, no link following, links and dir modes last."""
    as_root = os.geteuid() == 0
    links, dirs = [], []
    with tarfile.open(archive_path, mode="r:", encoding="utf-8", errors="surrogateescape") as archive:
        for name, kind, member in members:
            path = os.path.join(staging, name)
            if kind == "dir":
                os.mkdir(path, DIR_MODE)
                dirs.append((path, member))
            elif kind == "file":
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                with os.fdopen(fd, "wb") as out:
                    source = archive.extractfile(member)
                    for block in read_blocks(source):
                        out.write(block)
                    out.flush()
                    os.fsync(out.fileno())
                _apply_owner_mode_time(path, member, as_root)
            else:
                links.append((path, member))
    for path, member in links:
        os.symlink(member.linkname, path)
        if as_root:
            os.lchown(path, member.uid, member.gid)
    for path, member in reversed(dirs):
        _apply_owner_mode_time(path, member, as_root)


def _apply_owner_mode_time(path, member, as_root):
    if as_root:
        os.chown(path, member.uid, member.gid)
    os.chmod(path, member.mode)
    os.utime(path, (member.mtime, member.mtime))

# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The config restore: extracted beside the old tree and swapped in, or, on a mount point, in place; the old tree
kept as a safety copy with a name no other restore takes; set-ID, sticky and world-write bits removed unless kept."""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import tempfile
import time

from ansible_collections.christmas.recovery.plugins.module_utils.config.config_tree import (
    check_members,
    walk_tree,
)
from ansible_collections.christmas.recovery.plugins.module_utils.config.config_tree import (
    current_tree_digest as _current_digest,
)
from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.core.fsutil import (
    DIR_MODE,
    fsync_dir,
    read_blocks,
    remove_quietly,
    require_free_space,
)

RISKY_BITS = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX | stat.S_IWOTH
STAGING_PREFIX = ".christmas-restore-"


def restored_mode(mode, keep_special_modes=False):
    """The mode a recorded mode is restored with: without set-user-ID, set-group-ID, sticky and world-write bits
    unless they are kept."""
    mode = stat.S_IMODE(mode)
    return mode if keep_special_modes else mode & ~RISKY_BITS


def destination_owner(dest):
    """(uid, gid) of the destination directory, or of its nearest existing parent when it does not exist."""
    path = dest
    while not os.path.isdir(path):
        path = os.path.dirname(path)
    info = os.stat(path)
    return info.st_uid, info.st_gid


def restored_tree_digest(archive_path, metadata):
    """The tree digest of the set's config as a default restore leaves it (set-ID, sticky, world-write removed)."""
    _members, _total, digest = check_members(archive_path)
    digest.add("root", ".", int(metadata["root_mode"], 8))
    return digest.with_modes(restored_mode).hexdigest()


def _nearest_existing(path):
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def placement(dest):
    """'rename' (new tree beside the old one, then swapped) or 'in place' (a mount point, or another file system
    than its parent's: its entries are replaced inside it); refuses, in one line, what cannot be written."""
    parent = os.path.dirname(dest)
    anchor = _nearest_existing(parent)
    if not os.access(anchor, os.W_OK):
        raise RecoveryError("config restore into %s is not possible: %s is not writable (the new tree and the safety "
                            "copy are written there)" % (dest, anchor))
    if os.path.islink(dest) or not os.path.isdir(dest):
        return "rename"  # nothing there yet, or a link or file that is moved aside as it is
    in_place = os.path.ismount(dest) or os.lstat(dest).st_dev != os.stat(parent).st_dev
    if not os.access(dest, os.W_OK):
        raise RecoveryError("config restore into %s is not possible: it is not writable (read-only file system or "
                            "no permission)" % dest)
    return "in place" if in_place else "rename"


def _mode_changes(members, metadata, keep_special_modes):
    recorded = [(".", int(metadata["root_mode"], 8))] + [(name, member.mode) for name, kind, member in members
                                                       if kind != "link"]
    return [{"path": name, "recorded": "%04o" % stat.S_IMODE(mode),
             "restored": "%04o" % restored_mode(mode, keep_special_modes)}
            for name, mode in sorted(recorded) if restored_mode(mode, keep_special_modes) != stat.S_IMODE(mode)]


def _owners_match(dest, expected):
    """The tree digest leaves owners out (uids differ between hosts), but a restore as root sets them: as root, a
    tree whose entries have other owners is not yet the restored one."""
    if os.geteuid() != 0:
        return True
    try:
        owners = [os.lstat(os.path.join(dest, name)) for name, _owner in expected]
    except OSError:  # changed while we looked: restore
        return False
    return all((info.st_uid, info.st_gid) == tuple(owner)
               for info, (_name, owner) in zip(owners, expected, strict=True))


def safety_copy_name(dest, set_id, taken=os.path.lexists):
    """``DEST.pre-restore-STAMP-SETID``, with ``-2``, ``-3``... when another restore took that name already."""
    base = "%s.pre-restore-%s-%s" % (dest, time.strftime("%Y%m%d_%H%M%S"), set_id)
    candidate, number = base, 1
    while taken(candidate):
        number += 1
        candidate = "%s-%d" % (base, number)
    return candidate


def _reserve_safety_copy(dest, set_id):
    """Create the safety copy's directory exclusively: two restores never share it, an older one is never replaced."""
    while True:
        path = safety_copy_name(dest, set_id)
        try:
            os.mkdir(path, DIR_MODE)
            return path
        except FileExistsError:
            continue


def restore_tree(archive_path, metadata, dest, set_id, check_mode=False, force=False, progress=print,
                 keep_special_modes=False, keep_owners=False):
    """Make ``dest`` the archived tree; the current tree is first kept as a safety copy.

    Modes lose set-ID, sticky and world-write bits unless ``keep_special_modes``; as root, entries are owned by the
    destination directory's owner (its parent's when it does not exist) unless ``keep_owners``.
    """
    members, total, digest = check_members(archive_path)
    digest.add("root", ".", int(metadata["root_mode"], 8))
    if digest.hexdigest() != metadata["tree_sha256"]:
        raise RecoveryError("config archive %s does not match the manifest's tree checksum" % archive_path)
    dest = os.path.abspath(dest.rstrip("/"))
    parent = os.path.dirname(dest)
    how = placement(dest)
    mode_of = lambda mode: restored_mode(mode, keep_special_modes)  # noqa: E731
    if keep_owners:
        owner_of = {name: (member.uid, member.gid) for name, _kind, member in members}
        owner_of["."] = tuple(metadata["root_owner"])
    else:
        common = destination_owner(dest)
        owner_of = dict.fromkeys(["."] + [name for name, _kind, _member in members], common)
    changes = _mode_changes(members, metadata, keep_special_modes)
    result = {"config_dir": dest, "entries": len(members), "placement": how, "changes_modes": changes,
              "owner": "as recorded" if keep_owners else list(owner_of["."])}
    expected = digest.with_modes(mode_of).hexdigest()
    if not force and _current_digest(dest) == expected and _owners_match(dest, sorted(owner_of.items())):
        result.update(changed=False, state="already identical to set %s" % set_id, safety_copy=None)
        return result
    room = parent if how == "rename" else dest
    free = require_free_space(_nearest_existing(room), int(total * 1.05) + 2**20, "config restore into %s" % room)
    result.update(changed=True, free_bytes=free)
    if check_mode:
        safety = safety_copy_name(dest, set_id)
        moved = "current tree %s to %s" % ("moved" if how == "rename" else "copied", safety)
        result.update(state="would replace %s%s (%s)%s" % (
            dest, " in place" if how == "in place" else "", moved,
            "; %d mode%s changed" % (len(changes), "" if len(changes) == 1 else "s") if changes else ""),
            safety_copy=None)
        return result
    progress("restoring config tree into %s%s" % (dest, " in place" if how == "in place" else ""))
    if changes:
        progress("modes changed: %s" % ", ".join("%s %s -> %s" % (c["path"], c["recorded"], c["restored"])
                                                 for c in changes))
    os.makedirs(parent, exist_ok=True)
    if how == "in place":
        result["safety_copy"] = _replace_in_place(archive_path, members, metadata, dest, set_id, mode_of, owner_of,
                                                  progress)
    else:
        result["safety_copy"] = _replace_by_rename(archive_path, members, metadata, dest, set_id, mode_of, owner_of,
                                                   progress)
    result["state"] = "restored from set %s" % set_id
    return result


def _replace_by_rename(archive_path, members, metadata, dest, set_id, mode_of, owner_of, progress):
    parent, base = os.path.split(dest)
    staging = os.path.join(parent, ".%s.restore-%s" % (base, set_id))
    remove_quietly(staging)
    os.mkdir(staging, DIR_MODE)
    try:
        _extract(archive_path, members, staging, mode_of, owner_of)
        _apply_root(staging, metadata, mode_of, owner_of)
    except OSError as err:
        remove_quietly(staging)
        raise RecoveryError("extracting config into %s failed: %s: %s" % (
            staging, err.filename or staging, err.strerror)) from None
    except BaseException:
        remove_quietly(staging)
        raise
    safety = None
    if os.path.lexists(dest):
        safety = _reserve_safety_copy(dest, set_id)
        progress("moving the current config tree aside to %s" % safety)
        os.rename(dest, safety)  # onto the empty directory just reserved
    os.rename(staging, dest)
    fsync_dir(parent)
    return safety


def _replace_in_place(archive_path, members, metadata, dest, set_id, mode_of, owner_of, progress):
    """A mount point cannot be renamed: extract into a staging directory inside it, copy the current entries to the
    safety copy, remove them, then move the new ones up (the same file system: renames)."""
    tops = {name.split("/")[0] for name, _kind, _member in members}
    while True:
        staging = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=dest)
        if os.path.basename(staging) not in tops:
            break
        os.rmdir(staging)
    skip = {os.path.basename(staging)}
    safety = None
    try:
        _extract(archive_path, members, staging, mode_of, owner_of)
        safety = _reserve_safety_copy(dest, set_id)
        progress("copying the current config tree to %s" % safety)
        _copy_tree(dest, safety, skip)
    except OSError as err:
        remove_quietly(staging)
        if safety:
            remove_quietly(safety)
        raise RecoveryError("preparing the config restore in place into %s failed: %s: %s" % (
            dest, err.filename or dest, err.strerror)) from None
    except BaseException:
        remove_quietly(staging)
        if safety:
            remove_quietly(safety)
        raise
    try:
        for name in os.listdir(dest):
            if name not in skip:
                remove_quietly(os.path.join(dest, name))
        for name in os.listdir(staging):
            os.rename(os.path.join(staging, name), os.path.join(dest, name))
        os.rmdir(staging)
        _apply_root(dest, metadata, mode_of, owner_of)
        fsync_dir(dest)
    except OSError as err:
        raise RecoveryError("config restore in place into %s stopped half done (the previous tree is in %s): %s: %s"
                            % (dest, safety, err.filename or dest, err.strerror)) from None
    return safety


def _copy_tree(source, target, skip):
    """Copy ``source``'s entries into the existing ``target`` with modes, owners and times; special files left out."""
    as_root = os.geteuid() == 0
    dirs = []
    for name, info in walk_tree(source, skip):
        src, dst = os.path.join(source, name), os.path.join(target, name)
        if stat.S_ISDIR(info.st_mode):
            os.mkdir(dst, DIR_MODE)
            dirs.append((dst, info))
        elif stat.S_ISLNK(info.st_mode):
            os.symlink(os.readlink(src), dst)
            if as_root:
                os.lchown(dst, info.st_uid, info.st_gid)
        elif stat.S_ISREG(info.st_mode):
            shutil.copyfile(src, dst, follow_symlinks=False)
            _copy_meta(dst, info, as_root)
    for dst, info in reversed(dirs):
        _copy_meta(dst, info, as_root)
    _copy_meta(target, os.lstat(source), as_root)


def _copy_meta(path, info, as_root):
    if as_root:
        os.chown(path, info.st_uid, info.st_gid)
    os.chmod(path, stat.S_IMODE(info.st_mode))
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))


def _apply_root(path, metadata, mode_of, owner_of):
    if os.geteuid() == 0:
        os.chown(path, *owner_of["."])
    os.chmod(path, mode_of(int(metadata["root_mode"], 8)))


def _extract(archive_path, members, staging, mode_of, owner_of):
    """Create members below ``staging`` only: exclusive creates, no link following, links and dir modes last."""
    as_root = os.geteuid() == 0
    links, dirs = [], []
    with tarfile.open(archive_path, mode="r:", encoding="utf-8", errors="surrogateescape") as archive:
        for name, kind, member in members:
            path = os.path.join(staging, name)
            if kind == "dir":
                os.mkdir(path, DIR_MODE)
                dirs.append((name, path, member))
            elif kind == "file":
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                with os.fdopen(fd, "wb") as out:
                    source = archive.extractfile(member)
                    for block in read_blocks(source):
                        out.write(block)
                    out.flush()
                    os.fsync(out.fileno())
                _apply_owner_mode_time(path, member, owner_of[name] if as_root else None, mode_of)
            else:
                links.append((name, path, member))
    for name, path, member in links:
        os.symlink(member.linkname, path)
        if as_root:
            os.lchown(path, *owner_of[name])
    for name, path, member in reversed(dirs):
        _apply_owner_mode_time(path, member, owner_of[name] if as_root else None, mode_of)


def _apply_owner_mode_time(path, member, owner, mode_of):
    if owner is not None:
        os.chown(path, *owner)
    os.chmod(path, mode_of(member.mode))  # after chown, which clears set-ID bits
    os.utime(path, (member.mtime, member.mtime))

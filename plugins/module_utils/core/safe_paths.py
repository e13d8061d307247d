# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Checks that a relative name stays inside its root, lexically and on disk."""

from __future__ import annotations

import os
import posixpath
import stat

from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError

MAX_NAME = 4096
MAX_COMPONENT = 255


def check_relative_name(name, what="path"):
    """Reject anything but a normalised relative POSIX path without ``..``; return its parts."""
    if not isinstance(name, str) or not name:
        raise RecoveryError("%s %r is not a non-empty string" % (what, name))
    try:
        size = len(name.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError:  # a lone surrogate (JSON can carry "\ud800"): no file can have that name
        raise RecoveryError("%s %r is not a valid file name (unencodable character)" % (what, name[:200])) from None
    if "\x00" in name or size > MAX_NAME:
        raise RecoveryError("%s %r has a NUL byte or is too long" % (what, name[:200]))
    if name.startswith("/"):
        raise RecoveryError("%s %r is absolute" % (what, name))
    parts = name.rstrip("/").split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise RecoveryError("%s %r is not a clean relative path (empty, '.' or '..' component)" % (what, name))
        if len(part.encode("utf-8", "surrogateescape")) > MAX_COMPONENT:
            raise RecoveryError("%s %r has a component longer than %d bytes" % (what, name[:200], MAX_COMPONENT))
    return parts


def link_stays_inside(link_name, target):
    """True when a symlink at ``link_name`` (relative to a root) pointing to ``target`` resolves inside that root.

    Only leading ``..`` are allowed: after a name, that name may itself be a link, so a later ``..`` could climb out
    of the tree through a chain of links that each look harmless alone.
    """
    if not target or target.startswith("/") or "\x00" in target:
        return False
    depth = len(link_name.rstrip("/").split("/")) - 1
    descended = False
    for part in target.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0 or descended:
                return False
        elif part not in ("", "."):
            depth += 1
            descended = True
    return True


def resolve_inside(root, name, what="path"):
    """Join ``name`` to ``root`` after checking that no existing component is a symlink or leaves the root."""
    parts = check_relative_name(name, what)
    current = root
    for index, part in enumerate(parts):
        current = os.path.join(current, part)
        try:
            mode = os.lstat(current).st_mode
        except (FileNotFoundError, NotADirectoryError):
            break  # nothing below this point exists, so no symlink either; opening it will fail
        except OSError as err:
            raise RecoveryError("%s %r cannot be checked: %s" % (what, name[:200], err.strerror)) from None
        if stat.S_ISLNK(mode):
            raise RecoveryError("%s %r passes through a symlink at %r" % (what, name, "/".join(parts[: index + 1])))
    joined = posixpath.join(root, *parts)
    if os.path.commonpath([os.path.abspath(root), os.path.abspath(joined)]) != os.path.abspath(root):
        raise RecoveryError("%s %r leaves %s" % (what, name, root))
    return joined

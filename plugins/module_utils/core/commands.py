# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""External commands: argument lists only, secrets through the child's environment, errors as one line."""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys

from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError


def find_program(name, search_dirs=()):
    for directory in search_dirs:
        candidate = os.path.join(directory, name)
        if os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(name)
    if not found:
        raise RecoveryError("%s not found (looked in %s and PATH)" % (name, ", ".join(search_dirs) or "nothing"))
    return found


PR_SET_PDEATHSIG = 1


def die_with_parent():
    """Runs in the child: a killed backup or restore must not leave pg_dump writing into its directory."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def child_env(extra):
    """Our environment with ``extra`` applied; a None value removes the variable (e.g. an inherited PGPASSWORD)."""
    env = dict(os.environ)
    env.update(extra)
    return {key: value for key, value in env.items() if value is not None}


def cause_line(text):
    """The first error line: later ones are consequences (pg_dump -j ends with "a worker process died unexpectedly"
    after the worker's own "No space left on device"); without any, the last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower() or "fatal" in line.lower()]
    return (errors[:1] or lines[-1:] or ["no output"])[0]


def start(argv, env=None, stdout=subprocess.DEVNULL, pass_fds=()):
    """Start a child with a private umask; stderr is captured for the error message."""
    return subprocess.Popen(
        argv, env=child_env(env or {}), stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.PIPE,
        umask=0o077, pass_fds=pass_fds,
        preexec_fn=die_with_parent,  # noqa: PLW1509 - started when no other thread runs
    )


def finish(proc, what, heartbeat=None, every=10.0):
    """Wait for ``proc``, calling ``heartbeat()`` every ``every`` seconds; raise with its last error line on failure."""
    while True:
        try:
            _out, err = proc.communicate(timeout=every if heartbeat else None)
            break
        except subprocess.TimeoutExpired:
            heartbeat()
    if proc.returncode != 0:
        message = cause_line(err.decode("utf-8", "replace"))
        raise RecoveryError("%s failed (exit %s): %s" % (what, proc.returncode, message))
    return err.decode("utf-8", "replace")


def run(argv, what, env=None, cause=cause_line):
    """Run to completion and return stdout as text; ``cause`` picks the line of stderr the error shows."""
    proc = subprocess.run(
        argv, env=child_env(env or {}), stdin=subprocess.DEVNULL, capture_output=True, umask=0o077, check=False,
        preexec_fn=die_with_parent,  # noqa: PLW1509 - started when no other thread runs
    )
    if proc.returncode != 0:
        message = cause(proc.stderr.decode("utf-8", "replace"))
        raise RecoveryError("%s failed (exit %s): %s" % (what, proc.returncode, message))
    return proc.stdout.decode("utf-8", "replace")

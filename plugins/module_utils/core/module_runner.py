# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What every module's main() shares: library checks, progress capture, RecoveryError into fail_json."""

from __future__ import annotations

import time

from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError, one_line


def run(module, work, warn_only=False):
    """Call ``work(progress)``; exit with its result dict, or fail with the one-line error and any partial report.

    With ``warn_only`` the error becomes a warning and the result ``{"error": message}`` (for reports made while a
    job is failing already: they must not replace its error).
    """
    started = time.monotonic()
    steps = []

    def progress(message):
        steps.append({"at_seconds": round(time.monotonic() - started, 3), "step": message})

    try:
        result = work(progress)
    except (RecoveryError, OSError) as err:  # OSError: a path that cannot serve, e.g. a file where a directory must be
        details = err.details if isinstance(err, RecoveryError) else {}
        message = one_line(err)
        if not warn_only:
            module.fail_json(msg=message, steps=steps, **details)
        module.warn(message)
        result = dict(details, error=message)
    for warning in result.pop("warnings", None) or ():  # a result's warnings become Ansible's [WARNING]s
        module.warn(warning)
    result.setdefault("changed", False)
    result["steps"] = steps
    result["elapsed_seconds"] = round(time.monotonic() - started, 3)
    module.exit_json(**result)

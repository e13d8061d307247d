# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What every module's main() shares: library checks, progress capture, RecoveryError into fail_json."""

from __future__ import annotations

import time

from ansible.module_utils.basic import missing_required_lib

from ansible_collections.christmas.recovery.plugins.module_utils import postgres, redis_rdb
from ansible_collections.christmas.recovery.plugins.module_utils.errors import RecoveryError, one_line


def require_libraries(module, needs_postgres, needs_redis):
    if needs_postgres and not postgres.HAS_PSYCOPG2:
        module.fail_json(msg=missing_required_lib("psycopg2 (psycopg2-binary)"))
    if needs_redis and not redis_rdb.HAS_CRC64:
        module.fail_json(msg=missing_required_lib(redis_rdb.CRC64_LIBRARIES))


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
    result.setdefault("changed", False)
    result["steps"] = steps
    result["elapsed_seconds"] = round(time.monotonic() - started, 3)
    module.exit_json(**result)

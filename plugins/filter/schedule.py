# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters of the christmas_schedule role: a calendar's systemd OnCalendar and cron fields, a systemd ExecStart."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.platform import schedule


def _one_line(function):
    def wrapper(value):
        try:
            return function(value)
        except RecoveryError as err:
            raise AnsibleFilterError(str(err)) from None

    wrapper.__name__ = function.__name__
    return wrapper


class FilterModule:
    def filters(self):
        return {
            "on_calendar": _one_line(schedule.on_calendar),
            "cron_fields": _one_line(schedule.calendar_fields),
            "calendar_problem": schedule.calendar_problem,
            "systemd_exec": _one_line(schedule.systemd_exec),
        }

# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The scheduled jobs' calendars and command lines: one calendar in cron's fields, read by cron as it is and turned
into a systemd OnCalendar expression; an argument list quoted for a systemd ExecStart."""

from __future__ import annotations

import re

from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError

CALENDAR_FIELDS = ("minute", "hour", "day", "month", "weekday")
_LIMITS = {"minute": (0, 59), "hour": (0, 23), "day": (1, 31), "month": (1, 12), "weekday": (0, 7)}
# cron numbers the days of the week from Sunday (0 and 7); systemd names them and starts the week on Monday.
_DAY_NAMES = ("Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_ITEM = re.compile(r"^(?:\*/(?P<step>[0-9]+)|(?P<first>[0-9]+)(?:-(?P<last>[0-9]+))?)$")
_PLAIN_ARGUMENT = re.compile(r"^[A-Za-z0-9_./:=@+,-]+$")


def calendar_fields(calendar):
    """The five cron fields of a calendar mapping (missing ones are ``*``), checked; RecoveryError names a bad one."""
    if not isinstance(calendar, dict):
        raise RecoveryError("a calendar is a mapping of %s, got %r" % (", ".join(CALENDAR_FIELDS), calendar))
    unknown = sorted(set(calendar) - set(CALENDAR_FIELDS))
    if unknown:
        raise RecoveryError("unknown calendar field %s (known: %s)" % (", ".join(unknown), ", ".join(CALENDAR_FIELDS)))
    fields = {name: str(calendar.get(name, "*")).replace(" ", "") or "*" for name in CALENDAR_FIELDS}
    for name, value in fields.items():
        if value != "*":
            for item in value.split(","):
                _check_item(name, value, item)
    if fields["day"] != "*" and fields["weekday"] != "*":
        # cron runs when either matches, systemd only when both do: a calendar means one thing or is refused.
        raise RecoveryError("a calendar sets day (%s) or weekday (%s), not both" % (fields["day"], fields["weekday"]))
    return fields


def calendar_problem(calendar):
    """What is wrong with a calendar, in one line; empty when nothing is."""
    try:
        calendar_fields(calendar)
    except RecoveryError as err:
        return str(err)
    return ""


def _check_item(name, value, item):
    match = _ITEM.match(item)
    low, high = _LIMITS[name]
    if not match:
        raise RecoveryError("calendar %s %r: use *, N, N-M, */N or a comma-separated list of them" % (name, value))
    if match.group("step") is not None:
        if name == "weekday" or not 1 <= int(match.group("step")) <= high:
            raise RecoveryError("calendar %s %r: no step */N for a weekday, and N from 1 to %d" % (name, value, high))
        return
    first = int(match.group("first"))
    last = int(match.group("last") if match.group("last") is not None else first)
    if not low <= first <= last <= high:
        raise RecoveryError("calendar %s %r: values from %d to %d, ranges low-high" % (name, value, low, high))
    if name == "weekday" and first == 0 and last > 0:
        raise RecoveryError("calendar weekday %r: write a range through Sunday as N-7 (Monday is 1)" % value)


def _systemd_item(name, item):
    match = _ITEM.match(item)
    if match.group("step") is not None:
        return "%02d/%s" % (_LIMITS[name][0], match.group("step"))
    first = int(match.group("first"))
    last = match.group("last")
    if name == "weekday":
        return _DAY_NAMES[first] + ("" if last is None or int(last) == first else ".." + _DAY_NAMES[int(last)])
    pad = "%02d" if name in ("minute", "hour") else "%d"
    return pad % first + ("" if last is None else ".." + pad % int(last))


def on_calendar(calendar):
    """The systemd OnCalendar expression meaning what cron makes of the same fields (seconds at 00)."""
    fields = calendar_fields(calendar)
    systemd = {name: "*" if value == "*" else ",".join(_systemd_item(name, item) for item in value.split(","))
               for name, value in fields.items()}
    weekday = "" if systemd["weekday"] == "*" else systemd["weekday"] + " "
    return "%s*-%s-%s %s:%s:00" % (weekday, systemd["month"], systemd["day"], systemd["hour"], systemd["minute"])


def systemd_exec(argv):
    """An argument list as one ExecStart= line: each argument quoted where systemd would split or expand it."""
    if not argv or not all(isinstance(arg, str) for arg in argv):
        raise RecoveryError("a command is a non-empty list of strings, got %r" % (argv,))
    if any(char in arg for arg in argv for char in "\n\r"):
        raise RecoveryError("a command's arguments hold no line breaks")
    return " ".join(_systemd_quote(arg) for arg in argv)


def _systemd_quote(arg):
    # systemd expands %-specifiers and $VARIABLES everywhere in ExecStart=, also inside quotes.
    escaped = arg.replace("%", "%%").replace("$", "$$")
    if _PLAIN_ARGUMENT.match(arg):
        return escaped
    return '"%s"' % escaped.replace("\\", "\\\\").replace('"', '\\"')

"""The scheduled jobs' calendars and ExecStart lines, checked against systemd's own parser (systemd-analyze)."""

from __future__ import annotations

import os
import shlex
import subprocess

import pytest

from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.platform.schedule import (
    calendar_fields,
    calendar_problem,
    on_calendar,
    systemd_exec,
)

CASES = [
    ({"minute": 0, "hour": 3}, "*-*-* 03:00:00"),
    ({"minute": 0, "hour": 5, "weekday": 0}, "Sun *-*-* 05:00:00"),
    ({"minute": 0, "hour": 5, "weekday": 7}, "Sun *-*-* 05:00:00"),
    ({"minute": 0, "hour": 6, "day": 1}, "*-*-01 06:00:00"),
    ({"minute": "5,35", "hour": "*/2", "day": "*/2", "month": "1-3"}, "*-01..03-01/2 00/2:05,35:00"),
    ({"minute": 30, "hour": "1-4", "weekday": "1-5,7"}, "Mon..Fri,Sun *-*-* 01..04:30:00"),
    ({"minute": "*/15"}, "*-*-* *:00/15:00"),
]


def _normalized(expression):
    done = subprocess.run(["systemd-analyze", "calendar", expression], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return next(line.split(":", 1)[1].strip() for line in done.stdout.splitlines() if "Normalized form" in line)


@pytest.mark.parametrize(("calendar", "expected"), CASES)
def test_a_cron_calendar_becomes_the_same_systemd_calendar(calendar, expected):
    assert _normalized(on_calendar(calendar)) == _normalized(expected)


@pytest.mark.parametrize("calendar", [
    {"minute": 60}, {"minute": 0, "hour": 24}, {"minute": 0, "day": 0}, {"minute": 0, "month": 13},
    {"minute": 0, "weekday": 8}, {"minute": 0, "weekday": "*/2"}, {"minute": 0, "weekday": "0-3"},
    {"minute": "5-1"}, {"minute": "mon"}, {"minute": "*/0"}, {"minute": 0, "day": 1, "weekday": 1},
    {"minute": 0, "second": 1}, "03:00",
])
def test_a_calendar_cron_and_systemd_would_read_differently_is_refused_in_one_line(calendar):
    with pytest.raises(RecoveryError) as err:
        calendar_fields(calendar)
    assert "\n" not in str(err.value) and str(err.value) == calendar_problem(calendar)


def test_missing_fields_are_every_value_as_in_cron():
    assert calendar_fields({"minute": 0, "hour": 3}) == {"minute": "0", "hour": "3", "day": "*", "month": "*",
                                                         "weekday": "*"}
    assert calendar_problem({"minute": 0}) == ""


def test_an_exec_line_gives_systemd_back_every_argument_unchanged(tmp_dir):
    argv = ["/usr/bin/printf", "%s|", "plain", "with space", 'quote"d', "back\\slash", "$HOME", "50%", "it's"]
    unit = os.path.join(tmp_dir, "probe.service")
    with open(unit, "w", encoding="utf-8") as handle:
        handle.write("[Service]\nType=oneshot\nExecStart=%s\n" % systemd_exec(argv))
    done = subprocess.run(["systemd-analyze", "verify", unit], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    # systemd's own reading of the line: `systemctl show` on a unit file is not available offline, so the same
    # rules are applied with the shell-like splitter after undoing the specifier and variable escapes.
    line = systemd_exec(argv).replace("%%", "%").replace("$$", "$")
    assert shlex.split(line) == argv


def test_an_exec_line_refuses_line_breaks():
    with pytest.raises(RecoveryError):
        systemd_exec(["/bin/echo", "two\nlines"])

# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A recovery record: its fields checked and normalised, its times, and its Markdown page."""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os

from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.core.fsutil import (
    FILE_MODE,
    fsync_dir,
    make_private_dir,
    remove_quietly,
)

# Documented values of ``status``; others are accepted (it is free text) but these are what the roles write (drills
# and rehearsals: passed or failed).
STATUSES = ("recovered", "healed_by_restart", "failed", "planned", "passed")
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
UTC = datetime.timezone.utc  # noqa: UP017 - modules may run on a host Python older than 3.11

TEXT_FIELDS = (
    "procedure", "status", "operator", "host", "incident_type", "incident_symptoms", "incident_impact", "backup_set",
    "backup_manifest", "error", "remaining_problems", "followup_prevention", "followup_monitoring",
    "followup_config_changes",
)
TIME_FIELDS = ("started_at", "finished_at")
LIST_FIELDS = ("components", "commands", "verification")
# Numbers a record carries by name, e.g. a drill's {"rto_seconds": 41.2, "target_rto_seconds": 300}.
DICT_FIELDS = ("measurements",)
JSON_FIELDS = LIST_FIELDS + DICT_FIELDS
RECORD_FIELDS = TEXT_FIELDS[:2] + TIME_FIELDS + ("duration_seconds",) + TEXT_FIELDS[2:] + LIST_FIELDS + DICT_FIELDS
MAX_MEASUREMENT_NAME = 100
REQUIRED_FIELDS = ("procedure", "status")
CHECK_KEYS = ("name", "ok", "expected", "actual", "detail")
def utc_now():
    return datetime.datetime.now(UTC).replace(microsecond=0)


def parse_time(value, what):
    """An ISO 8601 date or date-time as an aware UTC datetime; without an offset, UTC is meant."""
    if not isinstance(value, str) or not value.strip():
        raise RecoveryError("%s: expected an ISO 8601 date or date-time string, got %r" % (what, value))
    try:
        text = value.strip()
        # Python before 3.11 does not read a trailing Z
        parsed = datetime.datetime.fromisoformat(text[:-1] + "+00:00" if text[-1:] in "zZ" else text)
    except ValueError:
        raise RecoveryError("%s: %r is not an ISO 8601 date or date-time (e.g. 2026-11-26 or "
                            "2026-11-26T03:00:00Z)" % (what, value)) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def format_time(moment):
    return moment.astimezone(UTC).strftime(TIME_FORMAT)


def _text(record, key):
    value = record.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise RecoveryError("record: %s must be a string, got %s" % (key, type(value).__name__))
    return str(value)


def _string_list(record, key):
    value = record.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise RecoveryError("record: %s must be a list of strings, got %s" % (key, type(value).__name__))
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise RecoveryError("record: %s[%d] must be a string, got %s" % (key, index, type(item).__name__))
    return list(value)


def _boolean(value, what):
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
        return value.strip().lower() in ("true", "yes", "on", "1")
    raise RecoveryError("%s must be true or false, got %r" % (what, value))


def _json_value(value, what):
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        raise RecoveryError("%s is not a JSON value: %r" % (what, value)) from None
    return value


def _checks(record):
    value = record.get("verification")
    if value is None:
        return []
    if not isinstance(value, list):
        raise RecoveryError("record: verification must be a list of checks, got %s" % type(value).__name__)
    checks = []
    for index, check in enumerate(value):
        what = "record: verification[%d]" % index
        if not isinstance(check, dict):
            raise RecoveryError("%s must be a dict with %s" % (what, ", ".join(CHECK_KEYS)))
        unknown = sorted(set(check) - set(CHECK_KEYS))
        if unknown:
            raise RecoveryError("%s: unknown key %r (known: %s)" % (what, unknown[0], ", ".join(CHECK_KEYS)))
        if not isinstance(check.get("name"), str) or not check["name"]:
            raise RecoveryError("%s: name is required and must be a string" % what)
        if "ok" not in check:
            raise RecoveryError("%s (%s): ok is required" % (what, check["name"]))
        detail = check.get("detail")
        checks.append({
            "name": check["name"],
            "ok": _boolean(check["ok"], "%s (%s): ok" % (what, check["name"])),
            "expected": _json_value(check.get("expected"), "%s: expected" % what),
            "actual": _json_value(check.get("actual"), "%s: actual" % what),
            "detail": None if detail is None or detail == "" else str(detail),
        })
    return checks


def _measurements(record):
    """``measurements`` as {name: finite number}; a number given as text (as templating may pass it) is read."""
    value = record.get("measurements")
    if value is None or value == "":
        return {}
    if not isinstance(value, dict):
        raise RecoveryError("record: measurements must be a dict of numbers, got %s" % type(value).__name__)
    measured = {}
    for name in sorted(value, key=str):
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_MEASUREMENT_NAME:
            raise RecoveryError("record: measurements: %r is not a name (a string of 1 to %d characters)" % (
                name, MAX_MEASUREMENT_NAME))
        number = value[name]
        if isinstance(number, str):
            with contextlib.suppress(ValueError):
                number = float(number) if any(c in number for c in ".eEnN") else int(number)
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
            raise RecoveryError("record: measurements[%s] must be a finite number, got %r" % (name, value[name]))
        measured[name] = number
    return measured


def _duration(record, started, finished):
    value = record.get("duration_seconds")
    if value is None or value == "":
        return round((finished - started).total_seconds(), 3) if started else None
    if isinstance(value, bool):
        raise RecoveryError("record: duration_seconds must be a number, got %r" % value)
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise RecoveryError("record: duration_seconds must be a number, got %r" % value) from None
    if not math.isfinite(seconds) or seconds < 0:
        raise RecoveryError("record: duration_seconds must be a number >= 0, got %r" % value)
    return round(seconds, 3)


def normalize_record(record, now=None):
    """The record as stored: every field present (None or [] when not given), times as UTC ``...Z`` strings,
    finished_at defaulting to now and duration_seconds to finished_at - started_at."""
    if not isinstance(record, dict):
        raise RecoveryError("record must be a dict, got %s" % type(record).__name__)
    unknown = sorted(set(record) - set(RECORD_FIELDS))
    if unknown:
        raise RecoveryError("record: unknown key %r (known: %s)" % (unknown[0], ", ".join(RECORD_FIELDS)))
    normalized = {key: _text(record, key) for key in TEXT_FIELDS}
    for key in REQUIRED_FIELDS:
        if not normalized[key]:
            raise RecoveryError("record: %s is required" % key)
    started = None if record.get("started_at") in (None, "") else parse_time(record["started_at"],
                                                                             "record: started_at")
    finished = (now or utc_now()) if record.get("finished_at") in (None, "") else parse_time(
        record["finished_at"], "record: finished_at")
    if started and finished < started:
        raise RecoveryError("record: finished_at %s is before started_at %s" % (format_time(finished),
                                                                               format_time(started)))
    normalized.update(
        started_at=format_time(started) if started else None,
        finished_at=format_time(finished),
        duration_seconds=_duration(record, started, finished),
        components=_string_list(record, "components"),
        commands=_string_list(record, "commands"),
        verification=_checks(record),
        measurements=_measurements(record),
    )
    return {key: normalized[key] for key in RECORD_FIELDS}


# ---------------------------------------------------------------- searching


def _day(value, what):
    """A YYYY-MM-DD date (as a datetime at 00:00 UTC), or None when ``value`` carries a time."""
    with contextlib.suppress(ValueError):
        return datetime.datetime.combine(datetime.date.fromisoformat(value.strip()), datetime.time(),
                                         UTC)
    parse_time(value, what)  # raises when it is no date-time either
    return None


def time_bounds(since=None, until=None):
    """(lower, upper, upper_inclusive) as UTC datetimes: a date ``until`` includes that whole day."""
    lower = upper = None
    inclusive = True
    if since not in (None, ""):
        lower = _day(since, "since") if isinstance(since, str) else None
        lower = lower or parse_time(since, "since")
    if until not in (None, ""):
        day = _day(until, "until") if isinstance(until, str) else None
        if day:
            upper, inclusive = day + datetime.timedelta(days=1), False
        else:
            upper = parse_time(until, "until")
    if lower and upper and (upper < lower or (upper == lower and not inclusive)):
        raise RecoveryError("since %s is after until %s" % (since, until))
    return lower, upper, inclusive


def check_limit(limit):
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise RecoveryError("limit must be a whole number >= 1, got %r" % (limit,))


# ---------------------------------------------------------------- Markdown


def _plain(value):
    """Free text in a Markdown list item: no raw HTML, continuation lines kept inside the item."""
    text = str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    lines = text.splitlines() or [""]
    return "\n  ".join(line.rstrip() for line in lines)


def _cell(value):
    """A table cell: one line, pipes escaped."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)
    text = text.replace("\\", "\\\\").replace("|", "\\|").replace("&", "&amp;").replace("<", "&lt;")
    return "<br>".join(line.strip() for line in text.splitlines())


def _title(value):
    return " ".join(str(value).replace("<", "&lt;").split())


def _fenced(lines):
    """A code block whose fence is longer than any run of backticks inside it."""
    runs = [len(chunk) for line in lines for chunk in "".join(c if c == "`" else " " for c in line).split()]
    longest = max(runs, default=0)
    fence = "`" * max(3, longest + 1)
    return [fence + "text"] + [line for command in lines for line in command.splitlines() or [""]] + [fence]


def _seconds(value):
    if value is None:
        return None
    minutes, seconds = divmod(value, 60)
    return "%.3g s" % value if not minutes else "%d min %02d s (%s s)" % (minutes, seconds, value)


def _measurement(name, value):
    return _seconds(value) if name.endswith("_seconds") else "%g" % value


def _items(pairs):
    return ["- %s: %s" % (label, _plain(value)) for label, value in pairs if value not in (None, "", [])]


def render_markdown(record, incident_id):
    """The runbook's recovery record template."""
    when = record["started_at"] or record["finished_at"]
    what = "restore rehearsal" if record["procedure"] == "rehearsal" else "%s restore" % record["procedure"]
    title = "# Incident %d: %s %s" % (incident_id, _title(what), _title(record["status"]))
    lines = [title, "", "## When/who", ""]
    lines += _items([("Date", when[:10]), ("Started", record["started_at"]), ("Finished", record["finished_at"]),
                     ("Operator", record["operator"]), ("Host", record["host"])])
    lines += ["", "## Failure", ""]
    lines += _items([("Type", record["incident_type"]), ("Symptoms", record["incident_symptoms"]),
                     ("Impact", record["incident_impact"])]) or ["- not recorded"]
    lines += ["", "## What was done", ""]
    backup = record["backup_set"]
    if record["backup_manifest"]:
        backup = "%s (%s)" % (backup, record["backup_manifest"]) if backup else record["backup_manifest"]
    lines += _items([("Procedure", record["procedure"]), ("Backup used", backup),
                     ("Components", ", ".join(record["components"])),
                     ("Time taken", _seconds(record["duration_seconds"]))])
    if record["commands"]:
        lines += ["", "Steps and commands, in order:", ""] + _fenced(record["commands"])
    lines += ["", "## Result", ""]
    lines += _items([("Status", record["status"]), ("Error", record["error"]),
                     ("Remaining problems", record["remaining_problems"])])
    if record["measurements"]:
        lines += ["", "Measurements:", "", "| measurement | value |", "|---|---|"]
        lines += ["| %s | %s |" % (_cell(name), _cell(_measurement(name, value)))
                  for name, value in sorted(record["measurements"].items())]
    if record["verification"]:
        lines += ["", "Verification:", "", "| check | ok | expected | actual |", "|---|---|---|---|"]
        for check in record["verification"]:
            lines.append("| %s | %s | %s | %s |" % (_cell(check["name"]), "yes" if check["ok"] else "**NO**",
                                                    _cell(check["expected"]), _cell(check["actual"])))
        details = [(check["name"], check["detail"]) for check in record["verification"] if check["detail"]]
        if details:
            lines += [""] + _items(details)
    lines += ["", "## Follow-up", ""]
    lines += _items([("Prevention", record["followup_prevention"]),
                     ("Monitoring improvements", record["followup_monitoring"]),
                     ("Changed configuration", record["followup_config_changes"])]) or ["- none recorded"]
    return "\n".join(lines) + "\n"


def markdown_name(record, incident_id):
    when = datetime.datetime.strptime(record["started_at"] or record["finished_at"], TIME_FORMAT)
    return "incident_%s_%d.md" % (when.strftime("%Y%m%d_%H%M%S"), incident_id)


def write_markdown(markdown_dir, record, incident_id):
    """Write the report under a temporary name and link it into place: an existing report is never replaced."""
    path = os.path.join(os.path.abspath(markdown_dir), markdown_name(record, incident_id))
    tmp = os.path.join(os.path.dirname(path), ".%s.tmp" % os.path.basename(path))
    try:
        make_private_dir(markdown_dir)
    except OSError as err:
        raise RecoveryError("cannot create the incident report directory %s: %s" % (
            markdown_dir, err.strerror or err)) from None
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, FILE_MODE)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), FILE_MODE)
            handle.write(render_markdown(record, incident_id))
            handle.flush()
            os.fsync(handle.fileno())
        os.link(tmp, path)
    except FileExistsError:
        raise RecoveryError("incident report %s already exists; not replacing it" % path) from None
    except OSError as err:
        raise RecoveryError("cannot write incident report %s: %s" % (path, err.strerror or err)) from None
    finally:
        remove_quietly(tmp)
    fsync_dir(os.path.dirname(path))
    return path


# ---------------------------------------------------------------- stores



# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What pgBackRest and PostgreSQL's tools print and read, as text: ``info --output=json``, ``verify``'s report, the
error line, pg_waldump's commit records, timeline history files, WAL segment names, and pgBackRest's config file."""

from __future__ import annotations

import datetime
import json
import re

from ansible_collections.christmas.recovery.plugins.module_utils.core import commands
from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError

COMMIT_RE = re.compile(r"lsn: ([0-9A-F]+/[0-9A-F]+),.*desc: (?:COMMIT|ABORT)(?:_PREPARED)? "
                       r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) UTC")
VERIFY_FILE_RE = re.compile(r"P\d+\s+INFO: ((?:invalid|file missing|missing)[^'\n]*?)'?([\w./-]+\.\w+|[\w./-]+)'?"
                            r"(?::|$)", re.M)
VERIFY_STATUS_RE = re.compile(r"^\s*status: (\w+)", re.M)


def pgbackrest_error(text):
    """pgBackRest's own ``ERROR: [code]: message`` line, else the usual first error line."""
    for line in text.splitlines():
        if line.strip().startswith("ERROR:"):
            return line.strip()
    return commands.cause_line(text)


def utc_iso(epoch):
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).isoformat()


def parse_backup(entry):
    """One backup of ``info --output=json`` as we report it: label, kind, WAL range, UTC times, sizes."""
    return {
        "label": entry["label"], "type": entry["type"], "prior": entry.get("prior"),
        "archive_start": entry["archive"]["start"], "archive_stop": entry["archive"]["stop"],
        "lsn_start": entry.get("lsn", {}).get("start"), "lsn_stop": entry.get("lsn", {}).get("stop"),
        "start_time": utc_iso(entry["timestamp"]["start"]), "stop_time": utc_iso(entry["timestamp"]["stop"]),
        "start_epoch": entry["timestamp"]["start"], "stop_epoch": entry["timestamp"]["stop"],
        "size": entry["info"]["size"], "delta": entry["info"]["delta"],
        "repo_size": entry["info"]["repository"]["size"], "repo_delta": entry["info"]["repository"]["delta"],
        "db_id": entry["database"]["id"], "error": bool(entry.get("error")),
    }


def parse_info(text, stanza):
    """The stanza's part of ``info --output=json``: status, cipher, backups (oldest first) and WAL ranges."""
    try:
        stanzas = json.loads(text)
    except ValueError as err:
        raise RecoveryError("pgbackrest info printed no JSON: %s" % err) from None
    found = [entry for entry in stanzas if entry.get("name") == stanza]
    if not found:
        raise RecoveryError("pgbackrest info does not list stanza %s" % stanza)
    entry = found[0]
    return {
        "stanza": stanza, "status_code": entry["status"]["code"], "status": entry["status"]["message"],
        "cipher": entry.get("cipher"),
        "backups": sorted((parse_backup(backup) for backup in entry.get("backup", [])),
                          key=lambda backup: backup["start_time"]),
        "archives": [{"id": archive["id"], "db_id": archive["database"]["id"], "min": archive.get("min"),
                      "max": archive.get("max")} for archive in entry.get("archive", [])],
        "db_ids": [db["id"] for db in entry.get("db", [])],
    }


def lsn_value(text):
    high, low = text.split("/")
    return (int(high, 16) << 32) + int(low, 16)


def newest_commit_time(waldump_text, before_lsn=None):
    """The time of the last commit or abort record pg_waldump printed (run with TZ=UTC), only those before
    ``before_lsn`` when given; None when there is none."""
    times = [stamp for lsn, stamp in COMMIT_RE.findall(waldump_text)
             if before_lsn is None or lsn_value(lsn) < before_lsn]
    if not times:
        return None
    return datetime.datetime.fromisoformat(times[-1]).replace(tzinfo=datetime.UTC)


def parse_history(text, timeline):
    """(parent timeline, LSN where ``timeline`` branched off it) from the last line of a timeline history file."""
    lines = [line.split() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    try:
        return int(lines[-1][0]), lsn_value(lines[-1][1])
    except (IndexError, ValueError):
        raise RecoveryError("history file of timeline %d is not a timeline history" % timeline) from None


def segment_name(timeline, lsn, segment_size):
    """The WAL segment holding ``lsn`` on ``timeline``."""
    per_id = 0x100000000 // segment_size
    number = lsn // segment_size
    return "%08X%08X%08X" % (timeline, number // per_id, number % per_id)


def verify_problems(text):
    """What ``pgbackrest verify --log-level-console=info`` reported: (files it named with the reason, status lines
    of the summary that are not ``ok``). It exits 0 whatever it found, so this is the verdict."""
    files = ["%s (%s)" % (path, reason.strip().rstrip(":")) for reason, path in VERIFY_FILE_RE.findall(text)]
    statuses = VERIFY_STATUS_RE.findall(text)
    bad = sorted({status for status in statuses if status != "ok"})  # the log and the text summary both say it
    if not statuses:
        bad = ["no status reported"]
    return files, bad


def config_text(settings_global, stanza, settings_stanza, settings_commands=()):
    """The config file: the global section, ``settings_commands`` as (command, settings) sections
    ``[global:COMMAND]`` (options of that command alone), then the stanza's section."""
    lines = ["[global]"]
    lines += ["%s=%s" % item for item in settings_global]
    for command, settings in settings_commands:
        lines += ["", "[global:%s]" % command]
        lines += ["%s=%s" % item for item in settings]
    lines += ["", "[%s]" % stanza]
    lines += ["%s=%s" % item for item in settings_stanza]
    for line in lines:
        if "\n" in line or "\r" in line or "\x00" in line:
            raise RecoveryError("pgBackRest option %s holds a line break or NUL" % line.split("=", 1)[0])
    return "\n".join(lines) + "\n"


def read_config(path, stanza):
    """The options of ``path`` (a config file ``config_text`` wrote) for ``stanza``: its global section, then the
    stanza's; empty when the file does not exist."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except FileNotFoundError:
        return {}
    except OSError as err:
        raise RecoveryError("pgBackRest config %s cannot be read: %s" % (path, err.strerror)) from None
    options, section = {}, None
    for line in (line.strip() for line in lines):
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif "=" in line and not line.startswith("#") and section in ("global", stanza):
            name, value = line.split("=", 1)
            options[name.strip()] = value.strip()
    return options

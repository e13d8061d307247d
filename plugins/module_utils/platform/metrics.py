# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Prometheus text files for node_exporter's textfile collector: the last run of each kind, the backup directory's
sets and an HA pair's replication lag, each file written whole and renamed into place."""

from __future__ import annotations

import contextlib
import math
import os
import re
import tempfile
import time

from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.core.fsutil import fsync_dir, remove_quietly
from ansible_collections.christmas.recovery.plugins.module_utils.sets.manifest import (
    PITR_PREFIX,
    SET_ID_RE,
    complete_set_ids,
    load,
    manifest_name,
)
from ansible_collections.christmas.recovery.plugins.module_utils.sets.proof import newest_proven_set_id
from ansible_collections.christmas.recovery.plugins.module_utils.sets.retention import set_time

PREFIX = "christmas_recovery_"
FILE_MODE = 0o644  # metrics are not secret, and node_exporter does not run as root
DIR_MODE = 0o755
KINDS = ("backup", "archive", "upload", "verify", "rehearsal", "drill")
SCENARIO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
# A reason becomes a label value only when it is short, printable ASCII without backslashes, and names no URL (which
# may carry a token).
SAFE_REASON_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,256}$")
STALE_TMP_SECONDS = 3600
TMP_PREFIX = ".christmas_recovery_"

# Every family once, with its HELP: node_exporter merges a family found in several files only when the HELP agrees.
FAMILIES = {
    "last_run_timestamp_seconds": "When the last run of this kind ended (Unix time).",
    "last_success_timestamp_seconds": "When the last successful run of this kind ended (Unix time).",
    "last_run_success": "1 when the last run of this kind succeeded, 0 when it failed.",
    "last_run_duration_seconds": "How long the last run of this kind took.",
    "last_run_failure_info": "Present (1) when the last run of this kind failed; reason is its error when short.",
    "run_set_timestamp_seconds": "The set (its id as Unix time) that the last run of this kind made or checked, or "
                                 "the point in time it restored to.",
    "run_set_bytes": "Bytes of the set that the last run of this kind made or checked.",
    "backup_pruned_sets": "Expired sets the last backup deleted.",
    "verify_deep": "1 when the last verification read every artifact back, 0 when it compared checksums only.",
    "verify_artifacts": "Artifacts the last verification checked.",
    "rehearsal_passed": "1 when the last restore rehearsal passed, 0 when it did not.",
    "rehearsal_restore_seconds": "How long the last rehearsal's restore took.",
    "rehearsal_failed_checks": "Validation checks that failed in the last rehearsal.",
    "rehearsal_pitr_rehearsed": "1 when the last rehearsal also restored the platform to a second of the window.",
    "rehearsal_pitr_target_seconds": "The second (Unix time) the last rehearsal restored the platform to.",
    "drill_passed": "1 when the last drill of the scenario met every target, 0 when it did not.",
    "drill_detection_seconds": "Seconds from the fault to its detection in the last drill of the scenario.",
    "drill_rto_seconds": "Seconds from the fault to the platform serving again in the last drill of the scenario.",
    "drill_rpo_seconds": "Seconds of data lost in the last drill of the scenario.",
    "drill_detection_target_seconds": "The detection time the scenario must meet.",
    "drill_rto_target_seconds": "The recovery time objective the scenario must meet.",
    "drill_rpo_target_seconds": "The recovery point objective the scenario must meet.",
    "archive_shipped_bytes": "Bytes the last archive run shipped (Redis's AOF and the config tree's new version).",
    "upload_bytes": "Bytes the last upload to object storage sent.",
    "upload_sets": "Sets the last upload to object storage sent.",
    "bucket_complete_sets": "Complete sets in the bucket after the last upload.",
    "bucket_newest_set_timestamp_seconds": "The bucket's newest complete set after the last upload (its id as Unix "
                                           "time).",
    "pitr_enabled": "1 when continuous protection is on, 0 when it is off (reason says why).",
    "window_start_seconds": "The oldest point the component can be restored to (Unix time).",
    "window_end_seconds": "The newest point the component can be restored to (Unix time).",
    "window_timestamp_seconds": "When the recovery window was last looked at (Unix time).",
    "complete_sets": "Complete backup sets (with a manifest) in the backup directory.",
    "unreadable_sets": "Complete sets whose manifest cannot be read or fails its checksum.",
    "newest_set_timestamp_seconds": "The newest complete set (its id as Unix time).",
    "newest_set_age_seconds": "Age of the newest complete set when this file was written.",
    "newest_proven_set_timestamp_seconds": "The newest set whose last restore rehearsal passed (its id as Unix time).",
    "newest_proven_set_age_seconds": "Age of the newest proven set when this file was written.",
    "newest_set_bytes": "Bytes of the newest complete set (its artifacts as the manifest lists them).",
    "sets_bytes": "Bytes of all complete sets.",
    "backup_fs_free_bytes": "Bytes free for the backup user on the backup directory's file system.",
    "backup_fs_size_bytes": "Size of the backup directory's file system in bytes.",
    "sets_timestamp_seconds": "When the backup directory was last looked at (Unix time).",
    "replication_standbys": "Standbys connected to the primary.",
    "replication_streaming": "1 when the standby is streaming, 0 when it is connected in another state.",
    "replication_lag_bytes": "WAL the standby has not replayed yet, in bytes.",
    "replication_lag_seconds": "How far the standby's replay is behind the primary, in seconds.",
    "replication_timestamp_seconds": "When the replication state was last read (Unix time).",
}

# The ``values`` each kind accepts, and the family each becomes.
RUN_VALUES = {"set_bytes": "run_set_bytes"}
VALUES = {
    "backup": dict(RUN_VALUES, pruned_sets="backup_pruned_sets"),
    "archive": {"shipped_bytes": "archive_shipped_bytes"},
    "upload": {name: "upload_" + name for name in ("bytes", "sets")} | {
        "bucket_sets": "bucket_complete_sets", "bucket_newest_set": "bucket_newest_set_timestamp_seconds"},
    "verify": dict(RUN_VALUES, deep="verify_deep", artifacts="verify_artifacts"),
    "rehearsal": dict(RUN_VALUES, passed="rehearsal_passed", restore_seconds="rehearsal_restore_seconds",
                      failed_checks="rehearsal_failed_checks", pitr_rehearsed="rehearsal_pitr_rehearsed",
                      pitr_target_seconds="rehearsal_pitr_target_seconds"),
    "drill": dict(RUN_VALUES, **{name: "drill_" + name for name in (
        "passed", "detection_seconds", "rto_seconds", "rpo_seconds", "detection_target_seconds",
        "rto_target_seconds", "rpo_target_seconds")}),
}


# ---------------------------------------------------------------- input


def number(value, what):
    """A finite number from an int, float, bool or numeric string; anything else is a one-line error."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        result = value
    elif isinstance(value, str):
        try:
            result = float(value.strip())
        except ValueError:
            raise RecoveryError("%s must be a number, got %r" % (what, value)) from None
    else:
        raise RecoveryError("%s must be a number, got %s" % (what, type(value).__name__))
    if isinstance(result, float):
        if not math.isfinite(result):
            raise RecoveryError("%s must be a finite number, got %r" % (what, value))
        if result.is_integer() and abs(result) < 2**53:
            result = int(result)
    return result


def check_run(kind, scenario, values, set_id=None):
    """The run's file name and its values as {family: number}; bad input is refused before anything is written."""
    if kind not in KINDS:
        raise RecoveryError("kind must be one of %s, got %r" % (", ".join(KINDS), kind))
    if kind == "drill":
        if not isinstance(scenario, str) or not SCENARIO_RE.match(scenario):
            raise RecoveryError("a drill needs a scenario of letters, digits, _ and - (at most 64), got %r"
                                % (scenario,))
        name = "%sdrill_%s.prom" % (PREFIX, scenario)
    elif scenario:
        raise RecoveryError("scenario is only for kind drill, not %s" % kind)
    else:
        name = "%s%s.prom" % (PREFIX, kind)
    if not isinstance(values or {}, dict):
        raise RecoveryError("values must be a dict of name: number")
    families = {}
    for key, value in sorted((values or {}).items()):
        if key not in VALUES[kind]:
            raise RecoveryError("values: %r is not a value of a %s run (one of %s)"
                                % (key, kind, ", ".join(sorted(VALUES[kind]))))
        families[VALUES[kind][key]] = number(value, "values.%s" % key)
    if set_id:
        point = set_id[len(PITR_PREFIX):] if isinstance(set_id, str) and set_id.startswith(PITR_PREFIX) else set_id
        if not isinstance(point, str) or not SET_ID_RE.match(point):
            raise RecoveryError("set_id must look like YYYYMMDD_HHMMSS (pitr-YYYYMMDD_HHMMSS for a point in time), "
                                "got %r" % (set_id,))
        families["run_set_timestamp_seconds"] = set_time(point)
    return name, families


def safe_reason(reason):
    """The reason as a label value when it is short and safe to publish, else the empty string."""
    reason = " ".join(str(reason or "").split())
    return reason if SAFE_REASON_RE.match(reason) and "://" not in reason else ""


def check_replication(replicas):
    """christmas_replication's ``replicas`` (one dict per connected standby) as (standby, streaming, bytes, seconds)."""
    if not isinstance(replicas, list):
        raise RecoveryError("replication must be a list of standbys (christmas_replication info's replicas)")
    rows = []
    for index, replica in enumerate(replicas):
        if not isinstance(replica, dict):
            raise RecoveryError("replication[%d] must be a dict, got %s" % (index, type(replica).__name__))
        name = replica.get("application_name") or replica.get("client_addr")
        if not isinstance(name, str) or not name:
            raise RecoveryError("replication[%d] has no application_name or client_addr" % index)
        lag_bytes = replica.get("lag_bytes")
        lag_bytes = None if lag_bytes is None else number(lag_bytes, "replication[%d].lag_bytes" % index)
        lag_seconds = replica.get("replay_lag_seconds")
        if lag_seconds is not None:
            lag_seconds = number(lag_seconds, "replication[%d].replay_lag_seconds" % index)
        elif lag_bytes == 0:
            lag_seconds = 0  # PostgreSQL shows no lag time once a standby has caught up and nothing is written
        rows.append((name, 1 if replica.get("state") == "streaming" else 0, lag_bytes, lag_seconds))
    return rows


# ---------------------------------------------------------------- the text format


def format_value(value):
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


def escape_label(value):
    return str(value).replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def render(samples):
    """Samples ((family, {label: value}, number), ...) as exposition text, grouped by family in FAMILIES' order."""
    by_family = {}
    for family, labels, value in samples:
        by_family.setdefault(family, []).append((labels, value))
    lines = []
    for family, help_text in FAMILIES.items():
        if family not in by_family:
            continue
        name = PREFIX + family
        lines += ["# HELP %s %s" % (name, help_text), "# TYPE %s gauge" % name]
        for labels, value in by_family[family]:
            text = ",".join('%s="%s"' % (key, escape_label(labels[key])) for key in sorted(labels))
            lines.append("%s%s %s" % (name, "{%s}" % text if text else "", format_value(value)))
    return "\n".join(lines) + "\n"


SUCCESS_LINE_RE = re.compile(r"^%slast_success_timestamp_seconds(\{[^}]*\})? (\S+)$" % PREFIX, re.MULTILINE)


def previous_success(path):
    """The last success recorded in our own earlier file, or None (none yet, or unreadable)."""
    try:
        with open(path, encoding="utf-8") as handle:
            match = SUCCESS_LINE_RE.search(handle.read())
        return number(match.group(2), "previous success") if match else None
    except (OSError, ValueError, RecoveryError):
        return None


def run_samples(kind, scenario, success, duration, reason, families, now, last_success):
    labels = {"kind": kind}
    if scenario:
        labels["scenario"] = scenario
    samples = [("last_run_timestamp_seconds", labels, now)]
    if success:
        last_success = now
    if last_success is not None:
        samples.append(("last_success_timestamp_seconds", labels, last_success))
    samples.append(("last_run_success", labels, 1 if success else 0))
    if duration is not None:
        samples.append(("last_run_duration_seconds", labels, duration))
    if not success:
        samples.append(("last_run_failure_info", dict(labels, reason=safe_reason(reason)), 1))
    samples += [(family, labels, value) for family, value in families.items()]
    return samples


def set_bytes(backup_dir, set_id):
    """Bytes of a set's artifacts as its manifest lists them, or None when the manifest cannot be read."""
    try:
        manifest = load(os.path.join(backup_dir, manifest_name(set_id)))
    except (RecoveryError, OSError):
        return None
    return sum(artifact["size"] for artifact in manifest["artifacts"])


def sets_samples(backup_dir, now):
    """The backup directory as it is now: its complete sets, the newest and newest proven one, its file system."""
    labels = {"backup_dir": backup_dir}
    ids = complete_set_ids(backup_dir)
    sizes = {set_id: set_bytes(backup_dir, set_id) for set_id in ids}
    samples = [("complete_sets", labels, len(ids)),
               ("unreadable_sets", labels, sum(1 for size in sizes.values() if size is None))]
    if ids:
        newest = set_time(ids[0])
        samples += [("newest_set_timestamp_seconds", labels, newest),
                    ("newest_set_age_seconds", labels, max(0, round(now - newest, 3)))]
    proven = newest_proven_set_id(backup_dir) if ids else None
    if proven:
        proven_at = set_time(proven)
        samples += [("newest_proven_set_timestamp_seconds", labels, proven_at),
                    ("newest_proven_set_age_seconds", labels, max(0, round(now - proven_at, 3)))]
    if ids and sizes[ids[0]] is not None:
        samples.append(("newest_set_bytes", labels, sizes[ids[0]]))
    samples.append(("sets_bytes", labels, sum(size for size in sizes.values() if size is not None)))
    if os.path.isdir(backup_dir):
        stats = os.statvfs(backup_dir)
        samples += [("backup_fs_free_bytes", labels, stats.f_bavail * stats.f_frsize),
                    ("backup_fs_size_bytes", labels, stats.f_blocks * stats.f_frsize)]
    samples.append(("sets_timestamp_seconds", labels, now))
    return samples


def check_window(window):
    """christmas_pitr's ``window`` ({"enabled", "reason", "components": {name: {"start", "end"}}}) as samples."""
    if not isinstance(window, dict) or not isinstance(window.get("enabled"), bool):
        raise RecoveryError("pitr_window must be christmas_pitr's window (a dict with enabled true or false)")
    components = window.get("components") or {}
    if not isinstance(components, dict):
        raise RecoveryError("pitr_window.components must be a dict of component: {start, end}")
    samples = [("pitr_enabled", {"reason": safe_reason(window.get("reason"))} if not window["enabled"] else {},
                1 if window["enabled"] else 0)]
    for name in sorted(components):
        bounds = components[name]
        if not isinstance(bounds, dict):
            raise RecoveryError("pitr_window.components.%s must be a dict with start and end" % name)
        for edge in ("start", "end"):
            if bounds.get(edge) is not None:
                samples.append(("window_%s_seconds" % edge, {"component": name},
                                number(bounds[edge], "pitr_window.components.%s.%s" % (name, edge))))
    return samples


def replication_samples(rows, now):
    samples = [("replication_standbys", {}, len(rows))]
    for name, streaming, lag_bytes, lag_seconds in rows:
        labels = {"standby": name}
        samples.append(("replication_streaming", labels, streaming))
        if lag_bytes is not None:
            samples.append(("replication_lag_bytes", labels, lag_bytes))
        if lag_seconds is not None:
            samples.append(("replication_lag_seconds", labels, lag_seconds))
    samples.append(("replication_timestamp_seconds", {}, now))
    return samples


# ---------------------------------------------------------------- files


def make_textfile_dir(path):
    """Create the directory (and parents) 0755 whatever the umask; an existing one keeps its mode."""
    if os.path.isdir(path):
        return False
    parent = os.path.dirname(os.path.abspath(path))
    if parent != path:
        make_textfile_dir(parent)
    os.makedirs(path, DIR_MODE, exist_ok=True)
    os.chmod(path, DIR_MODE)
    return True


def write_text_atomic(path, text):
    """Write ``text`` under a temporary name node_exporter ignores (no .prom), fsync, rename over ``path``."""
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), FILE_MODE)
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.rename(tmp, path)
    except BaseException:
        remove_quietly(tmp)
        raise
    fsync_dir(directory)


def remove_stale_temporaries(directory, now):
    """Temporary files a killed run left (never a live one: those are seconds old)."""
    with contextlib.suppress(OSError):
        for name in os.listdir(directory):
            path = os.path.join(directory, name)
            if name.startswith(TMP_PREFIX) and name.endswith(".tmp"):
                with contextlib.suppress(OSError):
                    if now - os.lstat(path).st_mtime > STALE_TMP_SECONDS:
                        os.unlink(path)


def read_text(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except (OSError, ValueError):
        return None


def write_metrics(textfile_dir, kind, success, scenario=None, duration=None, reason=None, values=None, set_id=None,
                  backup_dir=None, replication=None, check_mode=False, now=None, pitr_window=None):
    """Write the run's file, the sets file (with ``backup_dir``), the replication file (with ``replication``) and the
    recovery window's file (with ``pitr_window``).

    Returns {"files": [{"path", "changed", "content"}], "created_dir": bool}; in check mode nothing is written.
    """
    name, families = check_run(kind, scenario, values, set_id)
    if duration is not None:
        duration = number(duration, "duration_seconds")
        if duration < 0:
            raise RecoveryError("duration_seconds must be 0 or more, got %s" % duration)
    rows = check_replication(replication) if replication is not None else None
    window = check_window(pitr_window) if pitr_window is not None else None
    if not textfile_dir or not os.path.isabs(textfile_dir):
        raise RecoveryError("textfile_dir must be an absolute path, got %r" % (textfile_dir,))
    if os.path.exists(textfile_dir) and not os.path.isdir(textfile_dir):
        raise RecoveryError("textfile_dir %s is not a directory" % textfile_dir)
    now = round(time.time() if now is None else now, 3)

    run_path = os.path.join(textfile_dir, name)
    contents = [(run_path, render(run_samples(kind, scenario, success, duration, reason, families, now,
                                              previous_success(run_path))))]
    if backup_dir:
        contents.append((os.path.join(textfile_dir, PREFIX + "sets.prom"), render(sets_samples(backup_dir, now))))
    if rows is not None:
        contents.append((os.path.join(textfile_dir, PREFIX + "replication.prom"),
                         render(replication_samples(rows, now))))

    if window is not None:
        contents.append((os.path.join(textfile_dir, PREFIX + "window.prom"),
                         render(window + [("window_timestamp_seconds", {}, now)])))

    created = not os.path.isdir(textfile_dir)
    files = [{"path": path, "changed": read_text(path) != text, "content": text} for path, text in contents]
    changed = created or any(entry["changed"] for entry in files)
    if check_mode:
        return {"files": files, "created_dir": created, "changed": changed}
    try:
        make_textfile_dir(textfile_dir)
        remove_stale_temporaries(textfile_dir, now)
        for path, text in contents:
            write_text_atomic(path, text)
    except OSError as err:
        raise RecoveryError("cannot write metrics into %s: %s" % (textfile_dir, err.strerror or err)) from None
    return {"files": files, "created_dir": created, "changed": changed}

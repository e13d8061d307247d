#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: christmas_metrics
short_description: Write Prometheus metrics of a run for node_exporter's textfile collector
description:
  - Writes Prometheus text format files into I(textfile_dir), the directory node_exporter's textfile collector reads
    (C(--collector.textfile.directory)). Each file is written whole under a temporary name in that directory
    (which the collector ignores), fsynced and renamed into place, mode 0644; the directory is created 0755 when
    missing. Metric names start with C(christmas_recovery_); every family is a gauge with HELP and TYPE. There is no
    C(host) label (Prometheus adds C(instance)).
  - "One file per kind of run, so that runs never overwrite each other's metrics:
    C(christmas_recovery_backup.prom), C(christmas_recovery_archive.prom), C(christmas_recovery_upload.prom),
    C(christmas_recovery_verify.prom), C(christmas_recovery_rehearsal.prom), and
    per drill scenario C(christmas_recovery_drill_SCENARIO.prom). Each has, labelled C(kind) (and C(scenario) for a
    drill): C(last_run_timestamp_seconds), C(last_success_timestamp_seconds) (carried over from the file's previous
    version when this run failed; absent until the first success), C(last_run_success) (1 or 0),
    C(last_run_duration_seconds) (when I(duration_seconds) is given), C(last_run_failure_info) (1, only when the run
    failed, with a C(reason) label holding I(reason) when it is short and safe to publish, else empty),
    C(run_set_timestamp_seconds) (with I(set_id)) and one family per entry of I(values)."
  - "With I(backup_dir), C(christmas_recovery_sets.prom) describes that directory as it is now (labelled
    C(backup_dir)): C(complete_sets), C(unreadable_sets) (a manifest that cannot be read or fails its checksum),
    C(newest_set_timestamp_seconds) and C(newest_set_age_seconds) (the newest complete set; its id is its UTC time),
    C(newest_proven_set_timestamp_seconds) and C(newest_proven_set_age_seconds) (the newest set whose last restore
    rehearsal passed), C(newest_set_bytes), C(sets_bytes) (all complete sets, as their manifests list them),
    C(backup_fs_free_bytes), C(backup_fs_size_bytes) and C(sets_timestamp_seconds). Ages are as of the run:
    alerts compute them from the timestamps in PromQL (the current time less C(..._timestamp_seconds))."
  - "With I(replication), C(christmas_recovery_replication.prom): C(replication_standbys), and per C(standby) (its
    application name) C(replication_streaming), C(replication_lag_bytes) and C(replication_lag_seconds), and
    C(replication_timestamp_seconds)."
  - "With I(pitr_window), C(christmas_recovery_window.prom): C(pitr_enabled) (1, or 0 with a C(reason) label),
    C(window_start_seconds) and C(window_end_seconds) per C(component) (db, redis, config: the oldest and newest
    point it can be restored to) and C(window_timestamp_seconds)."
  - docs/monitoring.md lists every metric and the alert rules of C(files/prometheus/christmas-recovery.rules.yml).
  - Check mode writes nothing and returns what would be written.
version_added: 0.1.0
author: Christmas platform operations
options:
  textfile_dir:
    description: Directory of node_exporter's textfile collector (Debian's prometheus-node-exporter reads this one).
    type: path
    default: /var/lib/prometheus/node-exporter
  backup_dir:
    description: The backup directory whose sets are described in C(christmas_recovery_sets.prom); omitted, that file
      is left alone.
    type: path
  kind:
    description: What ran; decides the run's file.
    type: str
    required: true
    choices: [backup, archive, upload, verify, rehearsal, drill]
  scenario:
    description: The drill's scenario (letters, digits, C(_) and C(-), at most 64); required for, and only for, a drill.
    type: str
  success:
    description: Whether the run succeeded.
    type: bool
    required: true
  duration_seconds:
    description: How long the run took.
    type: float
  reason:
    description:
      - The failure's one-line message. It becomes the C(reason) label of C(last_run_failure_info) only when it is at
        most 256 characters of printable ASCII without backslashes and names no URL (no C(://)); otherwise the label
        is empty (a long label value makes a new series per message; a URL may carry a token).
    type: str
    default: ""
  values:
    description:
      - "Numbers of the run, name: number (an integer, a float, a boolean or a numeric string; never NaN or
        infinite). Each becomes a family; the names a kind accepts:"
      - "Every kind: C(set_bytes) (C(run_set_bytes): bytes of the set the run made or checked)."
      - "C(backup): C(pruned_sets) (C(backup_pruned_sets))."
      - "C(archive): C(shipped_bytes) (C(archive_shipped_bytes)); it takes no C(set_bytes)."
      - "C(upload): C(bytes), C(sets) (C(upload_NAME): what the last upload to object storage sent), C(bucket_sets)
        (C(bucket_complete_sets)) and C(bucket_newest_set) (C(bucket_newest_set_timestamp_seconds), the bucket's
        newest complete set as Unix time); it takes no C(set_bytes)."
      - "C(verify): C(deep) (C(verify_deep), 1 or 0), C(artifacts) (C(verify_artifacts))."
      - "C(rehearsal): C(passed), C(restore_seconds), C(failed_checks) (C(rehearsal_NAME))."
      - "C(drill): C(passed), C(detection_seconds), C(rto_seconds), C(rpo_seconds), C(detection_target_seconds),
        C(rto_target_seconds), C(rpo_target_seconds) (C(drill_NAME), labelled C(scenario))."
    type: dict
    default: {}
  set_id:
    description: The set the run made or checked (C(YYYYMMDD_HHMMSS)), or the point in time a restore reached
      (C(pitr-YYYYMMDD_HHMMSS)); written as C(run_set_timestamp_seconds), its id as Unix time.
    type: str
  replication:
    description:
      - The C(replicas) list of M(christmas.recovery.christmas_replication) C(state=info) on the primary (each with
        C(application_name), C(state), C(lag_bytes), C(replay_lag_seconds)). Omitted, the replication file is left
        alone; an empty list records that no standby is connected.
    type: list
    elements: dict
  pitr_window:
    description:
      - The C(window) of M(christmas.recovery.christmas_pitr) (C(enabled), C(reason), C(components)); omitted, the
        window file is left alone.
    type: dict
  fail_on_error:
    description:
      - When false, a file that cannot be written (or bad input) is a warning and the result's C(error), not a
        failure; for metrics written while the run fails already, whose error must stay the one reported.
    type: bool
    default: true
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
"""

EXAMPLES = r"""
- name: Record a successful backup
  christmas.recovery.christmas_metrics:
    kind: backup
    success: true
    duration_seconds: 42.5
    backup_dir: /var/backups/christmas
    set_id: "20261126_030000"
    values:
      set_bytes: 52428800
      pruned_sets: 1

- name: Record a drill
  christmas.recovery.christmas_metrics:
    kind: drill
    scenario: db_lost
    success: true
    values: {passed: true, rto_seconds: 610, rto_target_seconds: 900, rpo_seconds: 30, rpo_target_seconds: 300}
"""

RETURN = r"""
files:
  description: The files written (or, in check mode, that would be), each with C(path), C(changed) and C(content).
  returned: unless an error was turned into a warning
  type: list
  elements: dict
  sample: [{"path": "/var/lib/prometheus/node-exporter/christmas_recovery_backup.prom", "changed": true,
            "content": "# HELP christmas_recovery_last_run_timestamp_seconds ..."}]
created_dir:
  description: Whether I(textfile_dir) was (or would be) created.
  returned: unless an error was turned into a warning
  type: bool
reason_label:
  description: The C(reason) label written (empty when I(reason) was not safe to publish, or the run succeeded).
  returned: unless an error was turned into a warning
  type: str
error:
  description: The error turned into a warning (I(fail_on_error=false)).
  returned: when an error was turned into a warning
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.christmas.recovery.plugins.module_utils.core.module_runner import run
from ansible_collections.christmas.recovery.plugins.module_utils.platform.metrics import (
    KINDS,
    safe_reason,
    write_metrics,
)


def main():
    argument_spec = {
        "textfile_dir": {"type": "path", "default": "/var/lib/prometheus/node-exporter"},
        "backup_dir": {"type": "path"},
        "kind": {"type": "str", "required": True, "choices": list(KINDS)},
        "scenario": {"type": "str"},
        "success": {"type": "bool", "required": True},
        "duration_seconds": {"type": "float"},
        "reason": {"type": "str", "default": ""},
        "values": {"type": "dict", "default": {}},
        "set_id": {"type": "str"},
        "replication": {"type": "list", "elements": "dict"},
        "pitr_window": {"type": "dict"},
        "fail_on_error": {"type": "bool", "default": True},
    }
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    params = module.params

    def work(_progress):
        result = write_metrics(
            params["textfile_dir"], params["kind"], params["success"], scenario=params["scenario"],
            duration=params["duration_seconds"], reason=params["reason"], values=params["values"],
            set_id=params["set_id"], backup_dir=params["backup_dir"], replication=params["replication"],
            pitr_window=params["pitr_window"], check_mode=module.check_mode)
        result["reason_label"] = "" if params["success"] else safe_reason(params["reason"])
        return result

    run(module, work, warn_only=not params["fail_on_error"])


if __name__ == "__main__":
    main()

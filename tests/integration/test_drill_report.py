"""playbooks/drill_report.yml against a seeded incident database: the history of drills and rehearsals as Markdown,
HTML and a PNG chart on the controller, written only when it changes, nothing written in check mode."""

from __future__ import annotations

import os
import stat
import struct

from ansible_collections.christmas.recovery.plugins.module_utils.platform.incidents import SqliteStore, record_incident

CHECKS = ("alerts fire in time", "recovery time within expectations", "data loss within target")


def seed(db):
    """Three db_stop drills (the middle one failed its RTO), one app_kill, one rehearsal, one ordinary restore."""
    store = SqliteStore(db)
    for day, procedure, status, rto, error in (
            ("20", "drill_db_stop", "passed", 35.5, None),
            ("22", "drill_db_stop", "failed", 412.0, "recovery time within expectations: RTO <script>x</script>"),
            ("24", "drill_db_stop", "passed", 38.25, None),
            ("23", "drill_app_kill", "passed", 9.5, None)):
        record_incident(store, {
            "procedure": procedure, "status": status, "started_at": "2026-11-%sT10:00:00Z" % day,
            "incident_type": "drill", "error": error,
            "measurements": {"detection_seconds": 1.5, "rto_seconds": rto, "rpo_seconds": 0,
                             "target_detection_seconds": 30, "target_rto_seconds": 300, "target_rpo_seconds": 90000},
            "verification": [{"name": name, "ok": not (status == "failed" and name == CHECKS[1])} for name in CHECKS]})
    record_incident(store, {"procedure": "rehearsal", "status": "passed", "started_at": "2026-11-21T03:00:00Z",
                            "measurements": {"rto_seconds": 120}})
    record_incident(store, {"procedure": "db", "status": "recovered", "started_at": "2026-11-25T03:00:00Z"})


def png_size(path):
    with open(path, "rb") as handle:
        head = handle.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def test_report_renders_every_drill_and_rehearsal_and_only_rewrites_on_change(run_playbook, tmp_dir):
    db = os.path.join(tmp_dir, "incidents", "incidents.sqlite")
    seed(db)
    report = os.path.join(tmp_dir, "report")
    host_vars = {"christmas_incident_db": db, "christmas_drill_report_dir": report}

    dry = run_playbook("drill_report", host_vars, check=True)
    assert dry.changed == 1 and not os.path.exists(report)

    first = run_playbook("drill_report", host_vars)

    assert first.changed == 1
    assert sorted(os.listdir(report)) == ["drills.html", "drills.md", "drills_rto_rpo.png"]
    assert stat.S_IMODE(os.stat(report).st_mode) == 0o700
    width, height = png_size(os.path.join(report, "drills_rto_rpo.png"))
    assert width >= 800 and height >= 500 and os.path.getsize(os.path.join(report, "drills_rto_rpo.png")) > 20000
    with open(os.path.join(report, "drills.md"), encoding="utf-8") as handle:
        markdown = handle.read().splitlines()
    assert [line for line in markdown if line.startswith("## ")] == ["## app_kill", "## db_stop", "## rehearsal"]
    rows = [line for line in markdown if line.startswith("| 2026-11-")]
    assert [row[2:18] for row in rows] == ["2026-11-23 10:00", "2026-11-24 10:00", "2026-11-22 10:00",
                                           "2026-11-20 10:00", "2026-11-21 03:00"]  # newest first per scenario
    assert rows[2] == ("| 2026-11-22 10:00 | **failed** | 1.5 s (target 30 s) | 6.9 min (target 5.0 min) "
                       "| 0 s (target 25.0 h) | pass | **FAIL** | pass "
                       "| recovery time within expectations: RTO &lt;script&gt;x&lt;/script&gt; |")
    assert rows[1] == ("| 2026-11-24 10:00 | passed | 1.5 s (target 30 s) | 38.2 s (target 5.0 min) "
                       "| 0 s (target 25.0 h) | pass | pass | pass |  |")
    assert rows[4] == "| 2026-11-21 03:00 | passed | - | 2.0 min | - |  |"  # a rehearsal: no checklist
    assert "| db_stop | 3 runs, 2 passed; last passed on 2026-11-24 10:00 |" in markdown
    assert not [line for line in markdown if "2026-11-25" in line]  # the restore is no drill
    with open(os.path.join(report, "drills.html"), encoding="utf-8") as handle:
        page = handle.read()
    assert "<script>" not in page and "RTO &lt;script&gt;x&lt;/script&gt;" in page
    assert page.count('<td class="fail">FAIL</td>') == 1 and page.count('<td class="pass">pass</td>') == 11
    assert '<img src="drills_rto_rpo.png"' in page

    again = run_playbook("drill_report", host_vars)
    assert again.changed == 0 and "unchanged" in again.stdout

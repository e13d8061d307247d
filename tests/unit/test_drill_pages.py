"""The drill report's pure parts: the history per scenario, the Markdown and HTML pages (escaping record text), the
chart as a real PNG, and bad records refused in one line."""

from __future__ import annotations

import struct

import pytest

from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.platform import drill_report


def _drill(procedure, when, status="passed", rto=40.0, checks=(("alerts fire in time", True),), error=None, **extra):
    return dict({"id": int(when[8:10] + when[11:13]), "procedure": procedure, "status": status,
                 "started_at": when, "finished_at": when, "error": error,
                 "measurements": {"detection_seconds": 2.5, "rto_seconds": rto, "rpo_seconds": 0,
                                  "target_rto_seconds": 300},
                 "verification": [{"name": name, "ok": ok} for name, ok in checks]}, **extra)


RECORDS = [
    _drill("drill_db_stop", "2026-11-20T10:00:00Z"),
    _drill("drill_db_stop", "2026-11-24T10:00:00Z", status="failed", rto=412.0,
           checks=(("alerts fire in time", True), ("recovery time within expectations", False)),
           error="RTO <b>412</b> | too slow"),
    _drill("drill_app_kill", "2026-11-22T10:00:00Z"),
    {"id": 9, "procedure": "rehearsal", "status": "passed", "started_at": "2026-11-21T03:00:00Z",
     "finished_at": "2026-11-21T03:10:00Z", "measurements": {}, "verification": []},
]


def test_history_groups_runs_per_scenario_newest_first():
    history = drill_report.build_history(RECORDS)
    assert list(history) == ["app_kill", "db_stop", "rehearsal"]
    assert [run["status"] for run in history["db_stop"]] == ["failed", "passed"]
    assert drill_report.checklist_items(history["db_stop"]) == ["alerts fire in time",
                                                                "recovery time within expectations"]
    assert history["rehearsal"][0]["measured"] == {"detection_seconds": None, "rto_seconds": None,
                                                   "rpo_seconds": None}


def test_markdown_has_a_row_per_run_with_pass_fail_cells_and_escaped_text():
    lines = drill_report.render_markdown(drill_report.build_history(RECORDS)).splitlines()
    header = ("| date (UTC) | status | detection | RTO | RPO | alerts fire in time "
              "| recovery time within expectations | error |")
    assert header in lines
    assert ("| 2026-11-24 10:00 | **failed** | 2.5 s | 6.9 min (target 5.0 min) | 0 s | pass | **FAIL** "
            "| RTO &lt;b&gt;412&lt;/b&gt; \\| too slow |") in lines
    assert "| 2026-11-20 10:00 | passed | 2.5 s | 40 s (target 5.0 min) | 0 s | pass | - |  |" in lines
    assert "| db_stop | 2 runs, 1 passed; last failed on 2026-11-24 10:00 |" in lines
    assert "## rehearsal" in lines and "![RTO and RPO over time per scenario](drills_rto_rpo.png)" in lines


def test_html_escapes_record_text_and_marks_failures():
    page = drill_report.render_html(drill_report.build_history(RECORDS))
    assert "<b>412</b>" not in page and "RTO &lt;b&gt;412&lt;/b&gt; | too slow" in page
    assert '<td class="fail">FAIL</td>' in page and '<td class="pass">pass</td>' in page
    assert '<td class="na">-</td>' in page
    assert '<img src="drills_rto_rpo.png"' in page


def test_chart_is_a_png_of_real_size():
    data = drill_report.render_chart(drill_report.build_history(RECORDS))
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1000, 700) and len(data) > 20000


def test_an_empty_history_still_renders():
    assert "No drill or rehearsal is recorded yet." in drill_report.render_markdown({})
    assert drill_report.render_chart({})[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(("records", "message"), [
    ("x", "records must be a list of incident records, got str"),
    ([{"status": "passed"}], "records: each record must be a dict with a procedure"),
    ([{"id": 3, "procedure": "drill_x", "started_at": "yesterday"}],
     "records: record 3 has no time in the form %Y-%m-%dT%H:%M:%SZ (got 'yesterday')"),
])
def test_bad_records_fail_in_one_line(records, message):
    with pytest.raises(RecoveryError) as caught:
        drill_report.build_history(records)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)

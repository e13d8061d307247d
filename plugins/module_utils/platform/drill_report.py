# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The history of drills and restore rehearsals from the incident database: a Markdown page, an HTML page and a PNG
chart of RTO and RPO over time per scenario, with a pass/fail table per checklist item per run. Pure functions over
the records as christmas_incident_info returns them; matplotlib (Agg) is imported only to draw the chart."""

from __future__ import annotations

import datetime
import html
import io
import math
import os

from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.core.fsutil import make_private_dir, write_bytes_atomic

MARKDOWN_NAME = "drills.md"
HTML_NAME = "drills.html"
CHART_NAME = "drills_rto_rpo.png"
DRILL_PREFIX = "drill_"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
MEASURED = (("detection", "detection_seconds"), ("RTO", "rto_seconds"), ("RPO", "rpo_seconds"))


# ---------------------------------------------------------------- the history


def scenario_of(procedure):
    """``drill_db_stop`` -> ``db_stop``; any other procedure (a rehearsal's) stands for itself."""
    return procedure[len(DRILL_PREFIX):] if procedure.startswith(DRILL_PREFIX) else procedure


def _number(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return value


def _run(record):
    if not isinstance(record, dict) or not isinstance(record.get("procedure"), str):
        raise RecoveryError("records: each record must be a dict with a procedure, as christmas_incident_info "
                            "returns them; got %r" % (record,))
    when = record.get("started_at") or record.get("finished_at")
    try:
        moment = datetime.datetime.strptime(when or "", TIME_FORMAT)
    except ValueError:
        raise RecoveryError("records: record %s has no time in the form %s (got %r)" % (
            record.get("id"), TIME_FORMAT, when)) from None
    measurements = record.get("measurements") or {}
    checks = [check for check in record.get("verification") or [] if isinstance(check, dict) and check.get("name")]
    return {
        "id": record.get("id"), "when": moment, "scenario": scenario_of(record["procedure"]),
        "procedure": record["procedure"], "status": str(record.get("status") or ""),
        "measured": {key: _number(measurements.get(key)) for _label, key in MEASURED},
        "targets": {key: _number(measurements.get("target_" + key)) for _label, key in MEASURED},
        "checks": {str(check["name"]): bool(check.get("ok")) for check in checks},
        "check_order": [str(check["name"]) for check in checks],
        "error": record.get("error") or "", "markdown": record.get("markdown") or "",
    }


def build_history(records):
    """{scenario: [run, ...] newest first}, scenarios in name order; a run's checks in the order they were made."""
    if not isinstance(records, list):
        raise RecoveryError("records must be a list of incident records, got %s" % type(records).__name__)
    history = {}
    for run in sorted((_run(record) for record in records), key=lambda run: (run["when"], run["id"] or 0),
                      reverse=True):
        history.setdefault(run["scenario"], []).append(run)
    return dict(sorted(history.items()))


def checklist_items(runs):
    """Every checklist item of a scenario's runs, in the order the newest run that has it made it."""
    items = []
    for run in runs:
        items += [name for name in run["check_order"] if name not in items]
    return items


def _seconds(value):
    if value is None:
        return "-"
    if value >= 3600:
        return "%.1f h" % (value / 3600)
    if value >= 120:
        return "%.1f min" % (value / 60)
    return "%g s" % round(value, 1)


def _measure(run, key):
    """"41.2 s (target 5.0 min)" or "41.2 s"; "-" when not measured."""
    text = _seconds(run["measured"][key])
    target = run["targets"][key]
    return text if target is None or text == "-" else "%s (target %s)" % (text, _seconds(target))


def _cell_text(run, item):
    if item not in run["checks"]:
        return "-"
    return "pass" if run["checks"][item] else "FAIL"


def _summary(runs):
    passed = sum(1 for run in runs if run["status"] in ("passed", "recovered", "healed_by_restart"))
    return "%d run%s, %d passed; last %s on %s" % (len(runs), "" if len(runs) == 1 else "s", passed,
                                                   runs[0]["status"], runs[0]["when"].strftime("%Y-%m-%d %H:%M"))


# ---------------------------------------------------------------- Markdown


def _md(value):
    """Record text in a table cell: one line, no raw HTML, pipes escaped."""
    text = " ".join(str(value).split())
    text = text.replace("\\", "\\\\").replace("|", "\\|")
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _md_table(header, rows):
    lines = ["| %s |" % " | ".join(_md(cell) for cell in header), "|%s" % ("---|" * len(header))]
    lines += ["| %s |" % " | ".join(cell if bold else _md(cell) for cell, bold in row) for row in rows]
    return lines


def render_markdown(history, chart_name=CHART_NAME):
    lines = ["# Drills and restore rehearsals", ""]
    if not history:
        return "\n".join(lines + ["No drill or rehearsal is recorded yet.", ""])
    lines += ["![RTO and RPO over time per scenario](%s)" % chart_name, ""]
    lines += _md_table(["scenario", "runs"], [((scenario, False), (_summary(runs), False))
                                             for scenario, runs in history.items()])
    for scenario, runs in history.items():
        items = checklist_items(runs)
        lines += ["", "## %s" % _md(scenario), ""]
        rows = []
        for run in runs:
            status = "**%s**" % _md(run["status"]) if run["status"] == "failed" else _md(run["status"])
            rows.append([(run["when"].strftime("%Y-%m-%d %H:%M"), False), (status, True)]
                        + [(_measure(run, key), False) for _label, key in MEASURED]
                        + [("**FAIL**" if _cell_text(run, item) == "FAIL" else _cell_text(run, item), True)
                           for item in items]
                        + [(run["error"] or "", False)])
        lines += _md_table(["date (UTC)", "status"] + [label for label, _key in MEASURED] + items + ["error"], rows)
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- HTML

STYLE = """body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}
th,td{border:1px solid #bbb;padding:.3em .6em;text-align:left;vertical-align:top}th{background:#eee}
td.pass{background:#e3f4e3}td.fail{background:#f8d7d7;font-weight:bold}td.na{color:#999}img{max-width:100%}"""


def _h(value):
    return html.escape(" ".join(str(value).split()), quote=True)


def _html_table(header, rows):
    out = ["<table>", "<tr>%s</tr>" % "".join("<th>%s</th>" % _h(cell) for cell in header)]
    for row in rows:
        out.append("<tr>%s</tr>" % "".join(
            "<td%s>%s</td>" % (' class="%s"' % css if css else "", _h(cell)) for cell, css in row))
    out.append("</table>")
    return out


def render_html(history, chart_name=CHART_NAME):
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           "<title>Drills and restore rehearsals</title>", "<style>%s</style>" % STYLE, "</head>", "<body>",
           "<h1>Drills and restore rehearsals</h1>"]
    if not history:
        return "\n".join(out + ["<p>No drill or rehearsal is recorded yet.</p>", "</body>", "</html>", ""])
    out.append('<p><img src="%s" alt="RTO and RPO over time per scenario"></p>' % _h(chart_name))
    out += _html_table(["scenario", "runs"], [((scenario, ""), (_summary(runs), ""))
                                             for scenario, runs in history.items()])
    css = {"pass": "pass", "FAIL": "fail", "-": "na"}
    for scenario, runs in history.items():
        items = checklist_items(runs)
        out.append("<h2>%s</h2>" % _h(scenario))
        rows = [[(run["when"].strftime("%Y-%m-%d %H:%M"), ""), (run["status"], "fail" if run["status"] == "failed"
                                                                else "")]
                + [(_measure(run, key), "") for _label, key in MEASURED]
                + [(_cell_text(run, item), css[_cell_text(run, item)]) for item in items]
                + [(run["error"], "")] for run in runs]
        out += _html_table(["date (UTC)", "status"] + [label for label, _key in MEASURED] + items + ["error"], rows)
    return "\n".join(out + ["</body>", "</html>", ""])


# ---------------------------------------------------------------- the chart


def render_chart(history):
    """PNG bytes: RTO (top) and RPO (bottom, symmetric log: 0 stays visible) over time, one line per scenario;
    a failed run is a cross, a passed one a dot."""
    import matplotlib  # noqa: PLC0415 - only the report needs it, on the controller
    matplotlib.use("Agg")
    import matplotlib.dates as mdates  # noqa: PLC0415
    import matplotlib.pyplot as plt  # noqa: PLC0415
    from matplotlib.ticker import FuncFormatter  # noqa: PLC0415

    figure, axes = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for axis, (label, key) in zip(axes, MEASURED[1:], strict=True):
        for index, (scenario, runs) in enumerate(history.items()):
            points = sorted((run["when"], run["measured"][key], run["status"] == "failed") for run in runs
                            if run["measured"][key] is not None)
            if not points:
                continue
            color = "C%d" % (index % 10)
            axis.plot([when for when, _value, _failed in points], [value for _when, value, _failed in points],
                      color=color, marker="o", label=scenario)
            failed = [(when, value) for when, value, is_failed in points if is_failed]
            if failed:
                axis.plot(*zip(*failed, strict=True), color=color, marker="x", markersize=12, linestyle="none")
        axis.set_ylabel("%s (seconds)" % label)
        axis.grid(True, alpha=0.3)
        highest = max([run["measured"][key] or 0 for runs in history.values() for run in runs] + [0])
        if key == "rpo_seconds":  # from 0 (no data lost) to a day and more: linear up to 1 s, logarithmic above
            axis.set_yscale("symlog", linthresh=1)
            axis.set_ylim(-0.3, max(10, highest * 2))  # a little below 0: "no data lost" points stay whole
        else:
            axis.set_ylim(-max(10, highest) * 0.03, max(10, highest * 1.1))
        axis.yaxis.set_major_formatter(FuncFormatter(lambda value, _position: "%g" % value))
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8, loc="best")
    axes[0].set_title("RTO and RPO per scenario (x: failed run)")
    locator = mdates.AutoDateLocator()
    axes[1].xaxis.set_major_locator(locator)
    axes[1].xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    plt.close(figure)
    return buffer.getvalue()


# ---------------------------------------------------------------- writing


def _unchanged(path, data):
    try:
        with open(path, "rb") as handle:
            return handle.read() == data
    except OSError:
        return False


def write_report(records, dest, check_mode=False):
    """The three files in ``dest`` (0700, files 0600), each written atomically and only when its content changes;
    check mode says what would change and writes nothing."""
    if not dest:
        raise RecoveryError("dest (the report directory) is required")
    history = build_history(records)
    dest = os.path.abspath(dest)
    pages = {MARKDOWN_NAME: render_markdown(history).encode("utf-8"), HTML_NAME: render_html(history).encode("utf-8"),
             CHART_NAME: render_chart(history)}
    changed = [name for name, data in pages.items() if not _unchanged(os.path.join(dest, name), data)]
    if changed and not check_mode:
        try:
            make_private_dir(dest)
            for name in changed:
                write_bytes_atomic(os.path.join(dest, name), pages[name])
        except OSError as err:
            raise RecoveryError("cannot write the drill report in %s: %s" % (dest, err.strerror or err)) from None
    return {
        "changed": bool(changed), "written": changed, "dest": dest,
        "markdown": os.path.join(dest, MARKDOWN_NAME), "html": os.path.join(dest, HTML_NAME),
        "chart": os.path.join(dest, CHART_NAME),
        "scenarios": {scenario: {"runs": len(runs), "last_status": runs[0]["status"],
                                 "last_run": runs[0]["when"].strftime(TIME_FORMAT)}
                      for scenario, runs in history.items()},
    }


def argument_spec():
    return {"records": {"type": "list", "elements": "dict", "required": True},
            "dest": {"type": "path", "required": True}}

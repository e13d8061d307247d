"""Incident texts given as extra vars are stored as text: a Jinja expression in them is never evaluated."""

from __future__ import annotations

import os
import sqlite3

from conftest import connection_vars


def test_a_jinja_lookup_in_an_incident_text_is_stored_verbatim_and_never_run(run_playbook, config_dir, tmp_dir):
    marker = os.path.join(tmp_dir, "pwned-%s" % os.urandom(4).hex())
    texts = {"incident_symptoms": "{{ lookup('pipe', 'touch %s') }}" % marker,
             "incident_impact": "{% if true %}{{ lookup('pipe', 'touch " + marker + "-impact') }}{% endif %}",
             "incident_remaining_problems": "{{ 7 * 6 }}"}
    host_vars = connection_vars(config=config_dir, backup_dir=os.path.join(tmp_dir, "backups"))
    run_playbook("backup", host_vars, {"skip_db": True, "skip_redis": True})
    with open(os.path.join(config_dir, "app.yml"), "w", encoding="utf-8") as handle:
        handle.write("damaged\n")
    run_playbook("restore_config", host_vars, dict(texts, incident_type="configuration"))

    assert not os.path.exists(marker) and not os.path.exists(marker + "-impact")
    db = os.path.join(tmp_dir, "incidents", "incidents.sqlite")
    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT incident_symptoms, incident_impact, remaining_problems, markdown "
                           "FROM christmas_incidents").fetchone()
    assert list(row[:3]) == [texts["incident_symptoms"], texts["incident_impact"], texts["incident_remaining_problems"]]
    with open(row[3], encoding="utf-8") as handle:
        markdown = handle.read()
    assert texts["incident_symptoms"] in markdown and "{{ 7 * 6 }}" in markdown

# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""christmas_incident's action: the operator's texts (the ``incident_*`` extra vars) go into the record as they
were typed. They are read untemplated from the play's variables, so a Jinja expression in them
(``{{ lookup('pipe', ...) }}``) is stored as text and never evaluated."""

from __future__ import annotations

from ansible.plugins.action import ActionBase

# record field -> the extra var an operator gives it with
OPERATOR_TEXTS = {
    "operator": "incident_operator",
    "incident_type": "incident_type",
    "incident_symptoms": "incident_symptoms",
    "incident_impact": "incident_impact",
    "remaining_problems": "incident_remaining_problems",
    "followup_prevention": "incident_followup_prevention",
    "followup_monitoring": "incident_followup_monitoring",
    "followup_config_changes": "incident_followup_config_changes",
}


def plain_text(value):
    """The value as an untagged, never-templated str (a str subclass may carry Ansible's trust markers)."""
    return str(value).encode("utf-8", "surrogateescape").decode("utf-8", "surrogateescape")


# Fields where the play's own words (e.g. that an unsigned set was allowed) come before the operator's.
JOINED = ("remaining_problems",)


def operator_texts(record, task_vars):
    """``record`` with each text the play left empty filled from the operator's extra var, verbatim."""
    filled = dict(record)
    for field, name in OPERATOR_TEXTS.items():
        if name not in task_vars or task_vars[name] is None:
            continue
        text = plain_text(task_vars[name])
        if not filled.get(field):
            filled[field] = text
        elif field in JOINED and text:
            filled[field] = "%s %s" % (filled[field], text)
    return filled


class ActionModule(ActionBase):
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = dict(self._task.args)
        if isinstance(args.get("record"), dict):
            args["record"] = operator_texts(args["record"], task_vars or {})
        result.update(self._execute_module(module_name="christmas.recovery.christmas_incident", module_args=args,
                                           task_vars=task_vars))
        return result

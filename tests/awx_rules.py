"""The rules AWX's API applies to what `awx import` creates: credential types (CredentialTypeInputField,
CredentialTypeInjectorField), surveys (JobTemplateSurveySpec) and schedules (ScheduleSerializer, Schedule.rrulestr).
Each function returns the list of errors AWX would answer with (400), one line each."""

from __future__ import annotations

import re

import jinja2
import jsonschema
from dateutil import rrule as dateutil_rrule
from jinja2.sandbox import ImmutableSandboxedEnvironment

# ---------------------------------------------------------------- credential types

_ID = "^[a-zA-Z_]+[a-zA-Z0-9_]*$"
INPUTS_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "required": {"type": "array", "items": {"type": "string"}},
        "fields": {"type": "array", "items": {
            "type": "object",
            "additionalProperties": False,
            "required": ["id", "label"],
            "properties": {
                "id": {"type": "string", "pattern": _ID},
                "type": {"enum": ["string", "boolean"]},
                "label": {"type": "string"},
                "help_text": {"type": "string"},
                "format": {"enum": ["ssh_private_key", "url"]},
                "choices": {"type": "array", "minItems": 1, "items": {"type": "string"}, "uniqueItems": True},
                "multiline": {"type": "boolean"},
                "secret": {"type": "boolean"},
                "ask_at_runtime": {"type": "boolean"},
                "default": {},
            },
        }},
    },
}
INJECTORS_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "env": {"type": "object", "additionalProperties": False,
                "patternProperties": {_ID: {"type": "string", "pattern": "^[\x00-\x7f]*$"}}},
        "extra_vars": {"type": "object", "additionalProperties": False, "patternProperties": {_ID: {"type": "string"}}},
        "file": {"type": "object", "additionalProperties": False,
                 "patternProperties": {r"^template(\.[a-zA-Z_]+[a-zA-Z0-9_]*)?$": {"type": "string"}}},
    },
}


def credential_type_errors(ctype):
    errors = []
    if ctype.get("kind") not in ("cloud", "net"):
        errors.append("kind %r: a custom credential type is cloud or net" % ctype.get("kind"))
    for part, schema in (("inputs", INPUTS_SCHEMA), ("injectors", INJECTORS_SCHEMA)):
        for error in jsonschema.Draft4Validator(schema).iter_errors(ctype.get(part, {})):
            errors.append("%s %s: %s" % (part, "/".join(map(str, error.path)), error.message))
    if errors:
        return errors
    fields = ctype.get("inputs", {}).get("fields", [])
    return _field_errors(fields, ctype.get("inputs", {}).get("required", [])) + _injector_errors(
        ctype.get("injectors", {}), [field["id"] for field in fields])


def _field_errors(fields, required):
    ids = [field["id"] for field in fields]
    errors = [] if len(ids) == len(set(ids)) else ["field ids must be unique"]
    for field in fields:
        if field.get("type", "string") != "string":
            errors += ["%s not allowed for a %s field (%s)" % (key, field["type"], field["id"])
                       for key in ("choices", "multiline", "format", "secret") if key in field]
    return errors + ["required names an undefined field %s" % name for name in required if name not in ids]


def _injector_errors(injectors, ids):
    errors = ["environment variable %s may affect Ansible configuration" % name
              for name in injectors.get("env", {}) if name.startswith("ANSIBLE_")]
    # Every template renders with the type's fields alone (StrictUndefined, sandboxed).
    namespace = {field_id: "EXAMPLE" for field_id in ids}
    environment = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined)
    for kind, injector in injectors.items():
        for name, template in injector.items():
            try:
                environment.from_string(template).render(**namespace)
            except (jinja2.TemplateError, TypeError) as err:
                errors.append("injector %s.%s: %s" % (kind, name, err))
    return errors


# ---------------------------------------------------------------- surveys

SURVEY_TYPES = {"text": str, "textarea": str, "password": str, "multiplechoice": str, "multiselect": str,
                "integer": int, "float": (float, int)}


def choices_of(question):
    choices = question.get("choices", "")
    return [c for c in choices.splitlines() if c.strip()] if isinstance(choices, str) else list(choices)


def survey_spec_errors(spec):
    errors = ["survey field %s missing or not a %s" % (field, kind.__name__)
              for field, kind in (("name", str), ("description", str), ("spec", list))
              if not isinstance(spec.get(field), kind)]
    if errors:
        return errors
    if not spec["spec"]:
        return ["survey spec has no questions"]
    seen = set()
    for index, question in enumerate(spec["spec"]):
        here = "question %d" % index
        if not isinstance(question, dict):
            errors.append("%s: not an object" % here)
            continue
        if question.get("variable") in seen:
            errors.append("%s: variable %s repeats" % (here, question.get("variable")))
        seen.add(question.get("variable"))
        errors += ["%s: %s" % (here, error) for error in _question_errors(question)]
    return errors


def _question_errors(question):
    errors = ["%s missing or not a %s" % (field, kind.__name__)
              for field, kind in (("type", str), ("question_name", str), ("variable", str), ("required", bool))
              if not isinstance(question.get(field), kind)]
    qtype, default = question.get("type"), question.get("default", "")
    if qtype not in SURVEY_TYPES:
        return errors + ["type %r is not an AWX question type" % qtype]
    if default != "" and not isinstance(default, SURVEY_TYPES[qtype]):
        errors.append("default %r is not a %s" % (default, qtype))
    errors += ["%s is not an integer" % limit for limit in ("min", "max")
               if question.get(limit) is not None and not isinstance(question.get(limit), int)]
    if qtype in ("multiplechoice", "multiselect"):
        errors += _choice_errors(question, qtype, default)
    if isinstance(default, str) and default.startswith("$encrypted$"):
        errors.append("$encrypted$ is reserved")
    return errors


def _choice_errors(question, qtype, default):
    choices = choices_of(question)
    errors = [] if choices else ["%s without choices" % qtype]
    defaults = [d for d in default.splitlines() if d.strip()] if isinstance(default, str) else default
    if qtype == "multiplechoice" and len(defaults) > 1:
        errors.append("multiplechoice with more than one default")
    if any(item not in choices for item in defaults):
        errors.append("default %r not among the choices %s" % (default, choices))
    return errors


# ---------------------------------------------------------------- schedules


def parse_rrule(rule):
    """The schedule as AWX reads it with dateutil: each space-separated part on its own line, a set of rules."""
    return dateutil_rrule.rrulestr(rule.replace(" ", "\n"), forceset=True)


def rrule_errors(rule):
    dtstarts = re.findall(r"DTSTART(?:;[^:]+)?:[0-9]+T[0-9]+Z?", rule)
    rules = re.findall(r"(?:RRULE|EXRULE):\S*", rule)
    errors = [message for failed, message in (
        (not dtstarts, "no valid DTSTART"),
        (len(dtstarts) > 1, "more than one DTSTART"),
        (re.search(r"DTSTART:[0-9]+T[0-9]+(\s|$)", rule), "DTSTART is a naive time (give TZID or Z)"),
        (not rules, "no RRULE"),
        ("exdate:" in rule.lower(), "EXDATE not allowed"),
        ("rdate:" in rule.lower(), "RDATE not allowed"),
    ) if failed]
    for part in rules:
        errors += _rule_errors(part)
    if errors:
        return errors
    try:
        parse_rrule(rule)
    except (ValueError, TypeError) as err:
        errors.append("dateutil cannot parse it: %s" % err)
    return errors


def _rule_errors(part):
    count = re.search(r"COUNT=([0-9]+)", part)
    return [message for failed, message in (
        ("interval" not in part.lower(), "INTERVAL required (%s)" % part),
        ("secondly" in part.lower(), "SECONDLY not supported"),
        (re.search(r"BYDAY[:=][0-9]+[A-Za-z]{2}", part), "BYDAY with a numeric prefix not supported"),
        ("COUNT" in part and "UNTIL" in part, "COUNT and UNTIL together"),
        (count and int(count.group(1)) > 999, "COUNT > 999"),
    ) if failed]

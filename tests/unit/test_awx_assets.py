"""awx/assets.json, checked without an AWX server: the shape awxkit's import reads (its own resource list, natural
keys and nested relations), AWX's validation rules for credential types, surveys and schedules, and that every job
template runs a playbook of this repository which reads what its survey sets."""

from __future__ import annotations

import copy
import datetime
import functools
import glob
import json
import os
import re
from zoneinfo import ZoneInfo

import pytest
import yaml
from awx_rules import choices_of, credential_type_errors, parse_rrule, rrule_errors, survey_spec_errors
from awx_standin import FIELDS, AwxStandIn
from awxkit import exceptions as awx_exceptions
from awxkit.api import utils as awx_utils
from awxkit.api.pages import api as awx_api
from awxkit.api.pages import page as awx_page
from awxkit.api.pages.api import ApiV2
from awxkit.api.resources import resources as awx_resources
from conftest import ROOT

from ansible_collections.christmas.recovery.plugins.action.christmas_incident import OPERATOR_TEXTS

ASSETS = os.path.join(ROOT, "awx", "assets.json")


def load_assets():
    with open(ASSETS, encoding="utf-8") as handle:
        return json.load(handle)


# ---------------------------------------------------------------- what awxkit's import reads


def _list_endpoint(resource):
    """The list endpoint AWX's API root names for a top-level key of an export."""
    return "/api/v2/%s/" % ("inventories" if resource == "inventory" else resource)


def _page_class(natural_key_type):
    """The page class awxkit resolves a natural key of this type to (PageCache.get_by_natural_key)."""
    endpoint = getattr(awx_resources, natural_key_type, None)
    return None if endpoint is None else awx_page.get_registered_page(endpoint.replace(r"\d+", "1"))


def _natural_key_problems(where, key):
    if not isinstance(key, dict) or "type" not in key:
        return ["%s: natural_key without a type" % where]
    cls = _page_class(key["type"])
    if cls is None or not getattr(cls, "NATURAL_KEY", None):
        return ["%s: awxkit knows no natural key of type %r" % (where, key["type"])]
    if set(key) - {"type"} != set(cls.NATURAL_KEY):
        return ["%s: natural_key %s has %s, awxkit's %s has %s" % (
            where, key["type"], sorted(set(key) - {"type"}), cls.__name__, sorted(cls.NATURAL_KEY))]
    problems = []
    for field, value in key.items():
        if isinstance(value, dict):
            problems += _natural_key_problems("%s.%s" % (where, field), value)
    return problems


def _references(asset):
    """Natural keys the asset points at (foreign keys and nested references), as awxkit resolves them on import."""
    for field, value in asset.items():
        if field not in ("natural_key", "related") and isinstance(value, dict) and "type" in value:
            yield field, value
    for field, value in asset.get("natural_key", {}).items():
        if isinstance(value, dict):
            yield "natural_key." + field, value


def awxkit_problems(assets):
    """What awxkit's ApiV2.import_assets would stumble over: keys it does not import, natural keys that do not match
    its page classes, nested relations it does not create, references to objects the export does not define."""
    problems, defined, objects = [], {}, []

    def define(where, asset):
        key = asset.get("natural_key")
        problems.extend(_natural_key_problems(where, key))
        if key and awx_utils.freeze(key) in defined:
            problems.append("%s: natural_key %s defined twice" % (where, key))
        defined[awx_utils.freeze(key)] = where
        objects.append((where, asset))

    for resource, items in assets.items():
        if resource not in awx_api.EXPORTABLE_RESOURCES:
            problems.append("%s: not one of awxkit's EXPORTABLE_RESOURCES" % resource)
            continue
        item_class = awx_page.get_registered_page(_list_endpoint(resource))(connection=object()).__item_class__
        for index, asset in enumerate(items):
            where = "%s[%d]" % (resource, index)
            define(where, asset)
            key_type = (asset.get("natural_key") or {}).get("type")
            if _page_class(key_type) is not item_class:
                problems.append("%s: natural_key type %r is not a %s" % (where, key_type, item_class.__name__))
            for name, related in asset.get("related", {}).items():
                problems += _related_problems("%s.related.%s" % (where, name), item_class, name, related, define,
                                              objects)
    for where, asset in objects:
        for field, reference in _references(asset):
            if awx_utils.freeze(reference) not in defined:
                problems.append("%s.%s: refers to %s, which the export does not define" % (where, field, reference))
    return problems


def _related_problems(where, item_class, name, related, define, objects):
    """A nested list is either created with its parent (DEPENDENT_EXPORT: full objects) or attached to it by natural
    key (EXPORTABLE_RELATIONS); awxkit ignores anything else."""
    rel_class = awx_page.get_registered_page(item_class.endpoint.replace(r"\d+", "1") + name + "/")
    rel_item = rel_class(connection=object()).__item_class__
    dependent = (item_class.__name__, rel_item.__name__) in awx_api.DEPENDENT_EXPORT
    if not dependent and rel_class.__name__ not in awx_api.EXPORTABLE_RELATIONS:
        return ["%s: awxkit neither creates nor attaches %s" % (where, rel_class.__name__)]
    problems = []
    for position, child in enumerate(related if isinstance(related, list) else []):
        if dependent:
            define("%s[%d]" % (where, position), child)
        else:
            problems += _natural_key_problems("%s[%d]" % (where, position), child)
            objects.append(("%s[%d]" % (where, position), {"reference": child}))
    return problems


# ---------------------------------------------------------------- credential types: AWX's rules and ours

# Fields whose value is a secret whatever credential type they belong to.
SECRET_WORDS = ("password", "key", "token", "secret", "url")


def role_variables():
    """Every public variable the collection's roles document in meta/argument_specs.yml."""
    names = set()
    for path in glob.glob(os.path.join(ROOT, "roles", "*", "meta", "argument_specs.yml")):
        with open(path, encoding="utf-8") as handle:
            for spec in yaml.safe_load(handle)["argument_specs"].values():
                names.update(spec.get("options", {}))
    return names


def credential_type_problems(assets):
    problems = []
    documented = role_variables()
    for index, ctype in enumerate(assets.get("credential_types", [])):
        where = "credential_types[%d] %s" % (index, ctype.get("name"))
        problems += ["%s: %s" % (where, error) for error in credential_type_errors(ctype)]
        for field in ctype.get("inputs", {}).get("fields", []):
            if any(word in str(field.get("id")) for word in SECRET_WORDS) and field.get("secret") is not True:
                problems.append("%s: field %s holds a secret but is not secret: true" % (where, field.get("id")))
        for name in ctype.get("injectors", {}).get("extra_vars", {}):
            if name not in documented:
                problems.append("%s: injects %s, which no role of the collection reads" % (where, name))
    return problems


# ---------------------------------------------------------------- what a playbook reads

_JINJA = re.compile(r"{{(.*?)}}|{%(.*?)%}", re.S)
_STRING = re.compile(r"'[^']*'|\"[^\"]*\"")
_NAME_RE = re.compile(r"(?<![.\w])([A-Za-z_]\w*)")
_CONDITIONS = {"when", "that", "failed_when", "changed_when", "until"}


def _expressions(node, key=None):
    if isinstance(node, dict):
        for name, value in node.items():
            yield from _expressions(value, name)
    elif isinstance(node, list):
        for value in node:
            yield from _expressions(value, key)
    elif isinstance(node, str):
        if key in _CONDITIONS:
            yield node
        for match in _JINJA.finditer(node):
            yield match.group(1) or match.group(2)
    elif isinstance(node, bool) and key in _CONDITIONS:
        return


def _yaml(path):
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def _roles_named(node):
    if isinstance(node, dict):
        for name, value in node.items():
            if name == "roles":
                for role in value:
                    yield role if isinstance(role, str) else role.get("role", role.get("name"))
            elif name.endswith(("include_role", "import_role")) and isinstance(value, dict):
                yield value.get("name")
            else:
                yield from _roles_named(value)
    elif isinstance(node, list):
        for value in node:
            yield from _roles_named(value)


def _files_of(playbook):
    """The playbook, the playbooks it imports and every YAML file of the roles they use (and those roles use)."""
    files, roles, pending = [], set(), [os.path.join(ROOT, playbook)]
    while pending:
        path = pending.pop()
        if path in files or not os.path.exists(path):
            continue
        files.append(path)
        data = _yaml(path)
        for item in data if isinstance(data, list) else []:
            target = item.get("ansible.builtin.import_playbook") or item.get("import_playbook")
            if target:
                pending.append(os.path.join(os.path.dirname(path), target))
        for role in filter(None, _roles_named(data)):
            name = role.split(".")[-1]
            if name not in roles:
                roles.add(name)
                pending += glob.glob(os.path.join(ROOT, "roles", name, "**", "*.yml"), recursive=True)
    return files


@functools.cache
def variables_read(playbook):
    """Names in the expressions of the playbook's files, and the operator's texts christmas_incident's action reads
    untemplated where a file records an incident."""
    names = set()
    for path in _files_of(playbook):
        for expression in _expressions(_yaml(path)):
            names.update(_NAME_RE.findall(_STRING.sub("", expression)))
        with open(path, encoding="utf-8") as handle:
            if "christmas.recovery.christmas_incident:" in handle.read():
                names.update(OPERATOR_TEXTS.values())
    return names


# ---------------------------------------------------------------- the job templates


def job_template_problems(assets):
    problems = []
    for index, template in enumerate(assets.get("job_templates", [])):
        where = "job_templates[%d] %s" % (index, template.get("name"))
        playbook = template.get("playbook", "")
        present = playbook.startswith("playbooks/") and os.path.isfile(os.path.join(ROOT, playbook))
        if not present:
            problems.append("%s: playbook %s is not in the repository" % (where, playbook))
        spec = template.get("related", {}).get("survey_spec")
        if bool(spec) != bool(template.get("survey_enabled")):
            problems.append("%s: survey_enabled is %s but the survey is %s" % (
                where, template.get("survey_enabled"), "there" if spec else "missing"))
        if spec:
            problems += ["%s: %s" % (where, error) for error in survey_problems(spec, playbook if present else None)]
        for schedule in template.get("related", {}).get("schedules", []):
            problems += ["%s schedule %s: %s" % (where, schedule.get("name"), error)
                         for error in schedule_problems(template, schedule)]
        if template.get("project") != assets.get("projects", [{}])[0].get("natural_key"):
            problems.append("%s: not this repository's project" % where)
    return problems


def survey_problems(spec, playbook):
    """AWX's survey rules; a required text answer may not be empty; every variable is one the playbook reads."""
    problems = survey_spec_errors(spec)
    read = variables_read(playbook) if playbook else None
    for question in spec.get("spec", []):
        variable = question.get("variable")
        if question.get("required") and question.get("type") in ("text", "textarea") \
                and question.get("min", 0) < 1 and question.get("default") == "":
            problems.append("%s is required but accepts an empty answer (min 0)" % variable)
        if read is not None and variable not in read:
            problems.append("the survey sets %s, which %s does not read" % (variable, playbook))
    return problems


def schedule_problems(template, schedule):
    problems = rrule_errors(schedule.get("rrule", ""))
    asked = {q["variable"] for q in template.get("related", {}).get("survey_spec", {}).get("spec", [])}
    problems += ["extra_data %s is neither a survey question nor prompted" % name
                 for name in schedule.get("extra_data") or {}
                 if name not in asked and not template.get("ask_variables_on_launch")]
    if schedule.get("unified_job_template") != template.get("natural_key"):
        problems.append("unified_job_template is not its job template")
    return problems


def all_problems(assets):
    return (awxkit_problems(assets) + credential_type_problems(assets) + job_template_problems(assets))


# ---------------------------------------------------------------- tests


def test_assets_have_no_problem():
    assert all_problems(load_assets()) == []


def test_assets_hold_what_the_runbook_schedules_and_restores():
    assets = load_assets()
    templates = {t["playbook"]: t for t in assets["job_templates"]}
    assert sorted(templates) == sorted(
        "playbooks/%s.yml" % name for name in ("backup", "verify_backup", "rehearse", "dr_drill", "restore_db",
                                               "restore_redis", "restore_config", "restore_full", "offsite",
                                               "incidents"))
    for name in ("restore_db", "restore_redis", "restore_config", "restore_full"):
        restore = templates["playbooks/%s.yml" % name]
        assert restore["ask_limit_on_launch"] and restore["ask_job_type_on_launch"]
        questions = {q["variable"]: q for q in restore["related"]["survey_spec"]["spec"]}
        assert questions["confirm"]["required"] and questions["confirm"]["default"] == ""
        assert questions["manifest"]["default"] == "latest"
        assert {"incident_type", "incident_symptoms", "incident_impact"} <= set(questions)
    components = {q["variable"]: q for q in templates["playbooks/restore_full.yml"]["related"]["survey_spec"]["spec"]}
    assert components["components"]["type"] == "multiselect"
    assert choices_of(components["components"]) == ["db", "redis", "config"]
    scenario = templates["playbooks/dr_drill.yml"]["related"]["survey_spec"]["spec"][0]
    assert scenario["type"] == "multiplechoice" and scenario["variable"] == "scenario"
    secret_fields = {(t["name"], f["id"]) for t in assets["credential_types"] for f in t["inputs"]["fields"]
                     if f.get("secret")}
    assert {("Christmas platform database", "password"), ("Christmas Redis", "password"),
            ("Christmas backup encryption key", "key")} <= secret_fields


BERLIN = ZoneInfo("Europe/Berlin")


@pytest.mark.parametrize("playbook, after, expected", [
    # Daily at 03:00 local time, also across the switch to winter time (2027-10-31).
    ("playbooks/backup.yml", datetime.datetime(2027, 10, 29, 12, 0, tzinfo=BERLIN),
     ["2027-10-30 03:00 CEST", "2027-10-31 03:00 CET", "2027-11-01 03:00 CET"]),
    ("playbooks/rehearse.yml", datetime.datetime(2026, 12, 1, tzinfo=BERLIN),
     ["2026-12-06 05:00 CET", "2026-12-13 05:00 CET", "2026-12-20 05:00 CET"]),
    # The first Tuesday of each month.
    ("playbooks/dr_drill.yml", datetime.datetime(2026, 12, 2, tzinfo=BERLIN),
     ["2027-01-05 10:00 CET", "2027-02-02 10:00 CET", "2027-03-02 10:00 CET"]),
])
def test_schedules_run_at_the_intended_times(playbook, after, expected):
    template = next(t for t in load_assets()["job_templates"] if t["playbook"] == playbook)
    (schedule,) = template["related"]["schedules"]
    rule = parse_rrule(schedule["rrule"])
    runs, moment = [], after
    for _ in expected:
        moment = rule.after(moment)
        runs.append(moment.strftime("%Y-%m-%d %H:%M %Z"))
    assert runs == expected


def test_the_drill_schedule_waits_until_an_operator_enables_it():
    templates = load_assets()["job_templates"]
    enabled = {t["playbook"]: [s["enabled"] for s in t["related"]["schedules"]] for t in templates}
    assert enabled["playbooks/dr_drill.yml"] == [False]
    assert enabled["playbooks/backup.yml"] == enabled["playbooks/rehearse.yml"] == [True]


def _template(assets, playbook):
    return next(t for t in assets["job_templates"] if t["playbook"] == playbook)


def _question(assets, playbook, variable):
    return next(q for q in _template(assets, playbook)["related"]["survey_spec"]["spec"] if q["variable"] == variable)


def _schedule(assets, playbook="playbooks/backup.yml"):
    return _template(assets, playbook)["related"]["schedules"][0]


def _db_type(assets):
    return next(t for t in assets["credential_types"] if t["name"] == "Christmas platform database")


BREAKAGES = {
    "unknown playbook": (lambda a: _template(a, "playbooks/backup.yml").update(playbook="playbooks/nightly.yml"),
                         "playbook playbooks/nightly.yml is not in the repository"),
    "playbook outside playbooks/": (lambda a: _template(a, "playbooks/backup.yml").update(playbook="../site.yml"),
                                    "playbook ../site.yml is not in the repository"),
    "rrule without INTERVAL": (lambda a: _schedule(a).update(rrule="DTSTART;TZID=Europe/Berlin:20261127T030000 "
                                                                   "RRULE:FREQ=DAILY"), "INTERVAL required"),
    "naive DTSTART": (lambda a: _schedule(a).update(rrule="DTSTART:20261127T030000 RRULE:FREQ=DAILY;INTERVAL=1"),
                      "DTSTART is a naive time"),
    "rrule dateutil rejects": (lambda a: _schedule(a).update(
        rrule="DTSTART;TZID=Europe/Berlin:20261127T030000 RRULE:FREQ=DAYLY;INTERVAL=1"), "dateutil cannot parse"),
    "COUNT over 999": (lambda a: _schedule(a).update(
        rrule="DTSTART;TZID=Europe/Berlin:20261127T030000 RRULE:FREQ=DAILY;INTERVAL=1;COUNT=1000"), "COUNT > 999"),
    "BYDAY with a number": (lambda a: _schedule(a, "playbooks/dr_drill.yml").update(
        rrule="DTSTART;TZID=Europe/Berlin:20261201T100000 RRULE:FREQ=MONTHLY;INTERVAL=1;BYDAY=1TU"),
        "BYDAY with a numeric prefix"),
    "no DTSTART": (lambda a: _schedule(a).update(rrule="RRULE:FREQ=DAILY;INTERVAL=1"), "no valid DTSTART"),
    "schedule answers no question": (lambda a: _schedule(a).update(extra_data={"skip_db": True}),
                                     "extra_data skip_db is neither a survey question nor prompted"),
    "survey sets what nothing reads": (
        lambda a: _question(a, "playbooks/restore_db.yml", "incident_type").update(variable="incident_kind"),
        "the survey sets incident_kind, which playbooks/restore_db.yml does not read"),
    "components on a playbook that ignores them": (
        lambda a: _template(a, "playbooks/restore_db.yml")["related"]["survey_spec"]["spec"].append(
            copy.deepcopy(_question(a, "playbooks/restore_full.yml", "components"))),
        "the survey sets components, which playbooks/restore_db.yml does not read"),
    "default not a choice": (lambda a: _question(a, "playbooks/dr_drill.yml", "scenario").update(default="flood"),
                             "default 'flood' not among the choices"),
    "multiselect default not a choice": (
        lambda a: _question(a, "playbooks/restore_full.yml", "components").update(default="db\nfiles"),
        "not among the choices"),
    "multiplechoice with two defaults": (
        lambda a: _question(a, "playbooks/dr_drill.yml", "scenario").update(default="db_stop\napp_kill"),
        "multiplechoice with more than one default"),
    "choices missing": (lambda a: _question(a, "playbooks/dr_drill.yml", "scenario").update(choices=""),
                        "multiplechoice without choices"),
    "unknown question type": (lambda a: _question(a, "playbooks/restore_db.yml", "manifest").update(type="string"),
                              "type 'string' is not an AWX question type"),
    "integer default is text": (lambda a: _question(a, "playbooks/incidents.yml", "limit").update(default="20"),
                                "default '20' is not a integer"),
    "required not a boolean": (lambda a: _question(a, "playbooks/restore_db.yml", "confirm").update(required="yes"),
                               "required missing or not a bool"),
    "variable twice": (lambda a: _question(a, "playbooks/restore_db.yml", "incident_impact").update(
        variable="incident_type"), "variable incident_type repeats"),
    "confirm accepts an empty answer": (lambda a: _question(a, "playbooks/restore_db.yml", "confirm").update(min=0),
                                        "confirm is required but accepts an empty answer"),
    "survey disabled": (lambda a: _template(a, "playbooks/restore_db.yml").update(survey_enabled=False),
                        "survey_enabled is False but the survey is there"),
    "injector names an undefined field": (
        lambda a: _db_type(a)["injectors"]["extra_vars"].update(christmas_db_password="{{ passwd }}"),
        "injector extra_vars.christmas_db_password: 'passwd' is undefined"),
    "injector a role does not read": (
        lambda a: _db_type(a)["injectors"]["extra_vars"].update(christmas_db_pass="{{ password }}"),
        "injects christmas_db_pass, which no role of the collection reads"),
    "password not secret": (lambda a: _db_type(a)["inputs"]["fields"][3].pop("secret"),
                            "field password holds a secret but is not secret: true"),
    "integer input field": (lambda a: _db_type(a)["inputs"]["fields"][1].update(type="integer"),
                            "inputs fields/1/type"),
    "required field undefined": (lambda a: _db_type(a)["inputs"]["required"].append("database"),
                                 "required names an undefined field database"),
    "injector env is ANSIBLE-incompatible": (lambda a: _db_type(a)["injectors"].update(argv={"x": "y"}),
                                             "injectors : Additional properties are not allowed"),
    "natural key of the wrong shape": (
        lambda a: _template(a, "playbooks/backup.yml")["natural_key"].pop("organization"),
        "natural_key job_template has ['name'], awxkit's JobTemplate has"),
    "natural key type unknown": (lambda a: a["projects"][0]["natural_key"].update(type="repository"),
                                 "awxkit knows no natural key of type 'repository'"),
    "reference to a missing object": (
        lambda a: _template(a, "playbooks/backup.yml").update(
            inventory={"organization": {"name": "Christmas", "type": "organization"}, "name": "Prod",
                       "type": "inventory"}), "refers to"),
    "unknown top-level key": (lambda a: a.update(playbooks=[]), "playbooks: not one of awxkit's EXPORTABLE_RESOURCES"),
    "job template twice": (lambda a: a["job_templates"].append(copy.deepcopy(a["job_templates"][0])),
                           "defined twice"),
}


@pytest.mark.parametrize("name", sorted(BREAKAGES))
def test_a_broken_asset_is_caught(name):
    break_it, expected = BREAKAGES[name]
    assets = copy.deepcopy(load_assets())
    break_it(assets)
    problems = all_problems(assets)
    assert any(expected in problem for problem in problems), problems


# ---------------------------------------------------------------- awxkit's own import, against a stand-in AWX


def repository_playbooks():
    """What a project update of this repository offers a job template."""
    return [os.path.relpath(path, ROOT) for path in glob.glob(os.path.join(ROOT, "playbooks", "**", "*.yml"),
                                                                recursive=True)]


def awx_import(assets, standin=None, playbooks=()):
    """Run awxkit's ApiV2.import_assets (what `awx import` runs) against the stand-in; return it and whether the
    import failed (awxkit logs most refusals and goes on; a refused survey ends it with an exception)."""
    standin = standin or AwxStandIn(repository_playbooks() + list(playbooks))
    v2 = ApiV2(connection=standin, endpoint="/api/v2/").get()
    try:
        v2.import_assets(copy.deepcopy(assets))
    except awx_exceptions.Common:
        return standin, True
    return standin, getattr(v2, "_has_error", False)


def test_awx_import_creates_every_asset_and_a_second_import_duplicates_nothing():
    assets = load_assets()
    standin, failed = awx_import(assets)
    assert standin.refusals == [] and not failed

    (project,) = standin.objects["projects"].values()
    (inventory,) = standin.objects["inventories"].values()
    assert {group["name"] for group in standin.find("groups", inventory=inventory["id"])} == {
        "christmas", "christmas_vault"}
    for ctype in assets["credential_types"]:
        (created,) = standin.find("credential_types", name=ctype["name"], kind="cloud")
        assert (created["inputs"], created["injectors"]) == (ctype["inputs"], ctype["injectors"])
    assert len(standin.objects["job_templates"]) == len(assets["job_templates"])
    for template in assets["job_templates"]:
        (created,) = standin.find("job_templates", name=template["name"])
        assert (created["project"], created["inventory"]) == (project["id"], inventory["id"])
        assert created["playbook"] == template["playbook"]
        assert standin.surveys.get(created["id"]) == template["related"].get("survey_spec")
        schedules = standin.find("schedules", unified_job_template=created["id"])
        assert sorted((s["name"], s["rrule"], s["enabled"], s["extra_data"]) for s in schedules) == sorted(
            (s["name"], s["rrule"], s["enabled"], s["extra_data"]) for s in template["related"]["schedules"])

    counts = {name: sorted(items) for name, items in standin.objects.items()}
    _, failed = awx_import(assets, standin)
    assert standin.refusals == [] and not failed
    assert {name: sorted(items) for name, items in standin.objects.items()} == counts


def test_every_field_of_every_asset_reaches_awx():
    """awxkit posts only the fields AWX's OPTIONS lists and silently drops the others: a misspelt one would be lost."""
    assets = load_assets()
    objects = [("organizations", a) for a in assets["organizations"]]
    objects += [("credential_types", a) for a in assets["credential_types"]]
    objects += [("projects", a) for a in assets["projects"]]
    objects += [("inventories", a) for a in assets["inventory"]]
    objects += [("groups", g) for a in assets["inventory"] for g in a["related"]["groups"]]
    objects += [("job_templates", a) for a in assets["job_templates"]]
    objects += [("schedules", s) for a in assets["job_templates"] for s in a["related"]["schedules"]]
    dropped = {(collection, asset["name"]): sorted(set(asset) - set(FIELDS[collection]) - {"natural_key", "related"})
               for collection, asset in objects}
    assert {key: value for key, value in dropped.items() if value} == {}


def _move_schedules_before_the_survey(assets):
    related = _template(assets, "playbooks/dr_drill.yml")["related"]
    survey = related.pop("survey_spec")
    related["survey_spec"] = survey


IMPORT_BREAKAGES = {
    "a schedule's answer posted before the survey exists": (
        _move_schedules_before_the_survey, "Variables scenario provided, but this template cannot accept variables"),
    "a playbook the project lacks": (
        lambda a: _template(a, "playbooks/backup.yml").update(playbook="playbooks/nightly.yml"),
        "Playbook not found for project"),
    "an RRULE AWX refuses": (
        lambda a: _schedule(a).update(rrule="DTSTART:20261127T030000 RRULE:FREQ=DAILY;INTERVAL=1"),
        "DTSTART is a naive time"),
    "a survey AWX refuses": (
        lambda a: _question(a, "playbooks/restore_full.yml", "components").update(default="db\nfiles"),
        "not among the choices"),
    "a credential type AWX refuses": (
        lambda a: _db_type(a)["injectors"]["extra_vars"].update(christmas_db_password="{{ passwd }}"),
        "'passwd' is undefined"),
    "a project the export does not define": (
        lambda a: _template(a, "playbooks/backup.yml").update(project=dict(a["projects"][0]["natural_key"],
                                                                            name="elsewhere")),
        "Job Templates must have a project assigned"),
    "a schedule setting a value the template does not prompt for": (
        lambda a: _schedule(a).update(limit="trading-01"), "Field is not configured to prompt on launch"),
}


@pytest.mark.parametrize("name", sorted(IMPORT_BREAKAGES))
def test_awx_import_of_a_broken_asset_fails(name):
    break_it, expected = IMPORT_BREAKAGES[name]
    assets = copy.deepcopy(load_assets())
    # Only the breakage fails the import: the project offers every playbook the intact assets name.
    playbooks = [template["playbook"] for template in assets["job_templates"]]
    break_it(assets)
    standin, failed = awx_import(assets, playbooks=playbooks)
    assert failed
    assert any(expected in json.dumps(errors) for _method, _path, errors in standin.refusals), standin.refusals

"""A stand-in of AWX's REST API (/api/v2/), in memory, for awxkit's own import code (ApiV2.import_assets, what
`awx import` runs): the endpoints it calls, each object with the POST fields AWX 24's OPTIONS lists, and AWX's
validation of what it creates (required fields, foreign keys, unique names, a job template's playbook among its
project's, credential types, surveys, schedules and the variables a schedule may set). A refusal is answered as AWX
answers it (400 with the field's error), which awxkit logs and remembers in _has_error."""

from __future__ import annotations

import datetime
import itertools
import json
from urllib.parse import urlencode

import requests
from awx_rules import credential_type_errors, rrule_errors, survey_spec_errors

_S, _B, _I, _J, _ID, _C = "string", "boolean", "integer", "json", "id", "choice"


def _fields(required=(), **types):
    return {name: {"type": kind, "required": name in required} for name, kind in types.items()}


# The POST fields of each collection (AWX 24.6 OPTIONS), and the collection a foreign key points into.
FIELDS = {
    "organizations": _fields(("name",), name=_S, description=_S, max_hosts=_I, default_environment=_ID),
    "credential_types": _fields(("name", "kind"), name=_S, description=_S, kind=_C, inputs=_J, injectors=_J),
    "projects": _fields(
        ("name", "organization"), name=_S, description=_S, local_path=_S, scm_type=_C, scm_url=_S, scm_branch=_S,
        scm_refspec=_S, scm_clean=_B, scm_track_submodules=_B, scm_delete_on_update=_B, credential=_ID, timeout=_I,
        scm_update_on_launch=_B, scm_update_cache_timeout=_I, allow_override=_B, default_environment=_ID,
        signature_validation_credential=_ID, organization=_ID),
    "inventories": _fields(("name", "organization"), name=_S, description=_S, organization=_ID, kind=_C,
                           host_filter=_S, variables=_J, prevent_instance_group_fallback=_B),
    "groups": _fields(("name", "inventory"), name=_S, description=_S, inventory=_ID, variables=_J),
    "hosts": _fields(("name", "inventory"), name=_S, description=_S, inventory=_ID, enabled=_B, instance_id=_S,
                     variables=_J),
    "job_templates": _fields(
        ("name", "playbook"), name=_S, description=_S, job_type=_C, inventory=_ID, project=_ID, playbook=_S,
        scm_branch=_S, forks=_I, limit=_S, verbosity=_C, extra_vars=_J, job_tags=_S, force_handlers=_B,
        skip_tags=_S, start_at_task=_S, timeout=_I, use_fact_cache=_B, execution_environment=_ID,
        host_config_key=_S, ask_scm_branch_on_launch=_B, ask_diff_mode_on_launch=_B, ask_variables_on_launch=_B,
        ask_limit_on_launch=_B, ask_tags_on_launch=_B, ask_skip_tags_on_launch=_B, ask_job_type_on_launch=_B,
        ask_verbosity_on_launch=_B, ask_inventory_on_launch=_B, ask_credential_on_launch=_B,
        ask_execution_environment_on_launch=_B, ask_labels_on_launch=_B, ask_forks_on_launch=_B,
        ask_job_slice_count_on_launch=_B, ask_timeout_on_launch=_B, ask_instance_groups_on_launch=_B,
        survey_enabled=_B, become_enabled=_B, diff_mode=_B, allow_simultaneous=_B, job_slice_count=_I,
        webhook_service=_C, webhook_credential=_ID, prevent_instance_group_fallback=_B),
    "schedules": _fields(
        ("name", "rrule", "unified_job_template"), rrule=_S, name=_S, description=_S, extra_data=_J, inventory=_ID,
        scm_branch=_S, job_type=_C, job_tags=_S, skip_tags=_S, limit=_S, diff_mode=_B, verbosity=_C,
        execution_environment=_ID, forks=_I, job_slice_count=_I, timeout=_I, unified_job_template=_ID, enabled=_B),
}
FOREIGN = {"organization": "organizations", "project": "projects", "inventory": "inventories",
           "unified_job_template": "job_templates", "credential": "credentials", "webhook_credential": "credentials",
           "signature_validation_credential": "credentials", "default_environment": "execution_environments",
           "execution_environment": "execution_environments"}
TYPES = {"organizations": "organization", "credential_types": "credential_type", "projects": "project",
         "inventories": "inventory", "groups": "group", "hosts": "host", "job_templates": "job_template",
         "schedules": "schedule"}
# Sub-collections: where they are posted from their parent, and the parent's foreign key in them.
CHILDREN = {("job_templates", "schedules"): "unified_job_template", ("inventories", "groups"): "inventory",
            ("inventories", "hosts"): "inventory", ("groups", "hosts"): None, ("groups", "children"): None}
RELATED = {"inventories": ("groups", "hosts", "labels"), "groups": ("hosts", "children"),
           "job_templates": ("schedules", "survey_spec", "labels", "credentials")}
# What must be unique, besides the id.
UNIQUE = {"organizations": ("name",), "credential_types": ("name", "kind"), "projects": ("organization", "name"),
          "inventories": ("organization", "name"), "groups": ("inventory", "name"), "hosts": ("inventory", "name"),
          "job_templates": ("organization", "name"), "schedules": ("unified_job_template", "name")}
# The prompts a schedule may set instead of the job template's own values (JobTemplate.get_ask_mapping).
PROMPTS = {name: "ask_%s_on_launch" % name for name in (
    "inventory", "scm_branch", "job_type", "limit", "diff_mode", "verbosity", "execution_environment", "forks",
    "job_slice_count", "timeout")}
PROMPTS.update(job_tags="ask_tags_on_launch", skip_tags="ask_skip_tags_on_launch")


# What AWX 24's API root lists (awxkit orders the import by the classes behind them).
ROOT = ("ping", "instances", "instance_groups", "config", "settings", "me", "dashboard", "organizations", "users",
        "execution_environments", "projects", "project_updates", "teams", "credentials", "credential_types",
        "credential_input_sources", "applications", "tokens", "metrics", "inventory", "inventory_sources",
        "inventory_updates", "groups", "hosts", "job_templates", "jobs", "ad_hoc_commands", "system_job_templates",
        "system_jobs", "schedules", "roles", "notification_templates", "notifications", "labels",
        "unified_job_templates", "unified_jobs", "activity_stream", "workflow_job_templates", "workflow_jobs",
        "workflow_approvals", "workflow_job_template_nodes", "workflow_job_nodes")


class Refused(Exception):
    def __init__(self, errors):
        super().__init__(errors)
        self.errors = errors


class AwxStandIn:
    """Answers awxkit's Connection calls (get, options, post, put, patch) from memory. ``playbooks`` are what a
    project update of the project would find."""

    def __init__(self, playbooks):
        self.playbooks = sorted(playbooks)
        self.objects = {name: {} for name in FIELDS}
        self.surveys = {}
        self.refusals = []
        self._ids = itertools.count(1)

    # ---------------------------------------------------------------- awxkit's Connection interface

    def get(self, relative_endpoint, query_parameters=None, headers=None):
        return self._answer("get", relative_endpoint, query_parameters or {})

    def options(self, relative_endpoint):
        return self._answer("options", relative_endpoint)

    def post(self, relative_endpoint, json=None, data=None, headers=None):  # noqa: A002 - awxkit's signature
        return self._answer("post", relative_endpoint, body=json)

    def put(self, relative_endpoint, json):  # noqa: A002
        return self._answer("put", relative_endpoint, body=json)

    def patch(self, relative_endpoint, json):  # noqa: A002
        return self._answer("patch", relative_endpoint, body=json)

    def delete(self, relative_endpoint):
        return self._response("delete", relative_endpoint, 405, {"detail": "not in the stand-in"})

    # ---------------------------------------------------------------- routing

    def _answer(self, method, path, query=None, body=None):
        parts = path.strip("/").split("/")[2:]  # after api/v2
        try:
            if not parts:
                return self._response(method, path, 200, {
                    name: "/api/v2/%s/" % ("inventories" if name == "inventory" else name) for name in ROOT})
            collection = parts[0]
            if len(parts) == 1:
                return self._collection(method, path, collection, query, body, parent=None)
            if len(parts) == 2:
                return self._detail(method, path, collection, int(parts[1]), body)
            parent = (collection, int(parts[1]))
            self._get_object(*parent)
            if parts[2] == "survey_spec":
                return self._survey(method, path, parent[1], body)
            return self._collection(method, path, parts[2], query, body, parent=parent)
        except Refused as refused:
            self.refusals.append((method.upper(), path, refused.errors))
            return self._response(method, path, 400, refused.errors)

    def _collection(self, method, path, collection, query, body, parent):
        fields = FIELDS.get(collection, {})
        if method == "options":
            return self._response(method, path, 200, {"actions": {"POST": fields}, "search_fields": ["name"]},
                                  {"Allow": "GET, POST, HEAD, OPTIONS"})
        items = list(self.objects.get(collection, {}).values())
        if parent:
            key = CHILDREN.get((parent[0], collection))
            items = [item for item in items if key and item[key] == parent[1]]
        if method == "get":
            for name, value in query.items():
                items = [item for item in items if str(item.get(name)) == str(value)]
            results = [self._render(collection, item) for item in items]
            return self._response(method, path + ("?" + urlencode(query) if query else ""), 200,
                                  {"count": len(results), "next": None, "previous": None, "results": results})
        if method == "post":
            if collection not in FIELDS:
                raise Refused({"detail": "the stand-in does not create %s" % collection})
            values = dict(body or {})
            if parent:
                values[CHILDREN[(parent[0], collection)]] = parent[1]
            item = self._validate(collection, None, values)
            item["id"] = next(self._ids)
            self.objects[collection][item["id"]] = item
            return self._response(method, path, 201, self._render(collection, item))
        raise Refused({"detail": "method %s not allowed" % method})

    def _detail(self, method, path, collection, ident, body):
        item = self._get_object(collection, ident)
        if method == "options":
            return self._response(method, path, 200, {"actions": {"PUT": FIELDS[collection]}},
                                  {"Allow": "GET, PUT, PATCH, DELETE, HEAD, OPTIONS"})
        if method in ("put", "patch"):
            values = dict(item, **(body or {})) if method == "patch" else dict(body or {})
            updated = self._validate(collection, ident, values)
            updated["id"] = ident
            self.objects[collection][ident] = item = updated
        return self._response(method, path, 200, self._render(collection, item))

    def _survey(self, method, path, ident, body):
        if method == "options":
            return self._response(method, path, 200, {"actions": {}}, {"Allow": "GET, POST, DELETE, HEAD, OPTIONS"})
        if method == "post":
            errors = survey_spec_errors(body or {})
            if errors:
                raise Refused({"error": errors[0]})
            self.surveys[ident] = body
            return self._response(method, path, 200)
        return self._response(method, path, 200, self.surveys.get(ident, {}))

    # ---------------------------------------------------------------- objects

    def _get_object(self, collection, ident):
        try:
            return self.objects[collection][ident]
        except KeyError:
            raise Refused({"detail": "Not found."}) from None

    def _validate(self, collection, ident, values):
        fields = FIELDS[collection]
        item, errors = {}, {}
        for name, spec in fields.items():
            value = values.get(name)
            if spec["required"] and value in (None, ""):
                errors[name] = ["This field is required."]
            elif spec["type"] == "id" and value is not None and value not in self.objects.get(FOREIGN[name], {}):
                errors[name] = ["Invalid pk \"%s\" - object does not exist." % value]
            item[name] = value
        if errors:
            raise Refused(errors)
        for other_id, other in self.objects[collection].items():
            if other_id != ident and all(other.get(k) == item.get(k) for k in UNIQUE[collection]):
                raise Refused({"__all__": ["%s with this %s already exists." % (
                    TYPES[collection], " and ".join(UNIQUE[collection]))]})
        check = getattr(self, "_check_" + collection, None)
        if check:
            check(ident, item)
        return item

    def _check_credential_types(self, _ident, item):
        errors = credential_type_errors(item)
        if errors:
            raise Refused({"inputs": errors})

    def _check_job_templates(self, _ident, item):
        if item["project"] is None:
            raise Refused({"project": ["Job Templates must have a project assigned."]})
        if item["inventory"] is None and not item["ask_inventory_on_launch"]:
            raise Refused({"inventory": ["Job Template must provide 'inventory' or allow prompting for it."]})
        if item["playbook"] not in self.playbooks:
            raise Refused({"playbook": ["Playbook not found for project."]})
        project = self.objects["projects"][item["project"]]
        item["organization"] = project["organization"]

    def _check_schedules(self, _ident, item):
        errors = rrule_errors(item["rrule"])
        if errors:
            raise Refused({"rrule": errors})
        template = self.objects["job_templates"][item["unified_job_template"]]
        survey = self.surveys.get(template["id"]) if template["survey_enabled"] else None
        allowed = {question["variable"] for question in (survey or {}).get("spec", [])}
        extra = set(item["extra_data"] or {})
        if extra - allowed and not template["ask_variables_on_launch"]:
            raise Refused({"extra_data": ["Variables %s provided, but this template cannot accept variables." %
                                          ", ".join(sorted(extra - allowed))]})
        for name, ask in PROMPTS.items():
            if item.get(name) is not None and not template[ask]:
                raise Refused({name: ["Field is not configured to prompt on launch."]})

    def _render(self, collection, item):
        data = dict(item, type=TYPES[collection], url="/api/v2/%s/%d/" % (collection, item["id"]))
        related = {}
        for name, value in item.items():
            if name in FOREIGN and value is not None:
                related[name] = "/api/v2/%s/%d/" % (FOREIGN[name], value)
        for name in RELATED.get(collection, ()):
            related[name] = "/api/v2/%s/%d/%s/" % (collection, item["id"], name)
        data["related"] = related
        if collection == "projects":
            data["status"] = "successful"
        return data

    @staticmethod
    def _response(method, path, status, body=None, headers=None):
        response = requests.Response()
        response.status_code = status
        response._content = b"" if body is None else json.dumps(body).encode()
        response.encoding = "utf-8"
        response.headers = requests.structures.CaseInsensitiveDict(headers or {})
        response.request = requests.Request(method.upper(), "http://awx.invalid" + path).prepare()
        response.elapsed = datetime.timedelta(0)
        return response

    # ---------------------------------------------------------------- for the tests

    def find(self, collection, **values):
        return [item for item in self.objects[collection].values()
                if all(item.get(k) == v for k, v in values.items())]


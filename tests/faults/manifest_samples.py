"""A schema-valid manifest of all three components, shaped like the ones make_backup_set writes, for tests that
need one without servers (its artifacts need not exist: manifest.load and check_schema do not read them)."""

from __future__ import annotations

import copy

from ansible_collections.christmas.recovery.plugins.module_utils.sets.manifest import FORMAT, FORMAT_VERSION

SET_ID = "20261124_030000"

_ARTIFACTS = [
    ("db.dump/3456.dat.gz", "db", "pg_dump_directory"),
    ("db.dump/toc.dat", "db", "pg_dump_directory"),
    ("db_globals.json", "db", "pg_globals"),
    ("redis.rdb", "redis", "redis_rdb"),
    ("config.tar", "config", "config_tar"),
]

_TEMPLATE = {
    "format": FORMAT, "format_version": FORMAT_VERSION, "set_id": SET_ID,
    "started_at": "2026-11-24T03:00:00Z", "finished_at": "2026-11-24T03:00:09Z", "host": "platform.example",
    "components": ["db", "redis", "config"],
    "tools": {"christmas.recovery": "0.1.0", "python": "3.11.7", "platform": "Linux-6.1-x86_64"},
    "db": {"server_version": "15.8", "server_version_num": 150008, "pg_dump_major": 15, "size_bytes": 8388608,
           "row_counts": {"public.orders": 700, "public.positions": 17},
           "extensions": {"plpgsql": {"version": "1.0", "schema": "pg_catalog"}},
           "roles": ["analyst", "christmas", "christmas_readers"]},
    "redis": {"version": "7.0.15", "aof_enabled": False, "rdb_version": 10, "keys_per_db_at_start": {"0": 9, "3": 300}},
    "config": {"source_dir": "/srv/christmas/config", "root_mode": "755", "root_owner": [0, 0],
               "entries": {"file": 4, "dir": 2, "link": 2}, "tree_sha256": "ab" * 32},
}


def valid_manifest(set_id=SET_ID):
    """A fresh, unsealed, schema-valid manifest dict for set ``set_id``."""
    data = copy.deepcopy(_TEMPLATE)
    data["set_id"] = set_id
    data["artifacts"] = [{"path": "set_%s/%s" % (set_id, name), "size": 3 + index, "sha256": "%064x" % index,
                          "component": component, "kind": kind}
                         for index, (name, component, kind) in enumerate(_ARTIFACTS)]
    return data


def leaf_paths(value, prefix=()):
    """Every key path (tuple of dict keys and list indexes) in ``value``, containers included, root excluded."""
    paths = []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        paths.append(prefix + (key,))
        paths.extend(leaf_paths(child, prefix + (key,)))
    return paths


def replaced(data, path, value):
    """A deep copy of ``data`` with the entry at ``path`` replaced by ``value`` (or removed when ``value`` is
    ``REMOVE``)."""
    data = copy.deepcopy(data)
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    if value is REMOVE:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return data


REMOVE = object()

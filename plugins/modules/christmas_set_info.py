#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: christmas_set_info
short_description: List the complete backup sets of a directory
description:
  - Lists the complete sets (those whose manifest exists) of a backup directory or vault directory, newest first,
    with what each manifest says. A manifest that cannot be read is listed with the problem.
  - Read-only; checksums are not checked (M(christmas.recovery.manifest_verify) does that).
  - Also reports the size and free space of the file system holding the directory (RV(filesystem)).
  - Given an encryption key, also returns its public fingerprint, to compare with the C(key_id) of encrypted sets
    before anything is copied.
  - Given an existing I(signing_key_file), also returns its public half (RV(signing_public_key)), for the hosts that
    check this host's sets without its private key (vaults, new hosts).
  - Given I(pitr_repo) and I(pitr_dir), also returns continuous protection's recoverable window per component
    (RV(window)), read from the repositories (the database's when the collection can stop and start it).
version_added: 0.1.0
author: Christmas platform operations
extends_documentation_fragment:
  - christmas.recovery.vault.encryption
  - christmas.recovery.pitr
  - christmas.recovery.s3.optional
options:
  db_port:
    description: The database's port, for a pgBackRest repository whose server is not running.
    type: int
    default: 5432
  pg_bin_dir:
    description: Directory of the PostgreSQL programs (default the PostgreSQL 15 one of Debian).
    type: path
  signing_key_file:
    description: The platform host's signing key; never created here. Its public half is returned when it exists.
    type: path
  backup_dir:
    description: The directory holding the sets. A missing directory gives an empty list.
    type: path
    required: true
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
"""

EXAMPLES = r"""
- name: What does the vault hold?
  christmas.recovery.christmas_set_info:
    backup_dir: /srv/christmas-vault/db1
  register: vault_sets
"""

RETURN = r"""
sets:
  description: One entry per complete set, newest first.
  returned: always
  type: list
  elements: dict
  sample: [{"set_id": "20261126_030000", "manifest": "/srv/christmas-vault/db1/manifest_20261126_030000.json",
            "components": ["db", "redis", "config"], "started_at": "2026-11-26T03:00:00Z", "host": "db1",
            "total_bytes": 52428800, "encrypted": true, "key_id": "3f9a0c1e22b4d5a6"}]
set_ids:
  description: The ids of the complete sets, newest first.
  returned: always
  type: list
  elements: str
latest:
  description: Id of the newest complete set, or null when there is none.
  returned: always
  type: str
filesystem:
  description:
    - The file system holding I(backup_dir) (or its nearest existing parent); C(free_bytes) as a writer that is not
      root sees it, C(free_percent) of C(size_bytes). For a free-space alert, and the C(disk_full) drill.
  returned: always
  type: dict
  sample: {"path": "/var/backups/christmas", "size_bytes": 107374182400, "free_bytes": 53687091200,
           "free_percent": 50.0}
key_id:
  description: Fingerprint of the given encryption key.
  returned: when a key is given
  type: str
signing_public_key:
  description: The public key (PEM) of I(signing_key_file).
  returned: when I(signing_key_file) is given and exists
  type: str
window:
  description:
    - The recoverable window of continuous protection. C(components) maps each component with something kept
      (C(db), C(redis), C(config)) to its C(start) and C(end) (UTC); C(problems) says why a component has none.
  returned: when I(pitr_repo) and I(pitr_dir) are given
  type: dict
  sample: {"components": {"db": {"start": "2026-12-06T03:00:12Z", "end": "2026-12-07T10:59:01Z"}},
           "text": "db 2026-12-06T03:00:12Z .. 2026-12-07T10:59:01Z", "problems": {}}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.christmas.recovery.plugins.module_utils.core.fsutil import filesystem_usage
from ansible_collections.christmas.recovery.plugins.module_utils.core.module_runner import run
from ansible_collections.christmas.recovery.plugins.module_utils.platform.arguments import (
    ENCRYPTION_EXCLUSIVE,
    PITR_REQUIRED_BY,
    encryption_key,
    pitr_argument_spec,
    protection,
)
from ansible_collections.christmas.recovery.plugins.module_utils.sets import encryption, signing
from ansible_collections.christmas.recovery.plugins.module_utils.sets.protection import (
    _stamp,
    component_windows,
    describe,
)
from ansible_collections.christmas.recovery.plugins.module_utils.transport.offsite import list_sets


def main():
    argument_spec = dict(pitr_argument_spec(required=False), backup_dir={"type": "path", "required": True},
                         signing_key_file={"type": "path"}, db_port={"type": "int", "default": 5432},
                         pg_bin_dir={"type": "path"})
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True,
                           mutually_exclusive=ENCRYPTION_EXCLUSIVE, required_together=[("pitr_repo", "pitr_dir")],
                           required_by=PITR_REQUIRED_BY)

    def work(_progress):
        sets = list_sets(module.params["backup_dir"])
        ids = [entry["set_id"] for entry in sets]
        result = {"sets": sets, "set_ids": ids, "latest": ids[0] if ids else None,
                  "filesystem": filesystem_usage(module.params["backup_dir"])}
        key = encryption_key(module.params)
        if key is not None:
            result["key_id"] = encryption.key_id(key)
        if module.params["signing_key_file"]:
            private = signing.load_private_key(module.params["signing_key_file"])
            if private is not None:
                result["signing_public_key"] = signing.public_key_pem(private.public_key())
        if module.params["pitr_repo"]:
            problems = {}
            found = component_windows(protection(module.params), ("db", "redis", "config"), problems)
            result["window"] = {"components": {name: {"start": _stamp(w["start"]), "end": _stamp(w["end"])}
                                               for name, w in found.items()},
                                "text": describe(found), "problems": problems}
        return result

    run(module, work)


if __name__ == "__main__":
    main()

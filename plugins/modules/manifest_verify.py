#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: manifest_verify
short_description: Check that a backup set is complete and intact
description:
  - Checks a manifest's schema and that every artifact it names is present inside its own set, a regular file, with
    the recorded size and SHA-256. Files in the set that the manifest does not name are reported too.
  - With I(deep=true) each artifact is also read back by its own tool; C(pg_restore --list) for the database dump,
    the role file parsed, every Redis record parsed with its DUMP payload's CRC64, the config archive fully listed
    with every member checked as safe to restore.
  - An encrypted set (one shipped to a vault host) is verified the same way without its key; its manifest records
    the size and SHA-256 of the encrypted files, and its metadata (components, times, host, table names, row counts,
    sizes) stays readable, so an operator can choose a set without the key. Only I(deep=true) needs the key; the set
    is then decrypted into a private temporary directory beside it, read back there, and that directory removed.
  - Fails naming every bad artifact; read-only, so check mode runs the same checks.
version_added: 0.1.0
author: Christmas platform operations
extends_documentation_fragment:
  - christmas.recovery.signing
  - christmas.recovery.signing.trust
  - christmas.recovery.vault.encryption
options:
  manifest:
    description:
      - Path of a C(manifest_YYYYMMDD_HHMMSS.json), or C(latest) for the newest complete set in I(backup_dir).
        A relative name is looked up in I(backup_dir).
    type: str
    default: latest
  backup_dir:
    description: Directory holding the backup sets; needed for C(latest).
    type: path
  deep:
    description: Also read every artifact with its own tool.
    type: bool
    default: false
  jobs:
    description: Files checksummed in parallel.
    type: int
    default: 4
  pg_bin_dir:
    description: Directory of pg_restore, used by the deep check.
    type: path
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
"""

EXAMPLES = r"""
- name: Verify the newest set, reading every artifact back
  christmas.recovery.manifest_verify:
    backup_dir: /var/backups/christmas
    deep: true

- name: Verify one set
  christmas.recovery.manifest_verify:
    manifest: /var/backups/christmas/manifest_20261126_030000.json

- name: Read an encrypted set on a vault host back, with its key from Ansible Vault
  christmas.recovery.manifest_verify:
    backup_dir: /srv/vault/christmas
    deep: true
    encryption_key: "{{ vault_christmas_backup_key }}"
"""

RETURN = r"""
ok:
  description: Whether the set is intact.
  returned: always
  type: bool
manifest:
  description: The manifest that was checked.
  returned: when it could be found
  type: str
set_id:
  description: Id of the checked set.
  returned: when the manifest could be read
  type: str
components:
  description: Components the set holds.
  returned: when the manifest could be read
  type: list
  elements: str
artifact_count:
  description: Number of artifacts checked.
  returned: when the manifest could be read
  type: int
total_bytes:
  description: Bytes checksummed.
  returned: when the manifest could be read
  type: int
encrypted:
  description: Whether the set is encrypted; its sizes and checksums are then those of the encrypted files.
  returned: when the manifest could be read
  type: bool
key_id:
  description: Public fingerprint of the key an encrypted set was made with; never the key itself.
  returned: when the set is encrypted
  type: str
  sample: 3f1c0a9b7e5d2c41
problems:
  description: One entry per bad artifact, with what is wrong.
  returned: when the manifest could be read
  type: list
  elements: dict
  sample: [{"artifact": "set_20261126_030000/redis.rdb", "problem": "SHA-256 mismatch (corrupted)"}]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.christmas.recovery.plugins.module_utils.core.module_runner import run
from ansible_collections.christmas.recovery.plugins.module_utils.db.connection import PgTarget
from ansible_collections.christmas.recovery.plugins.module_utils.platform.arguments import (
    ENCRYPTION_EXCLUSIVE,
    encryption_argument_spec,
    encryption_key,
    signing_argument_spec,
)
from ansible_collections.christmas.recovery.plugins.module_utils.sets.restore_set import reading_sets
from ansible_collections.christmas.recovery.plugins.module_utils.sets.signing import trust_from_params
from ansible_collections.christmas.recovery.plugins.module_utils.sets.verify import verify_set


def main():
    argument_spec = dict(encryption_argument_spec(), **signing_argument_spec())
    argument_spec.update(
        manifest={"type": "str", "default": "latest"},
        backup_dir={"type": "path"},
        deep={"type": "bool", "default": False},
        jobs={"type": "int", "default": 4},
        pg_bin_dir={"type": "path"},
    )
    module = AnsibleModule(argument_spec=argument_spec, mutually_exclusive=ENCRYPTION_EXCLUSIVE,
                           supports_check_mode=True)
    params = module.params

    def verify(_progress):
        with reading_sets(params["manifest"], params["backup_dir"]):  # no prune while the set is read
            return verify_set(params["manifest"], params["backup_dir"], params["deep"], params["jobs"],
                              PgTarget(bin_dir=params["pg_bin_dir"]), encryption_key=encryption_key(params),
                              trust=trust_from_params(params))[0]

    run(module, verify)


if __name__ == "__main__":
    main()

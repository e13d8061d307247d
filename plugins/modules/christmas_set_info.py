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
version_added: 0.1.0
author: Christmas platform operations
extends_documentation_fragment:
  - christmas.recovery.vault.encryption
options:
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
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.christmas.recovery.plugins.module_utils.core.fsutil import filesystem_usage
from ansible_collections.christmas.recovery.plugins.module_utils.core.module_runner import run
from ansible_collections.christmas.recovery.plugins.module_utils.platform.arguments import (
    ENCRYPTION_EXCLUSIVE,
    encryption_argument_spec,
    encryption_key,
)
from ansible_collections.christmas.recovery.plugins.module_utils.sets import encryption, signing
from ansible_collections.christmas.recovery.plugins.module_utils.transport.offsite import list_sets


def main():
    argument_spec = dict(encryption_argument_spec(), backup_dir={"type": "path", "required": True},
                         signing_key_file={"type": "path"})
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True,
                           mutually_exclusive=ENCRYPTION_EXCLUSIVE)

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
        return result

    run(module, work)


if __name__ == "__main__":
    main()

#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: christmas_offsite_receive
short_description: Publish the backup sets that arrived over SSH, after checking them against their manifests
description:
  - Checks every set waiting in C(BACKUP_DIR/.incoming) (copied there by M(christmas.recovery.christmas_offsite_send)
    or M(christmas.recovery.christmas_offsite_fetch)) against its own manifest, size and SHA-256 of every file, and
    only then publishes it. The set directory is renamed into I(backup_dir) first and the manifest last, so no set is
    ever visible as complete before all of it arrived intact. A damaged arrival is removed and reported.
  - On a vault, sets are kept as they came (encrypted ones stay encrypted; no key is needed there). With
    I(decrypt=true), on a host that restores, an encrypted set is decrypted with the key and published as an ordinary
    set; without the key it is refused.
  - Then applies I(retention_days) to I(backup_dir) as a backup does.
version_added: 0.1.0
author: Christmas platform operations
extends_documentation_fragment:
  - christmas.recovery.signing
  - christmas.recovery.signing.trust
  - christmas.recovery.vault.encryption
options:
  backup_dir:
    description: The backup or vault directory the sets are published into.
    type: path
    required: true
  retention_days:
    description: Complete sets older than this are deleted, the newest always kept; unset keeps every set.
    type: int
  decrypt:
    description: Publish encrypted sets decrypted (needs the key).
    type: bool
    default: false
  deep:
    description: Also read each set back with its own tools (C(pg_restore --list), ...) before publishing it.
    type: bool
    default: false
  jobs:
    description: Files checked or decrypted in parallel.
    type: int
    default: 2
  pg_bin_dir:
    description: Directory of pg_restore, used by I(deep).
    type: path
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
"""

EXAMPLES = r"""
- name: Publish what arrived on the vault and apply its retention
  christmas.recovery.christmas_offsite_receive:
    backup_dir: /srv/christmas-vault/db1
    retention_days: 30

- name: Publish a fetched set decrypted, read back
  christmas.recovery.christmas_offsite_receive:
    backup_dir: /var/backups/christmas
    decrypt: true
    deep: true
    encryption_key_file: /etc/christmas/backup.key
"""

RETURN = r"""
received:
  description: Ids of the sets published (would be, in check mode).
  returned: always
  type: list
  elements: str
decrypted:
  description: Ids of the sets published decrypted.
  returned: when not in check mode
  type: list
  elements: str
pruned:
  description: Ids of the sets deleted by retention (would be, in check mode).
  returned: always
  type: list
  elements: str
sets:
  description: The complete sets afterwards, as M(christmas.recovery.christmas_set_info) lists them.
  returned: when not in check mode
  type: list
  elements: dict
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
from ansible_collections.christmas.recovery.plugins.module_utils.sets.signing import trust_from_params
from ansible_collections.christmas.recovery.plugins.module_utils.transport.offsite import receive_sets


def main():
    argument_spec = dict(encryption_argument_spec(), **signing_argument_spec())
    argument_spec.update(
        backup_dir={"type": "path", "required": True},
        retention_days={"type": "int"},
        decrypt={"type": "bool", "default": False},
        deep={"type": "bool", "default": False},
        jobs={"type": "int", "default": 2},
        pg_bin_dir={"type": "path"},
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True,
                           mutually_exclusive=ENCRYPTION_EXCLUSIVE)
    params = module.params
    run(module, lambda progress: receive_sets(
        params["backup_dir"], params["retention_days"], params["decrypt"], encryption_key(params), params["deep"],
        params["jobs"], PgTarget(bin_dir=params["pg_bin_dir"]), module.check_mode, progress,
        trust=trust_from_params(params)))


if __name__ == "__main__":
    main()

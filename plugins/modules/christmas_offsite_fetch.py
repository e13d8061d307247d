#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: christmas_offsite_fetch
short_description: Copy one backup set from a vault host to this host over SSH
description:
  - Copies the set I(set_id) from the vault into C(BACKUP_DIR/.incoming) with rsync over SSH. Nothing is published;
    M(christmas.recovery.christmas_offsite_receive) then checks the copy, decrypts it when it is encrypted, and
    makes it a complete set of I(backup_dir).
  - Does nothing when I(backup_dir) already holds the set complete.
version_added: 0.1.0
author: Christmas platform operations
extends_documentation_fragment:
  - christmas.recovery.vault
options:
  backup_dir:
    description: The local backup directory the set is brought into.
    type: path
    required: true
  set_id:
    description: Id of the set (C(YYYYMMDD_HHMMSS)); the C(latest) of M(christmas.recovery.christmas_set_info) run on
      the vault gives the newest.
    type: str
    required: true
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
"""

EXAMPLES = r"""
- name: Bring the newest set from the vault
  christmas.recovery.christmas_offsite_fetch:
    backup_dir: /var/backups/christmas
    set_id: "{{ vault_sets.latest }}"
    vault_host: 10.0.5.20
    vault_user: christmas-vault
    vault_dir: /srv/christmas-vault/db1
    ssh_key_file: /root/.ssh/christmas_vault_ed25519
    known_hosts_file: /root/.ssh/christmas_vault_known_hosts
"""

RETURN = r"""
set_id:
  description: The set fetched.
  returned: always
  type: str
already_present:
  description: Whether the set was already complete here (nothing copied).
  returned: always
  type: bool
bytes:
  description: Bytes copied into C(.incoming).
  returned: when copied
  type: int
seconds:
  description: Seconds the copy took.
  returned: when copied
  type: float
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.christmas.recovery.plugins.module_utils.core.module_runner import run
from ansible_collections.christmas.recovery.plugins.module_utils.platform.arguments import (
    vault_argument_spec,
    vault_remote,
)
from ansible_collections.christmas.recovery.plugins.module_utils.transport.offsite import fetch_set


def main():
    argument_spec = vault_argument_spec()
    argument_spec.update(backup_dir={"type": "path", "required": True}, set_id={"type": "str", "required": True})
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    params = module.params
    run(module, lambda progress: fetch_set(params["backup_dir"], vault_remote(params), params["set_id"],
                                           module.check_mode, progress))


if __name__ == "__main__":
    main()

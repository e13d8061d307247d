#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: christmas_offsite_send
short_description: Copy complete backup sets to a vault host over SSH
description:
  - Copies every complete set of I(backup_dir) that the vault does not hold (I(present)) into the vault's
    C(.incoming) directory with rsync over SSH. Sets older than I(retention_days) (except the newest) are not sent.
  - Each set is checked against its manifest before it leaves. With an encryption key it is encrypted first into
    C(BACKUP_DIR/.offsite) (removed after the copy), so only ciphertext leaves the host.
  - The copy becomes a complete set on the vault only when M(christmas.recovery.christmas_offsite_receive), run on
    the vault, has checked it against its manifest and published it.
  - An interrupted copy resumes where it stopped on the next run (rsync C(--partial)).
version_added: 0.1.0
author: Christmas platform operations
extends_documentation_fragment:
  - christmas.recovery.signing
  - christmas.recovery.signing.trust
  - christmas.recovery.vault
  - christmas.recovery.vault.encryption
options:
  backup_dir:
    description: The local backup directory.
    type: path
    required: true
  present:
    description: Ids of the sets the vault already holds (the C(set_ids) of M(christmas.recovery.christmas_set_info)).
    type: list
    elements: str
    default: []
  retention_days:
    description: Sets older than this are not sent (the vault's retention would delete them at once).
    type: int
    default: 30
  jobs:
    description: Files checksummed or encrypted in parallel.
    type: int
    default: 2
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
"""

EXAMPLES = r"""
- name: Send what the vault lacks
  christmas.recovery.christmas_offsite_send:
    backup_dir: /var/backups/christmas
    present: "{{ vault_sets.set_ids }}"
    vault_host: 10.0.5.20
    vault_user: christmas-vault
    vault_dir: /srv/christmas-vault/db1
    ssh_key_file: /root/.ssh/christmas_vault_ed25519
    known_hosts_file: /root/.ssh/christmas_vault_known_hosts
    encryption_key: "{{ vault_christmas_encryption_key }}"
"""

RETURN = r"""
sent:
  description: Ids of the sets copied (would be copied, in check mode), oldest first.
  returned: always
  type: list
  elements: str
encrypted:
  description: Whether the sets left encrypted.
  returned: always
  type: bool
key_id:
  description: Public fingerprint of the encryption key.
  returned: when encrypted
  type: str
bytes:
  description: Bytes of the set files sent.
  returned: always
  type: int
seconds:
  description: Seconds each set took, by set id.
  returned: always
  type: dict
signing_public_key:
  description:
    - The public key (PEM) the sets were checked with before they left, for the vault's own check
      (I(signing_public_key) of M(christmas.recovery.christmas_offsite_receive)).
  returned: when sets are checked against a key
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.christmas.recovery.plugins.module_utils.core.module_runner import run
from ansible_collections.christmas.recovery.plugins.module_utils.platform.arguments import (
    ENCRYPTION_EXCLUSIVE,
    encryption_argument_spec,
    encryption_key,
    signing_argument_spec,
    vault_argument_spec,
    vault_remote,
)
from ansible_collections.christmas.recovery.plugins.module_utils.sets.signing import Signer, trust_from_params
from ansible_collections.christmas.recovery.plugins.module_utils.transport.offsite import send_sets


def main():
    argument_spec = dict(vault_argument_spec(), **encryption_argument_spec(), **signing_argument_spec())
    argument_spec.update(
        backup_dir={"type": "path", "required": True},
        present={"type": "list", "elements": "str", "default": []},
        retention_days={"type": "int", "default": 30},
        jobs={"type": "int", "default": 2},
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True,
                           mutually_exclusive=ENCRYPTION_EXCLUSIVE)
    params = module.params
    run(module, lambda progress: send_sets(
        params["backup_dir"], vault_remote(params), params["retention_days"], params["present"],
        encryption_key(params), params["jobs"], module.check_mode, progress,
        signer=Signer(params["signing_key_file"]), trust=trust_from_params(params)))


if __name__ == "__main__":
    main()

#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: christmas_offsite_history
short_description: Keep continuous protection's history on a vault host, and bring it onto a replacement host
description:
  - I(direction=send) mirrors the pgBackRest repository (I(pitr_repo)) and the Redis AOF and config versions
    (I(pitr_dir)) into C(VAULT_DIR/history) with rsync over SSH, so that a replacement host can restore the platform
    to a second of the window. Each mirror takes two passes, the data first, then the index files with what this
    host no longer keeps deleted, so the vault never lists a backup, an AOF piece or a config version before its
    files. With an encryption key, the AOF and config versions leave sealed file by file (the repository is
    encrypted by pgBackRest itself with I(pitr_encryption); its cipher pass never leaves the host).
  - I(direction=fetch) brings the vault's history into this host's I(pitr_repo) and I(pitr_dir), which must not
    exist or be empty. It is copied beside them, opened with the encryption key when sealed, put in place, the
    repository's config file written for this host, and the repository read with pgBackRest. A fetch that fails
    keeps nothing. Once fetched (C(BACKUP_DIR/.history-fetched.json)), a second run changes nothing.
version_added: 0.1.0
author: Christmas platform operations
extends_documentation_fragment:
  - christmas.recovery.pitr
  - christmas.recovery.s3.optional
  - christmas.recovery.vault
  - christmas.recovery.vault.encryption
options:
  direction:
    description: C(send) from the platform host to the vault, C(fetch) from the vault to a replacement host.
    type: str
    choices: [send, fetch]
    required: true
  backup_dir:
    description: The local backup directory (the staging of sealed copies, the fetch's record).
    type: path
    required: true
  db_port:
    description: The database's port, for the config file of a repository fetched before the server runs.
    type: int
    default: 5432
  pg_bin_dir:
    description: Directory of the PostgreSQL programs (default the PostgreSQL 15 one of Debian).
    type: path
  seal:
    description: With I(direction=send), seal the AOF and config versions with the encryption key before they leave.
    type: bool
    default: false
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
"""

EXAMPLES = r"""
- name: Keep the recovery window on the vault
  christmas.recovery.christmas_offsite_history:
    direction: send
    backup_dir: /var/backups/christmas
    pitr_repo: /var/backups/christmas/pgbackrest
    pitr_dir: /var/backups/christmas/pitr
    vault_host: 10.0.5.20
    vault_user: christmas-vault
    vault_dir: /srv/christmas-vault/db1
    ssh_key_file: /root/.ssh/christmas_vault_ed25519
    known_hosts_file: /root/.ssh/christmas_vault_known_hosts
"""

RETURN = r"""
sent:
  description: With I(direction=send), what was mirrored (C(pgbackrest), C(pitr)).
  returned: direction=send
  type: list
  elements: str
sealed:
  description: Whether the AOF and config versions left sealed.
  returned: direction=send
  type: bool
fetched:
  description: With I(direction=fetch), what came from the vault.
  returned: direction=fetch, when fetched
  type: list
  elements: str
already_fetched:
  description: The record of an earlier fetch (vault, time, newest backup); nothing was copied.
  returned: direction=fetch, when fetched before
  type: dict
newest_backup:
  description: The newest physical backup of the fetched repository.
  returned: direction=fetch, when fetched
  type: str
key_id:
  description: Id of the key the AOF and config versions are sealed with.
  returned: when sealed
  type: str
bytes:
  description: Bytes of the history mirrored or fetched.
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
    ENCRYPTION_EXCLUSIVE,
    PITR_REQUIRED_BY,
    PITR_REQUIRED_IF,
    encryption_key,
    pitr_argument_spec,
    protection,
    vault_argument_spec,
    vault_remote,
)
from ansible_collections.christmas.recovery.plugins.module_utils.transport.history import fetch_history, send_history


def main():
    argument_spec = dict(vault_argument_spec(), **pitr_argument_spec())
    argument_spec.update(
        direction={"type": "str", "choices": ["send", "fetch"], "required": True},
        backup_dir={"type": "path", "required": True},
        db_port={"type": "int", "default": 5432},
        pg_bin_dir={"type": "path"},
        seal={"type": "bool", "default": False},
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True,
                           mutually_exclusive=ENCRYPTION_EXCLUSIVE, required_by=PITR_REQUIRED_BY,
                           required_if=PITR_REQUIRED_IF + [("seal", True, ("encryption_key", "encryption_key_file"),
                                                            True)])
    params = module.params
    if params["direction"] == "send":
        run(module, lambda progress: send_history(
            protection(params), vault_remote(params), encryption_key(params) if params["seal"] else None,
            module.check_mode, progress))
    else:
        run(module, lambda progress: fetch_history(protection(params), vault_remote(params), encryption_key(params),
                                                   module.check_mode, progress))


if __name__ == "__main__":
    main()

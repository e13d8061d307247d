# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  vault_host:
    description: Address of the vault host, as this host reaches it over SSH.
    type: str
    required: true
  vault_port:
    description: SSH port of the vault host.
    type: int
    default: 22
  vault_user:
    description: Account on the vault host that owns I(vault_dir).
    type: str
    required: true
  vault_dir:
    description:
      - Absolute directory on the vault host holding this platform's sets, laid out like a backup directory.
    type: str
    required: true
  ssh_key_file:
    description: Private key this host logs in to the vault with; no other key and no agent are tried.
    type: path
    required: true
  known_hosts_file:
    description:
      - File holding the vault's host key. The host key is checked strictly; an unknown or changed key fails.
    type: path
    required: true
  connect_timeout:
    description: Seconds to wait for the SSH connection.
    type: int
    default: 10
notes:
  - Needs C(rsync) and C(ssh) on this host and C(rsync) on the vault host.
"""

    ENCRYPTION = r"""
options:
  encryption_key:
    description:
      - The key of encrypted sets as base64 text of 32 random bytes (C(openssl rand -base64 32) makes one). Keep
        it in Ansible Vault. Never logged, never passed on a command line.
      - Mutually exclusive with I(encryption_key_file).
    type: str
  encryption_key_file:
    description: File on the managed host holding the key as in I(encryption_key).
    type: path
notes:
  - Encryption needs the Python C(cryptography) library on the managed host (Debian's C(python3-cryptography)).
"""

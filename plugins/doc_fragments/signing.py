# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  signing_key_file:
    description:
      - The platform host's Ed25519 private key (PEM) that signs every backup set's manifest. The first backup
        creates it (mode 0600, in a 0700 directory; an existing file is never replaced); a key file readable by
        others, or that holds no Ed25519 key, is refused. Keep a copy in Ansible Vault.
      - When not given, C($CHRISTMAS_SIGNING_KEY_FILE), else C(/etc/christmas-recovery/signing.key).
      - Where sets are checked, its public half is the key they must be signed with, unless
        I(signing_public_key_file) is given.
    type: path
notes:
  - Signing needs the Python C(cryptography) library on the managed host (Debian's C(python3-cryptography)).
"""

    TRUST = r"""
options:
  signing_public_key_file:
    description:
      - The public key (PEM) sets must be signed with, for hosts that must not hold the private key (a vault, a new
        host). When not given, the public half of I(signing_key_file).
    type: path
  signing_public_key:
    description:
      - The public key (PEM text) sets must be signed with, given as a value; it comes before
        I(signing_public_key_file). The offsite copy gives a vault the key the sending host checked its sets with
        (C(signing_public_key) of M(christmas.recovery.christmas_offsite_send)).
    type: str
  allow_unsigned:
    description:
      - Use a set whose signature is missing or does not match the key (a set from before signing, or one
        whose manifest was changed). Said loudly in the output and kept in the result (C(unsigned_allowed)).
    type: bool
    default: false
"""

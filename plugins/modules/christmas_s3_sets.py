#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: christmas_s3_sets
short_description: Keep backup sets in an S3 bucket, and bring them back from it
description:
  - Sets lie in the bucket as in a backup directory, under C(PREFIX/sets/). A set appears there only when complete
    (its files first, each checked against the SHA-256 the server stored with it, or read back where the server
    keeps none; its signed manifest last), so a killed or failed upload never leaves a set that looks complete.
  - I(direction=send) uploads every complete local set the bucket lacks, checked against its manifest and signature
    first and, with an encryption key, encrypted first (only ciphertext leaves the host); it then removes what killed
    uploads left and applies I(retention_days) in the bucket (never the bucket's newest set, nor the newest proven
    one).
  - I(direction=fetch) downloads I(set_id) into C(BACKUP_DIR/.incoming), checking its manifest's signature and then
    every object against that manifest (one that does not match is refused by name);
    M(christmas.recovery.christmas_offsite_receive) then decrypts, reads back and publishes it.
  - I(direction=verify) checks the bucket's copy of I(set_id) the same way in a scratch directory it removes
    afterwards, and with I(deep) reads it back with its own tools (an encrypted copy only with the key).
  - I(direction=list) lists the bucket's complete sets.
  - I(direction=send_history) mirrors continuous protection's Redis AOF and config versions (I(pitr_dir)) into
    C(PREFIX/pitr/) (what changed since the last upload), the data files first, the index files last, then what the
    host no longer keeps deleted; sealed file by file with the encryption key when given.
  - I(direction=fetch_history) downloads that mirror into C(BACKUP_DIR/.s3-history) (opened with the key when
    sealed), for a restore to a second from the bucket; this host's own history is left alone.
version_added: 0.1.0
author: Christmas platform operations
extends_documentation_fragment:
  - christmas.recovery.s3
  - christmas.recovery.s3.uploads
  - christmas.recovery.signing
  - christmas.recovery.signing.trust
  - christmas.recovery.vault.encryption
options:
  direction:
    description: What to do.
    type: str
    choices: [send, fetch, verify, list, send_history, fetch_history]
    required: true
  backup_dir:
    description: The local backup directory.
    type: path
    required: true
  pitr_dir:
    description: With I(direction=send_history), continuous protection's AOF and config versions (C(PITR_DIR)).
    type: path
  set_id:
    description: The set to fetch or verify (C(YYYYMMDD_HHMMSS)), or C(latest) for the bucket's newest.
    type: str
    default: latest
  retention_days:
    description: With I(direction=send), complete sets of the bucket older than this are deleted; unset keeps all.
    type: int
  deep:
    description: With I(direction=verify), also read the set back with its own tools.
    type: bool
    default: false
  replace_damaged:
    description:
      - With I(direction=fetch), a local copy of the set that fails its checksums is set aside into
        C(BACKUP_DIR/.damaged/) (kept to be looked at; remove it by hand) and the bucket's copy fetched instead.
        Without it a local copy is always left alone.
    type: bool
    default: false
  jobs:
    description: Files transferred and checked in parallel (each large file in four parts at once).
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
- name: Upload the sets the bucket lacks, encrypted
  christmas.recovery.christmas_s3_sets:
    direction: send
    backup_dir: /var/backups/christmas
    retention_days: 30
    s3_endpoint: s3.example.net:443
    s3_bucket: christmas-backups
    s3_prefix: db1
    s3_access_key: "{{ vault_s3_access_key }}"
    s3_secret_key: "{{ vault_s3_secret_key }}"
    encryption_key: "{{ vault_christmas_encryption_key }}"

- name: Bring the bucket's newest set to this host's .incoming
  christmas.recovery.christmas_s3_sets:
    direction: fetch
    backup_dir: /var/backups/christmas
    s3_endpoint: s3.example.net:443
    s3_bucket: christmas-backups
    s3_prefix: db1
    s3_access_key: "{{ vault_s3_access_key }}"
    s3_secret_key: "{{ vault_s3_secret_key }}"
"""

RETURN = r"""
bucket:
  description: Where the sets lie, as C(s3://BUCKET/PREFIX/sets/).
  returned: always
  type: str
sets:
  description: Ids of the bucket's complete sets, newest first (after the upload and retention, with I(direction=send)).
  returned: with I(direction=send) or I(direction=list)
  type: list
  elements: str
sent:
  description: Ids of the sets uploaded (would be, in check mode), oldest first.
  returned: with I(direction=send)
  type: list
  elements: str
pruned:
  description: Ids of the sets retention deleted from the bucket (would delete, in check mode).
  returned: with I(direction=send)
  type: list
  elements: str
newest_seconds:
  description: The bucket's newest complete set after the upload, its id as Unix time (null when it holds none).
  returned: with I(direction=send), when not in check mode
  type: int
set_id:
  description: The set fetched or verified.
  returned: with I(direction=fetch) or I(direction=verify)
  type: str
already_present:
  description: Whether the fetched set was already complete here (nothing downloaded).
  returned: with I(direction=fetch)
  type: bool
pitr_dir:
  description: With I(direction=fetch_history), the downloaded history to restore from.
  returned: with I(direction=fetch_history)
  type: str
damaged:
  description: With I(replace_damaged), why the local copy was found damaged.
  returned: when the local copy was damaged
  type: str
set_aside:
  description: Where the damaged local copy was moved.
  returned: when a damaged local copy was set aside
  type: str
bytes:
  description: Bytes uploaded or downloaded.
  returned: when something was transferred
  type: int
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.christmas.recovery.plugins.module_utils.core.module_runner import run
from ansible_collections.christmas.recovery.plugins.module_utils.db.connection import PgTarget
from ansible_collections.christmas.recovery.plugins.module_utils.objectstore.s3 import HAS_BOTO3, Store
from ansible_collections.christmas.recovery.plugins.module_utils.platform.arguments import (
    ENCRYPTION_EXCLUSIVE,
    encryption_argument_spec,
    encryption_key,
    s3_argument_spec,
    s3_bucket,
    signing_argument_spec,
)
from ansible_collections.christmas.recovery.plugins.module_utils.sets.signing import Signer, trust_from_params
from ansible_collections.christmas.recovery.plugins.module_utils.transport import bucket, bucket_history


def work(params, check_mode, progress):
    store = Store(s3_bucket(params), params["jobs"], progress)
    trust, direction = trust_from_params(params), params["direction"]
    if direction == "send":
        return bucket.send_sets(params["backup_dir"], store, params["retention_days"], encryption_key(params),
                                params["jobs"], check_mode, signer=Signer(params["signing_key_file"]), trust=trust)
    if direction == "fetch":
        return dict(bucket.fetch_set(params["backup_dir"], store, params["set_id"], trust, check_mode,
                                     params["replace_damaged"], params["jobs"]), bucket=store.url(bucket.SETS))
    if direction == "verify":
        return bucket.verify_bucket_set(params["backup_dir"], store, params["set_id"], trust, params["deep"],
                                        encryption_key(params), params["jobs"], PgTarget(bin_dir=params["pg_bin_dir"]))
    if direction == "send_history":
        return bucket_history.send_history(params["backup_dir"], params["pitr_dir"], store, encryption_key(params),
                                           check_mode, progress)
    if direction == "fetch_history":
        return bucket_history.fetch_history(params["backup_dir"], store, encryption_key(params), progress)
    return {"bucket": store.url(bucket.SETS), "sets": bucket.complete_ids(bucket.bucket_sets(store))}


def main():
    argument_spec = dict(s3_argument_spec(), **encryption_argument_spec(), **signing_argument_spec())
    argument_spec.update(
        direction={"type": "str", "choices": ["send", "fetch", "verify", "list", "send_history", "fetch_history"],
                   "required": True},
        backup_dir={"type": "path", "required": True},
        pitr_dir={"type": "path"},
        set_id={"type": "str", "default": "latest"},
        retention_days={"type": "int"},
        deep={"type": "bool", "default": False},
        replace_damaged={"type": "bool", "default": False},
        s3_object_lock_days={"type": "int", "default": 0},
        jobs={"type": "int", "default": 2},
        pg_bin_dir={"type": "path"},
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True,
                           mutually_exclusive=ENCRYPTION_EXCLUSIVE,
                           required_if=[("direction", "send_history", ("pitr_dir",))])
    if not HAS_BOTO3:
        module.fail_json(msg=missing_required_lib("boto3"))
    run(module, lambda progress: work(module.params, module.check_mode, progress))


if __name__ == "__main__":
    main()

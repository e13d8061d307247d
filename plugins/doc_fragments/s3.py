# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  s3_endpoint:
    description: The S3 server as C(host:port); always spoken to over HTTPS.
    type: str
    required: true
  s3_bucket:
    description: The bucket; it must exist.
    type: str
    required: true
  s3_prefix:
    description: Where this platform's objects live in the bucket (its sets under C(PREFIX/sets/)).
    type: str
    required: true
  s3_region:
    description: The region requests are signed for.
    type: str
    default: us-east-1
  s3_access_key:
    description: The access key id.
    type: str
    required: true
  s3_secret_key:
    description: The secret key. Keep it in Ansible Vault; it is never logged and never on a command line.
    type: str
    required: true
  s3_uri_style:
    description: C(path) (C(https://host/bucket/key)) or C(host) (C(https://bucket.host/key)).
    type: str
    choices: [path, host]
    default: path
  s3_ca_file:
    description: CA certificates (PEM) the server's certificate is checked against, instead of the system's.
    type: path
  s3_validate_certs:
    description: Check the server's TLS certificate and name. Turn off only on a test bench.
    type: bool
    default: true
  s3_timeout:
    description: Seconds to wait for a connection or an answer before the request fails.
    type: int
    default: 60
notes:
  - Needs the Python C(boto3) library on the managed host (Debian's C(python3-boto3)).
"""

    # Where the bucket is optional (continuous protection's pgBackRest repo2): the same options, none required.
    OPTIONAL = DOCUMENTATION.replace("    required: true\n", "")

    # Where objects are uploaded (the sets and the AOF and config mirror).
    UPLOADS = r"""
options:
  s3_object_lock_days:
    description:
      - Each object uploaded (files, manifests, the AOF and config mirror) is locked with S3 Object Lock in
        compliance mode for this many days, so that nobody, this host included, can delete or overwrite that version
        before then. The bucket must have been created with Object Lock enabled (which turns versioning on); an
        upload into one without it is refused. C(0) locks nothing.
      - Retention in the bucket then only hides an expired set behind a delete marker; its locked versions stay until
        their lock ends (a lifecycle rule on noncurrent versions removes them after that).
    type: int
    default: 0
"""

# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Files in an S3 bucket (AWS S3, Ceph RGW, SeaweedFS, MinIO, ...) through boto3's transfer manager: parallel
multipart transfers with bounded memory, every upload checked against the SHA-256 the server stored with it (or read
back where the server keeps none; an ETag is not a checksum), every failure one line naming the endpoint."""

from __future__ import annotations

import base64
import datetime
import hashlib
import os
import re
import threading
import time
from collections import namedtuple
from concurrent.futures import ThreadPoolExecutor

from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.core.fsutil import make_private_dir

try:
    import boto3
    from boto3.exceptions import S3UploadFailedError
    from boto3.s3.transfer import TransferConfig, create_transfer_manager
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError
    from s3transfer.subscribers import BaseSubscriber
    from s3transfer.utils import ChunksizeAdjuster
    HAS_BOTO3 = True
except ImportError:  # the module says so with missing_required_lib
    HAS_BOTO3 = False
    BotoCoreError = ClientError = S3UploadFailedError = ()
    BaseSubscriber = object

ENDPOINT_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.-]*):\d{1,5}$")
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
PREFIX_RE = re.compile(r"^[A-Za-z0-9_.:%@-]+(/[A-Za-z0-9_.:%@-]+)*$")
# Parts of 16 MiB, four in flight per job: memory stays bounded at any size.
PART_BYTES = 16 * 1024 * 1024
PROGRESS_SECONDS = 10  # a long transfer says how far it is at most this often
MIB = 1024 * 1024
MISSING = ("404", "NoSuchKey")
# Codes whose meaning the operator needs in words rather than S3's own.
CLIENT_CAUSES = {
    "NoSuchBucket": "bucket %(bucket)s does not exist (create it first)",
    "InvalidAccessKeyId": "the access key is not known to the server",
    "SignatureDoesNotMatch": "the secret key is wrong (the server refused the request's signature)",
    "AccessDenied": "access denied to bucket %(bucket)s",
    "BadDigest": "the server received different bytes than were sent (checksum mismatch)",
    # out of space, as AWS (quota), Ceph RGW, MinIO and others say it; SeaweedFS answers InternalError
    "QuotaExceeded": "the server is out of space (QuotaExceeded)",
    "InsufficientStorage": "the server is out of space (InsufficientStorage)",
    "XMinioStorageFull": "the server is out of space (XMinioStorageFull)",
    "InternalError": "the server failed to store or serve an object (InternalError: it may be out of space; see its "
                     "log)",
}

# lock_days: each object uploaded is locked (S3 Object Lock, compliance mode) for that many days; 0 locks nothing.
Bucket = namedtuple("Bucket", "endpoint bucket prefix region access_key secret_key uri_style ca_file validate_certs "
                              "timeout lock_days", defaults=(0,))
# A local file, its name under the prefix, its size and its SHA-256 (hex).
Upload = namedtuple("Upload", "path name size sha256")


def check_bucket(bucket):
    """What is refused before anything is sent: an endpoint that is not host:port, names S3 cannot hold."""
    if not ENDPOINT_RE.match(bucket.endpoint or ""):
        raise RecoveryError("s3_endpoint %r is not host:port (HTTPS is always used)" % bucket.endpoint)
    if not BUCKET_RE.match(bucket.bucket or "") or ".." in bucket.bucket:
        raise RecoveryError("s3_bucket %r is not a bucket name (3 to 63 of a-z, 0-9, '.', '-')" % bucket.bucket)
    if not PREFIX_RE.match(bucket.prefix or "") or ".." in bucket.prefix.split("/"):
        raise RecoveryError("s3_prefix %r is not a key prefix (names separated by '/', no '..')" % bucket.prefix)
    if bucket.uri_style not in ("path", "host"):
        raise RecoveryError("s3_uri_style %r must be path or host" % bucket.uri_style)
    if not bucket.access_key or not bucket.secret_key:
        raise RecoveryError("s3_access_key and s3_secret_key are both needed")
    if bucket.ca_file and not os.path.isfile(bucket.ca_file):
        raise RecoveryError("s3_ca_file %s does not exist" % bucket.ca_file)
    if bucket.lock_days < 0:
        raise RecoveryError("s3_object_lock_days %d: give 0 (no lock) or the days each object stays locked" %
                            bucket.lock_days)


def describe(err, bucket):
    """One line for what went wrong talking to the server, naming the endpoint."""
    if isinstance(err, ClientError):
        code = err.response.get("Error", {}).get("Code", "")
        cause = CLIENT_CAUSES.get(code, "%s: %s" % (code, err.response.get("Error", {}).get("Message", "")))
        cause = cause % {"bucket": bucket.bucket}
    else:
        cause = str(err).split("\n", 1)[0]
        if "CERTIFICATE_VERIFY_FAILED" in cause or "certificate verify failed" in cause:
            cause = "its TLS certificate is not trusted (%s)" % (
                "check s3_ca_file" if bucket.ca_file else "give its CA in s3_ca_file")
    return "S3 endpoint %s: %s" % (bucket.endpoint, cause)


class Progress(BaseSubscriber):
    """How far a batch of transfers is, said through ``report`` at most every ``every`` seconds (and once at the
    end of a batch that took longer than that)."""

    def __init__(self, report, verb, total, every=PROGRESS_SECONDS):
        self.report, self.verb, self.total, self.every = report, verb, total, every
        self.done, self.lock = 0, threading.Lock()
        self.started = self.said = time.monotonic()

    def on_progress(self, future=None, bytes_transferred=0, **_kwargs):
        with self.lock:
            self.done += bytes_transferred
            now = time.monotonic()
            if now - self.said < self.every:
                return
            self.said = now
            self.report("%s %.1f%s MiB (%.1f MiB/s)" % (
                self.verb, self.done / MIB, " of %.1f" % (self.total / MIB) if self.total else "",
                self.done / MIB / max(now - self.started, 1e-3)))


class Store:
    """The objects under one bucket's prefix; names are relative to the prefix."""

    def __init__(self, bucket, jobs=2, progress=print):
        if not HAS_BOTO3:
            raise RecoveryError("object storage needs boto3 on this host (Debian: python3-boto3)")
        check_bucket(bucket)
        self.bucket, self.jobs, self.progress = bucket, max(1, jobs), progress
        self._lock_checked = False
        self.progress_every = PROGRESS_SECONDS
        self.transfer = TransferConfig(multipart_threshold=PART_BYTES, multipart_chunksize=PART_BYTES,
                                       max_concurrency=4 * self.jobs, max_io_queue=16)
        verify = (bucket.ca_file or True) if bucket.validate_certs else False
        self.client = boto3.session.Session().client(
            "s3", endpoint_url="https://" + bucket.endpoint, region_name=bucket.region, verify=verify,
            aws_access_key_id=bucket.access_key, aws_secret_access_key=bucket.secret_key,
            config=Config(s3={"addressing_style": "virtual" if bucket.uri_style == "host" else "path"},
                          retries={"mode": "standard", "max_attempts": 3}, connect_timeout=bucket.timeout,
                          read_timeout=bucket.timeout, max_pool_connections=4 * self.jobs + 2))

    def key(self, name):
        return "%s/%s" % (self.bucket.prefix, name)

    def url(self, name):
        return "s3://%s/%s" % (self.bucket.bucket, self.key(name))

    def _call(self, work, *args, missing=None, **kwargs):
        """``work(*args, **kwargs)``, every failure one line; with ``missing``, an object that is not there is named
        by it."""
        try:
            return work(*args, **kwargs)
        except ClientError as err:
            if missing is not None and err.response.get("Error", {}).get("Code") in MISSING:
                raise RecoveryError("object %s %s" % (self.url(missing[0]), missing[1])) from None
            raise RecoveryError(describe(err, self.bucket)) from None
        except (BotoCoreError, S3UploadFailedError) as err:
            raise RecoveryError(describe(err, self.bucket)) from None

    def check_reachable(self):
        """The bucket answers (HEAD of the bucket): one line naming the endpoint when it does not."""
        self._call(self.client.head_bucket, Bucket=self.bucket.bucket)

    def listing(self, under):
        """{name: size} of the objects whose names start with ``under``."""
        paginator = self.client.get_paginator("list_objects_v2")
        pages = self._call(lambda: list(paginator.paginate(Bucket=self.bucket.bucket, Prefix=self.key(under))))
        start = len(self.key(""))
        return {entry["Key"][start:]: entry["Size"] for page in pages for entry in page.get("Contents", ())}

    def _lock(self):
        """The Object Lock arguments of an upload: none, or compliance mode until ``lock_days`` from now, in a
        bucket that has Object Lock (checked once; without it the upload is refused before anything is sent)."""
        if not self.bucket.lock_days:
            return {}
        if not self._lock_checked:
            answer = self._call(self._lock_configuration)
            if answer.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") != "Enabled":
                raise RecoveryError("S3 endpoint %s: bucket %s has no Object Lock, which s3_object_lock_days needs "
                                    "(create the bucket with Object Lock enabled)" % (self.bucket.endpoint,
                                                                                       self.bucket.bucket))
            self._lock_checked = True
        until = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=self.bucket.lock_days)
        return {"ObjectLockMode": "COMPLIANCE", "ObjectLockRetainUntilDate": until}

    def _lock_configuration(self):
        """The bucket's Object Lock configuration; empty when it has none."""
        try:
            return self.client.get_object_lock_configuration(Bucket=self.bucket.bucket)
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") != "ObjectLockConfigurationNotFoundError":
                raise
            return {}

    def upload(self, uploads):
        """Upload files in parallel (each locked with ``lock_days``), then check each object's stored SHA-256 (per
        part for a multipart upload) against the file; an object that does not match is named."""
        extra = dict(self._lock(), ChecksumAlgorithm="SHA256")
        progress = Progress(self.progress, "uploaded", sum(u.size for u in uploads), self.progress_every)
        manager = create_transfer_manager(self.client, self.transfer)
        with manager:
            futures = [manager.upload(u.path, self.bucket.bucket, self.key(u.name), extra_args=extra,
                                      subscribers=[progress]) for u in uploads]
            for future in futures:
                self._call(future.result)
        with ThreadPoolExecutor(max_workers=self.jobs) as pool:
            list(pool.map(self._check_upload, uploads))

    def put(self, name, raw):
        """A small object in one request, its SHA-256 sent along: the server refuses other bytes (BadDigest)."""
        self._call(self.client.put_object, Bucket=self.bucket.bucket, Key=self.key(name), Body=raw,
                   ChecksumSHA256=base64.b64encode(hashlib.sha256(raw).digest()).decode(), **self._lock())

    def _check_upload(self, upload):
        head = self._call(self.client.head_object, Bucket=self.bucket.bucket, Key=self.key(upload.name),
                          ChecksumMode="ENABLED")
        stored = head.get("ChecksumSHA256")
        if stored is None:  # a server that keeps no checksum: the object is read back
            actual, expected = self._read_back(upload.name), upload.sha256
        else:
            actual, expected = stored, self._expected_checksum(upload, "-" in stored)
        if head["ContentLength"] != upload.size or actual != expected:
            raise RecoveryError("object %s does not match the file sent (%d bytes, checksum %s)" % (
                self.url(upload.name), head["ContentLength"], actual))

    def _expected_checksum(self, upload, multipart):
        if not multipart:
            return base64.b64encode(bytes.fromhex(upload.sha256)).decode()
        part = ChunksizeAdjuster().adjust_chunksize(self.transfer.multipart_chunksize, upload.size)
        digests = []
        with open(upload.path, "rb") as handle:
            for block in iter(lambda: handle.read(part), b""):
                digests.append(hashlib.sha256(block).digest())
        return "%s-%d" % (base64.b64encode(hashlib.sha256(b"".join(digests)).digest()).decode(), len(digests))

    def _read_back(self, name):
        """The object's SHA-256 (hex), read in blocks of 1 MiB."""
        def digest():
            hashed = hashlib.sha256()
            for block in self.client.get_object(Bucket=self.bucket.bucket, Key=self.key(name))["Body"].iter_chunks(
                    1024 * 1024):
                hashed.update(block)
            return hashed.hexdigest()
        return self._call(digest)

    def get(self, name, limit):
        """A small object's bytes, at most ``limit``; a missing one is named."""
        raw = self._call(lambda: self.client.get_object(Bucket=self.bucket.bucket, Key=self.key(name))["Body"].read(
            limit + 1), missing=(name, "is not in the bucket"))
        if len(raw) > limit:
            raise RecoveryError("object %s is larger than %d bytes" % (self.url(name), limit))
        return raw

    def download(self, names, targets, total=0):
        """Download the objects ``names`` (``total`` bytes, for the progress lines) in parallel into the files
        ``targets`` (directories made 0700, files 0600); a missing object is named."""
        for target in targets:
            make_private_dir(os.path.dirname(target))
        progress = Progress(self.progress, "downloaded", total, self.progress_every)
        manager = create_transfer_manager(self.client, self.transfer)
        with manager:
            futures = [manager.download(self.bucket.bucket, self.key(name), target, subscribers=[progress])
                       for name, target in zip(names, targets, strict=True)]
            for name, future in zip(names, futures, strict=True):
                self._call(future.result, missing=(name, "is missing from the bucket"))
        for target in targets:
            os.chmod(target, 0o600)

    def delete(self, names):
        """Delete objects in the order given (a thousand per request)."""
        names = list(names)
        for start in range(0, len(names), 1000):
            self._call(self.client.delete_objects, Bucket=self.bucket.bucket, Delete={
                "Objects": [{"Key": self.key(name)} for name in names[start:start + 1000]], "Quiet": True})

    def abort_uploads(self):
        """Abort what killed runs left half uploaded under the prefix (parts the server would otherwise keep)."""
        paginator = self.client.get_paginator("list_multipart_uploads")
        pages = self._call(lambda: list(paginator.paginate(Bucket=self.bucket.bucket, Prefix=self.key(""))))
        for upload in (u for page in pages for u in page.get("Uploads", ())):
            self._call(self.client.abort_multipart_upload, Bucket=self.bucket.bucket, Key=upload["Key"],
                       UploadId=upload["UploadId"])

"""An S3 server for the tests: SeaweedFS (scripts/sandbox.py) on free ports of 127.0.0.1, TLS with a certificate made
here, one identity; removed, with its data, when its module ends."""

from __future__ import annotations

import secrets
import tempfile

import pytest
from sandbox import S3Server


@pytest.fixture(scope="module")
def s3_server(module_dir):
    server = S3Server(tempfile.mkdtemp(prefix="s3-", dir=module_dir))
    try:
        yield server.start()
    finally:
        server.destroy()


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh bucket per test, emptied and removed afterwards."""
    name = "christmas-%s" % secrets.token_hex(4)
    client = s3_server.client()
    client.create_bucket(Bucket=name)
    yield name
    if s3_server.process.poll() is None:
        _empty(client, name)
        client.delete_bucket(Bucket=name)


def _empty(client, name):
    for upload in client.list_multipart_uploads(Bucket=name).get("Uploads", ()):
        client.abort_multipart_upload(Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"])
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
        keys = [{"Key": entry["Key"]} for entry in page.get("Contents", ())]
        if keys:
            client.delete_objects(Bucket=name, Delete={"Objects": keys, "Quiet": True})


def s3_vars(server, bucket, prefix="platform"):
    """The inventory's christmas_s3_* for ``bucket`` on ``server``."""
    return {"christmas_s3_endpoint": server.endpoint, "christmas_s3_bucket": bucket, "christmas_s3_prefix": prefix,
            "christmas_s3_access_key": server.access_key, "christmas_s3_secret_key": server.secret_key,
            "christmas_s3_ca_file": server.ca_file, "christmas_s3_timeout": 10}


def bucket_objects(server, bucket):
    """{key: bytes} of every object in the bucket."""
    client = server.client()
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for entry in page.get("Contents", ()):
            found[entry["Key"]] = client.get_object(Bucket=bucket, Key=entry["Key"])["Body"].read()
    return found


"""The two database hosts of the ha scenario, as testinfra hosts."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def db1(lab_host):
    return lab_host("db1")


@pytest.fixture(scope="module")
def db2(lab_host):
    return lab_host("db2")

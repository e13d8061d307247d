"""TimescaleDB's pure parts: the catalog-first restore lists and the comparison of recorded objects."""

from __future__ import annotations

import pytest
from faults.manifest_samples import valid_manifest

from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.db.timescaledb import differences, split_restore_list
from ansible_collections.christmas.recovery.plugins.module_utils.sets.manifest import check_schema

TOC = """;
; Archive created at 2026-12-06 20:00:00 UTC
;
3401; 2615 16390 SCHEMA - _timescaledb_cache postgres
3402; 1259 16392 TABLE public market_data christmas
3474; 0 16392 TABLE DATA _timescaledb_catalog hypertable postgres
3478; 0 16419 TABLE DATA _timescaledb_catalog chunk postgres
3481; 0 16451 TABLE DATA _timescaledb_config bgw_job postgres
3482; 0 0 SEQUENCE SET _timescaledb_catalog chunk_id_seq postgres
3689; 0 16559 TABLE DATA _timescaledb_internal _hyper_1_10_chunk postgres
3690; 0 16565 TABLE DATA public market_data christmas
3691; 0 16566 TABLE DATA public _timescaledb_catalog_notes christmas
3800; 2606 16600 CONSTRAINT public market_data market_data_pkey christmas
"""
PRE_DATA = """;
3401; 2615 16390 SCHEMA - _timescaledb_cache postgres
3402; 1259 16392 TABLE public market_data christmas
"""


def test_the_schema_and_the_catalog_data_load_first_in_dump_order_and_the_rest_after():
    first, rest = split_restore_list(TOC, PRE_DATA)

    assert [line.split(";")[0] for line in first.splitlines()] == ["3401", "3402", "3474", "3478", "3481", "3482"]
    assert [line.split(";")[0] for line in rest.splitlines()] == ["3689", "3690", "3691", "3800"]


FACTS = {"hypertables": {"public.market_data": {"chunks": 60, "compressed_chunks": 50}},
         "continuous_aggregates": {"public.market_data_1h": {"hypertable": "public.market_data"}},
         "jobs": {"1000": {"proc": "_timescaledb_functions.policy_compression", "scheduled": True,
                           "hypertable": "public.market_data"}}}


def test_differences_name_each_object_that_is_missing_extra_or_changed():
    actual = {"hypertables": {"public.market_data": {"chunks": 60, "compressed_chunks": 49},
                              "public.ticks": {"chunks": 1, "compressed_chunks": 0}},
              "continuous_aggregates": {}, "jobs": FACTS["jobs"]}

    assert differences(FACTS, actual) == [
        "hypertable public.ticks not in the set", "hypertable public.market_data: compressed chunks 49, expected 50",
        "continuous aggregate public.market_data_1h missing"]
    assert differences(FACTS, actual, objects_only=True) == [
        "hypertable public.ticks not in the set", "continuous aggregate public.market_data_1h missing"]
    assert differences(FACTS, FACTS) == []


def _manifest_with(facts):
    data = valid_manifest()
    data["db"]["timescaledb"] = facts
    return data


def test_a_manifest_with_timescaledb_facts_passes_the_schema_check():
    check_schema(_manifest_with(FACTS), "manifest.json")
    check_schema(_manifest_with(dict(FACTS, jobs={"1": {"proc": "_timescaledb_functions.policy_telemetry",
                                                        "scheduled": True, "hypertable": None}})), "manifest.json")


@pytest.mark.parametrize("facts, field", [
    ("x", "hypertables"),
    (dict(FACTS, hypertables={"public.market_data": {"chunks": -1, "compressed_chunks": 0}}), "hypertables"),
    (dict(FACTS, hypertables={"public.market_data": {"chunks": 1}}), "hypertables"),
    (dict(FACTS, continuous_aggregates={"public.market_data_1h": {"hypertable": 7}}), "continuous_aggregates"),
    (dict(FACTS, jobs={"1000": {"proc": "p", "scheduled": "yes", "hypertable": None}}), "jobs"),
    ({key: value for key, value in FACTS.items() if key != "jobs"}, "jobs"),
])
def test_malformed_timescaledb_facts_are_refused_naming_the_field(facts, field):
    with pytest.raises(RecoveryError) as caught:
        check_schema(_manifest_with(facts), "manifest.json")
    assert "db.timescaledb.%s is missing or malformed" % field in str(caught.value)

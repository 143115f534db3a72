"""Synthetic customer records: deterministic, unique, clearly fake."""

from __future__ import annotations

import re

import pytest

from unlearnkit.errors import UnlearnkitError
from unlearnkit.showcase.records import MAX_RECORDS, synthetic_records


def test_same_seed_same_records():
    assert synthetic_records(40, seed=3) == synthetic_records(40, seed=3)
    # a longer list starts with the shorter one: never-seen customers extend the trained ones
    assert synthetic_records(50, seed=3)[:40] == synthetic_records(40, seed=3)


def test_different_seeds_differ():
    assert [r.name for r in synthetic_records(20, 0)] != [r.name for r in synthetic_records(20, 1)]


def test_unique_names_and_emails():
    records = synthetic_records(300, seed=0)
    assert len({r.name for r in records}) == 300
    assert len({r.email for r in records}) == 300
    assert len({r.text() for r in records}) == 300


def test_clearly_fake():
    for record in synthetic_records(100, seed=7):
        assert record.email.endswith("@mail.example")  # RFC 2606 reserved domain
        assert re.fullmatch(r"[2-9]\d\d-555-01\d\d", record.phone)  # the 555-01xx range reserved for fiction
        assert record.email in record.text() and record.phone in record.text() and record.name in record.text()


def test_prefix_stops_at_the_field():
    record = synthetic_records(1)[0]
    assert record.prefix("E-mail") == f"Customer record. Name: {record.name}. E-mail:"
    assert record.text().startswith(record.prefix("Phone"))
    assert record.prefix("Phone").endswith("Phone:") and record.phone not in record.prefix("Phone")
    with pytest.raises(ValueError):
        record.prefix("Fax")


def test_too_many_is_a_clear_error():
    with pytest.raises(UnlearnkitError, match="at most"):
        synthetic_records(MAX_RECORDS + 1)

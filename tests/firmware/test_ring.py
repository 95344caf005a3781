"""The offline ring buffer, in RAM and in a file, on MicroPython and CPython."""

from __future__ import annotations

import pytest

from tests.firmware.conftest import cases_fixture
from tests.firmware.harness import Cases

pytestmark = pytest.mark.micropython

cases = cases_fixture("ring_cases")


def test_records_leave_in_order_and_only_the_oldest_are_dropped(cases: Cases) -> None:
    ram, file = cases.check("case_fifo_with_drops_in_ram_and_file")

    assert ram == file  # the two stores behave identically
    appended, popped, dropped, left = ram[:4]
    assert appended == popped + dropped + left
    assert dropped > 0 and popped > 0  # the run exercised both


def test_a_full_ring_drops_the_oldest_and_counts_them(cases: Cases) -> None:
    assert cases.check("case_full_ring_drops_oldest_and_counts") == [4, 2, [2, 3, 4, 5]]


def test_a_file_ring_survives_reopening(cases: Cases) -> None:
    first_ok, after_pop_ok, generation, lost = cases.check("case_file_ring_survives_reopen")

    assert first_ok and after_pop_ok
    assert generation == 7  # 5 appends, 1 pop, 1 append: one header write each
    assert lost == 0


def test_a_torn_header_write_falls_back_to_the_previous_header(cases: Cases) -> None:
    assert cases.check("case_torn_header_write_falls_back_to_the_previous_state") == [True, 2, 0]


def test_a_damaged_record_cuts_the_ring_and_is_reported(cases: Cases) -> None:
    kept, lost, dropped, reports, appends_after = cases.check("case_damaged_record_cuts_the_ring_and_is_reported")

    assert kept and appends_after
    assert (lost, dropped) == (3, 3)
    assert reports == [["corrupt_record", 3]]


def test_misuse_is_refused(cases: Cases) -> None:
    assert cases.check("case_misuse_is_refused") == ["RingError", "RingError", "RingError", 0, []]


def test_a_file_of_another_size_starts_afresh(cases: Cases) -> None:
    assert cases.check("case_a_file_of_another_size_starts_afresh") == [0, 1984]

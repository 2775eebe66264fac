"""The parser process's small pure parts: memory quantities, and how a death is described."""

from __future__ import annotations

import pytest

from icechunk_operator.engine.parse_protocol import describe_exit, memory_bytes


@pytest.mark.parametrize(
    ("quantity", "expected"),
    [("2Gi", 2 * 2**30), ("512Mi", 512 * 2**20), ("1.5Gi", 3 * 2**29), ("1G", 10**9), ("1000000", 10**6)],
)
def test_memory_quantities_read_as_kubernetes_reads_them(quantity: str, expected: int) -> None:
    assert memory_bytes(quantity) == expected


def test_a_quantity_that_is_not_one_names_the_field() -> None:
    with pytest.raises(ValueError, match=r"execution.workerMemory: '2 GB' is not a memory quantity"):
        memory_bytes("2 GB")


def test_a_death_names_its_signal_or_exit_code() -> None:
    assert describe_exit(-11) == "parser process died on this file: killed by signal 11 (SIGSEGV)"
    assert describe_exit(-9).endswith("killed by signal 9 (SIGKILL) (the out-of-memory killer?)")
    assert describe_exit(3) == "parser process died on this file: it exited with code 3"

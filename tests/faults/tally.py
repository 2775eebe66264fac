"""The fault matrix's tally: what each fault test injected or tried, and what it found lost,
duplicated or leaked, printed as one table at the end of the run (the README's figures).

Tests add rows through the ``fault_tally`` fixture; the table is printed by
``pytest_terminal_summary`` in ``tests/conftest.py`` and written to ``$FAULT_TALLY_JSON`` when set.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Row:
    injected: int = 0
    lost: int = 0
    duplicated: int = 0
    leaked: int = 0


@dataclass
class FaultTally:
    rows: dict[tuple[str, str], Row] = field(default_factory=lambda: defaultdict(Row))

    def add(
        self,
        category: str,
        kind: str,
        injected: int = 1,
        *,
        lost: int = 0,
        duplicated: int = 0,
        leaked: int = 0,
    ) -> None:
        """One more fault (or bad input, or secret check) of ``kind``, with what it cost."""
        row = self.rows[(category, kind)]
        row.injected += injected
        row.lost += lost
        row.duplicated += duplicated
        row.leaked += leaked

    def lines(self) -> list[str]:
        if not self.rows:
            return []
        out = [
            "| Category | Kind | Injected / tried | Lost | Duplicated | Leaked |",
            "| --- | --- | ---: | ---: | ---: | ---: |",
        ]
        for (category, kind), row in sorted(self.rows.items()):
            out.append(
                f"| {category} | {kind} | {row.injected} | {row.lost} | {row.duplicated} | {row.leaked} |"
            )
        return out

    def write(self) -> None:
        target = os.environ.get("FAULT_TALLY_JSON")
        if not target or not self.rows:
            return
        rows = [{"category": c, "kind": k, **vars(r)} for (c, k), r in sorted(self.rows.items())]
        Path(target).write_text(json.dumps(rows, indent=1))


TALLY = FaultTally()

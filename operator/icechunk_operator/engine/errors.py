"""The engine's import path for ``Refused``, the error that fails a batch at once instead of retrying it.

The class is defined with the API models, the lowest layer, because their validators refuse
specs with it too; the engine raises the same class, so one ``except Refused`` catches both.
"""

from __future__ import annotations

from icechunk_operator.api.errors import Refused

__all__ = ["Refused"]

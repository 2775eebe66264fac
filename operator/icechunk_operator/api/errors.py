"""The one line between "refused" and "crashed", which decides whether a batch is retried.

A :class:`Refused` error means the batch cannot run as specified: a source outside the store's
containers, a group path that escapes the store, an index without the columns it needs, a tag
that exists already. Running it again changes nothing until the spec or its inputs change, so the
commit pod exits 2 and the Job fails at once, with the message in ``status.message``. Every other
exception is a crash (a late scheduler, a storage 5xx, an expired credential): the Job retries
the pod, which resumes from the last commit.

It lives with the models because they refuse specs too (a grouping template that escapes the
store fails validation before any engine runs), and the models may not import the engine;
``icechunk_operator.engine.errors`` re-exports it for the engine's own refusals.
"""

from __future__ import annotations


class Refused(ValueError):
    """The batch cannot run as specified; the message names the field or input and is safe to show."""

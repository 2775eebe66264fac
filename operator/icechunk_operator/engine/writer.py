"""The single writer: puts finished group payloads into an Icechunk session, many at a time.

``to_icechunk`` costs ~21 ms per group because every call makes ~16 blocking round trips into
zarr's event loop. Here the documents are already built (on the workers), so a group is a
handful of async puts plus one ``set_virtual_refs_arr_async``, and a whole flush of groups runs
as one ``asyncio.gather``. The writer calls the Icechunk store's async API on its own loop and
never through zarr's sync layer (concurrent zarr calls into one IcechunkStore can deadlock on
``str(store)``).
"""

from __future__ import annotations

import asyncio
import posixpath
from collections.abc import Iterable
from typing import Any

from icechunk_operator.engine.documents import GroupPayload, group_document
from icechunk_operator.engine.planning import WriteMode
from icechunk_operator.failpoints import failpoint

#: Errors of the storage, the machine or the session, never of one group's content: these end
#: the run (a crash, retried), where any other error at write time fails only its group.
NOT_ABOUT_THE_GROUP: tuple[type[BaseException], ...] = (OSError, MemoryError)


def is_about_the_group(error: BaseException) -> bool:
    """True when ``error`` concerns what one group's payload holds (a document or a reference
    the store refuses), so the group's files fail and the run goes on."""
    import icechunk

    infrastructure = (
        icechunk.StorageError,
        icechunk.RepositoryNotFoundError,
        icechunk.SessionStateError,
        icechunk.ConflictError,
        *NOT_ABOUT_THE_GROUP,
    )
    return not isinstance(error, infrastructure)


class GroupWriter:
    """Writes payloads into the current session; knows which parent groups already exist."""

    def __init__(self, runner: asyncio.Runner) -> None:
        self._runner = runner
        self._known_groups: set[str] = {""}
        self._prototype: Any = None

    def write(self, session: Any, payloads: Iterable[GroupPayload]) -> dict[str, Exception]:
        """Write ``payloads``; a group the store refuses is returned with its error (the
        session then holds part of it: see :class:`~icechunk_operator.engine.commits.CheckpointedWriter`),
        an error of the storage itself is raised."""
        payloads = list(payloads)
        refused: dict[str, Exception] = {}
        fast = [p for p in payloads if p.mode != WriteMode.APPEND]
        if fast:
            refused.update(self._runner.run(self._write_all(session.store, fast)))
        for payload in payloads:
            if payload.mode == WriteMode.APPEND:
                try:
                    self._append(session, payload)
                except Exception as error:
                    if not is_about_the_group(error):
                        raise
                    refused[payload.group] = error
        return refused

    def put_documents(self, session: Any, documents: dict[str, bytes]) -> None:
        self._runner.run(self._put_all(session.store, documents))

    def delete_groups(self, session: Any, groups: Iterable[str]) -> None:
        async def delete_all() -> None:
            await asyncio.gather(*(session.store.delete_dir(g) for g in groups))

        self._runner.run(delete_all())

    async def _put_all(self, store: Any, documents: dict[str, bytes]) -> None:
        await self._put_documents(store, "", documents)

    async def _put_documents(self, store: Any, prefix: str, documents: dict[str, bytes]) -> None:
        """Metadata first, then chunks: a chunk put before its array node exists is refused."""
        for metadata in (True, False):
            await asyncio.gather(
                *(
                    store.set(f"{prefix}{key}", self._buffer(data))
                    for key, data in documents.items()
                    if key.endswith("zarr.json") == metadata
                )
            )

    async def _write_all(self, store: Any, payloads: list[GroupPayload]) -> dict[str, Exception]:
        # Parents first, once each: concurrent creation of the same parent would collide.
        parents = sorted({p for payload in payloads for p in _parents(payload.group)})
        await self._ensure_groups(store, parents)
        replaced = [p.group for p in payloads if p.mode == WriteMode.REPLACE]
        if replaced:
            await asyncio.gather(*(store.delete_dir(group) for group in replaced))
        outcomes = await asyncio.gather(
            *(self._write_one(store, payload) for payload in payloads), return_exceptions=True
        )
        refused: dict[str, Exception] = {}
        for payload, outcome in zip(payloads, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                if not isinstance(outcome, Exception) or not is_about_the_group(outcome):
                    raise outcome
                refused[payload.group] = outcome
        self._known_groups.update(p.group for p in payloads if p.group not in refused)
        return refused

    async def _ensure_groups(self, store: Any, groups: list[str]) -> None:
        unknown = [g for g in groups if g not in self._known_groups]
        exists = await asyncio.gather(*(store.exists(f"{g}/zarr.json") for g in unknown))
        missing = [g for g, present in zip(unknown, exists, strict=True) if not present]
        await asyncio.gather(
            *(store.set(f"{g}/zarr.json", self._buffer(group_document({}))) for g in missing)
        )
        self._known_groups.update(unknown)

    async def _write_one(self, store: Any, payload: GroupPayload) -> None:
        await self._put_documents(store, f"{payload.group}/", payload.documents)
        failpoint("write.group")  # TEST ONLY when armed: a group the store refuses, half written
        # References after the array documents they belong to.
        await asyncio.gather(
            *(
                self._set_refs(
                    store,
                    f"{payload.group}/{refs.array}",
                    refs.grid_shape,
                    refs.locations,
                    refs.offsets,
                    refs.lengths,
                    refs.checksum,
                )
                for refs in payload.refs
            )
        )

    @staticmethod
    async def _set_refs(
        store: Any,
        path: str,
        grid: tuple[int, ...],
        locations: list[str],
        offsets: Any,
        lengths: Any,
        checksum: Any,
    ) -> None:
        failed = await store.set_virtual_refs_arr_async(
            path, grid, locations, offsets, lengths, validate_containers=True, checksum=checksum
        )
        if failed:
            raise ValueError(
                f"{path}: {len(failed)} references are outside the store's virtual chunk "
                f"containers (first chunk {failed[0]})"
            )

    def _append(self, session: Any, payload: GroupPayload) -> None:
        """Appends resize existing arrays: VirtualiZarr's own path does that correctly."""
        if payload.dataset is None or payload.dimension is None:
            raise ValueError(f"{payload.group}: an append needs its dataset and dimension")
        checksums = {s.checksum for s in payload.sources}
        checksum = checksums.pop() if len(checksums) == 1 else None
        payload.dataset.vz.to_icechunk(
            session.store,
            group=payload.group,
            append_dim=payload.dimension,
            last_updated_at=checksum if not isinstance(checksum, str) else None,
        )

    def _buffer(self, data: bytes) -> Any:
        if self._prototype is None:
            from zarr.core.buffer import default_buffer_prototype

            self._prototype = default_buffer_prototype()
        return self._prototype.buffer.from_bytes(data)


def _parents(group: str) -> list[str]:
    parents = []
    parent = posixpath.dirname(group)
    while parent:
        parents.append(parent)
        parent = posixpath.dirname(parent)
    return parents

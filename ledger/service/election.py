"""One writer per database, elected by the replicas through PostgreSQL, and
the route every mutating command takes to it.

Every `ledger serve` process runs an Election. The one that holds the writer
lease (a row with a term, ledger/storage/lease.py) runs the Writer and the
Sweeper; every other process forwards its validated commands to the address
the lease row publishes (ledger/transport/internal.py). Reads never come here.

Safety does not depend on timing: each batch of the writer checks its term in
its own SERIALIZABLE transaction (the fence, ledger.storage.postgres), so a
writer that lost the lease (paused, partitioned) cannot commit. Timing only
decides how soon a new writer takes over: at once when the old writer's
process is gone (its lease session closed), else when its lease expired.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ledger.domain import commands as c
from ledger.domain import errors
from ledger.domain.model import Result
from ledger.observability import metrics
from ledger.service.clock import Clock
from ledger.service.outcomes import Outcome
from ledger.service.ports import CommandSink, StorageUnavailable, Store
from ledger.service.sweeper import Sweeper
from ledger.service.tasks import stop_task
from ledger.service.writer import Writer, WriterSettings

log = logging.getLogger("ledger.election")


@dataclass(frozen=True)
class LeaseView:
    term: int
    holder: str  # "" when nobody ever held it
    address: str


class LeaseStore(Protocol):
    """The lease row. Every method raises StorageUnavailable when the database fails."""

    async def acquire(self, holder: str, address: str, ttl_s: float) -> int | None:
        """The new term when this call took the lease, else None."""
        ...

    async def renew(self, holder: str, term: int, ttl_s: float) -> bool:
        """False when `term` is not the current term any more."""
        ...

    async def release(self, holder: str, term: int) -> None: ...

    async def current(self) -> LeaseView: ...

    async def close(self) -> None: ...


class RemoteSink(CommandSink, Protocol):
    """A forwarding client to one writer address."""

    async def close(self) -> None: ...


class FencedStore(Store, Protocol):
    async def set_writer_term(self, term: int) -> None: ...


@dataclass(frozen=True)
class ElectionSettings:
    lease_s: float = 3.0
    poll_s: float = 0.25
    # How long a command waits for a writer to be known before UNAVAILABLE.
    writer_wait_s: float = 2.0
    # False: follow only, never take the lease (`serve --never-writer`).
    eligible: bool = True

    @property
    def renew_s(self) -> float:
        return self.lease_s / 3


class WriterRole:
    """What holding the lease starts: a Writer fenced with the term, and the sweeper
    (which submits to that Writer: the sweeper runs on the writer only)."""

    def __init__(self, store: FencedStore, clock: Clock, writer_settings: WriterSettings) -> None:
        self._store = store
        self._clock = clock
        self._writer_settings = writer_settings
        self._writer: Writer | None = None
        self.sweeper: Sweeper | None = None  # set by the composition root

    async def submit(self, cmd: c.MutatingCommand) -> tuple[Result, bool]:
        """The sweeper's sink. Errors: the command's, WriterUnavailable off term."""
        writer = self._writer
        if writer is None:
            raise errors.WriterUnavailable("not the writer", {"cause": "not the writer"})
        return await writer.submit(cmd)

    async def start(self, term: int, on_fenced: Callable[[], None]) -> Writer:
        await self._store.set_writer_term(term)
        self._writer = Writer(self._store, self._clock, self._writer_settings, on_fenced)
        self._writer.start()
        if self.sweeper is not None:
            self.sweeper.start()
        return self._writer

    async def stop(self, database_lost: bool = False) -> None:
        if self.sweeper is not None:
            await self.sweeper.stop()
        if self._writer is not None:
            await self._writer.stop(database_lost)
            self._writer = None


class Election:
    """The CommandSink of every process: the local Writer while this process
    holds the lease, else a forwarding client to the writer's address."""

    def __init__(
        self,
        lease: LeaseStore,
        role: WriterRole,
        holder: str,
        address: str,
        connect: Callable[[str], RemoteSink],
        settings: ElectionSettings = ElectionSettings(),
    ) -> None:
        self._lease = lease
        self._role = role
        self.holder = holder
        self.address = address
        self._connect = connect
        self._settings = settings
        self.term: int | None = None  # set while this process is the writer
        self._local: Writer | None = None
        self._remote: RemoteSink | None = None
        self._remote_address = ""
        self._known = asyncio.Event()
        self._poke = asyncio.Event()
        self._renew_started = 0.0
        # Why the last lease operation failed, while the database is unreachable.
        self._database_trouble = ""
        self._task: asyncio.Task[None] | None = None

    # ---- the route ------------------------------------------------------------

    async def submit(self, cmd: c.MutatingCommand) -> tuple[Result, bool]:
        """Errors: the command's own; WriterUnavailable when no writer answers, or
        DatabaseUnavailable when none can be elected because the database is unreachable."""
        sink: CommandSink | None = self._local or self._remote
        if sink is None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._settings.writer_wait_s):
                    await self._known.wait()
            sink = self._local or self._remote
            if sink is None and self._database_trouble:
                raise errors.DatabaseUnavailable(
                    "the database is unavailable, so no writer can be elected; retry with the"
                    " same idempotency key",
                    {"cause": self._database_trouble},
                )
            if sink is None:
                raise errors.WriterUnavailable(
                    "no writer is elected right now; retry with the same idempotency key",
                    {"cause": "no writer"},
                )
        return await sink.submit(cmd)

    def enqueue_local(self, cmd: c.MutatingCommand) -> asyncio.Future[tuple[Outcome, bool]]:
        """For commands forwarded by other processes (Writer.enqueue): run here, never
        forwarded again. Errors: WriterUnavailable when this is not the writer."""
        local = self._local
        if local is None:
            raise errors.WriterUnavailable(
                "this process is not the elected writer (any more); retry with the same"
                " idempotency key",
                {"cause": "not the writer"},
            )
        return local.enqueue(cmd)

    @property
    def writer_address(self) -> str:
        """Where the writer is, as far as this process knows ("" when unknown)."""
        return self.address if self._local is not None else self._remote_address

    def poke(self) -> None:
        """Look at the lease now (a batch was fenced: the lease is someone else's)."""
        self._poke.set()

    # ---- the loop --------------------------------------------------------------

    async def start(self) -> None:
        """One round at once (a lone process is the writer before it serves), then the loop."""
        await self._round()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="ledger-election")

    async def stop(self) -> None:
        """Stop the loop; a writer stops its Writer and releases the lease at once."""
        if self._task is not None:
            await stop_task(self._task)
            self._task = None
        term = self.term
        await self._step_down("stopping")
        if term is not None:
            try:
                async with asyncio.timeout(2.0):
                    await self._lease.release(self.holder, term)
                log.info("released the writer lease (term %d)", term)
            except (StorageUnavailable, TimeoutError) as exc:
                log.warning("could not release the writer lease: %s", exc)
        await self._set_remote("")
        await self._lease.close()

    async def _run(self) -> None:
        while True:
            wait_s = self._settings.renew_s if self.term is not None else self._settings.poll_s
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):
                    await self._poke.wait()
            self._poke.clear()
            try:
                await self._round()
            except Exception:
                log.exception("election round failed")

    async def _round(self) -> None:
        if self.term is None:
            await self._follow()
        else:
            await self._lead()

    async def _follow(self) -> None:
        s = self._settings
        try:
            started = time.monotonic()
            term = None
            if s.eligible:
                term = await self._lease.acquire(self.holder, self.address, s.lease_s)
            if term is None:
                view = await self._lease.current()
        except StorageUnavailable as exc:
            log.warning("writer lease unreadable: %s", exc)
            self._database_trouble = str(exc)
            return
        self._database_trouble = ""
        if term is not None:
            self._local = await self._role.start(term, self.poke)
            self.term, self._renew_started = term, started
            await self._set_remote("")
            self._known.set()
            metrics.WRITER_TERM.set(term)
            metrics.WRITER_LEADER.set(1)
            log.info("elected the writer (term %d) at %s", term, self.address)
            return
        live = view.holder not in ("", self.holder)
        await self._set_remote(view.address if live else "")

    async def _lead(self) -> None:
        s = self._settings
        term = self.term
        if term is None:
            return
        started = time.monotonic()
        try:
            async with asyncio.timeout(s.renew_s):
                kept: bool | None = await self._lease.renew(self.holder, term, s.lease_s)
        except (StorageUnavailable, TimeoutError) as exc:
            log.warning("writer lease not renewed: %s", exc)
            self._database_trouble = str(exc) or type(exc).__name__
            kept = None
        else:
            self._database_trouble = ""
        if kept:
            self._renew_started = started
        elif kept is False:
            await self._step_down(f"term {term} was taken over")
        elif time.monotonic() - self._renew_started > s.lease_s:
            await self._step_down(f"lease of term {term} not renewed for {s.lease_s} s")

    async def _step_down(self, why: str) -> None:
        if self.term is None:
            return
        log.warning("no longer the writer: %s", why)
        self.term, self._local = None, None
        self._known.clear()
        metrics.WRITER_LEADER.set(0)
        await self._role.stop(database_lost=bool(self._database_trouble))

    async def _set_remote(self, address: str) -> None:
        if address == self._remote_address:
            return
        old, self._remote = self._remote, None
        self._remote_address = address
        if address:
            self._remote = self._connect(address)
            self._known.set()
            log.info("the writer is at %s", address)
        elif self._local is None:
            self._known.clear()
        if old is not None:
            await old.close()

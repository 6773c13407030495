"""A loopback TCP proxy that loses one reply: it kills the server once the reply is on its way.

The server sends a call's response HEADERS only after the command's
transaction committed. When armed, the proxy holds back the first response
HEADERS frame it sees, runs `on_reply_committed` (the test kills the server
there) and drops both connections: the client gets UNAVAILABLE for a call the
ledger did apply, which is exactly what its retry with the same key must survive.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

_FRAME_HEADER_LEN = 9
_HEADERS = 0x1


class ReplyLosingProxy:
    def __init__(
        self, upstream_port: int, on_reply_committed: Callable[[], Awaitable[None]]
    ) -> None:
        self._upstream_port = upstream_port
        self._on_reply_committed = on_reply_committed
        self._server: asyncio.Server | None = None
        self.armed = False
        self.triggered = asyncio.Event()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)

    @property
    def target(self) -> str:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return f"127.0.0.1:{port}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self._upstream_port)
        except OSError:  # the server is down (being restarted): the client will retry
            client_w.close()
            return
        upstream = asyncio.create_task(self._copy(client_r, server_w))
        try:
            await self._copy_frames(server_r, client_w)
        finally:
            upstream.cancel()
            for w in (client_w, server_w):
                w.close()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await upstream

    @staticmethod
    async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()

    async def _copy_frames(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Server to client, frame by frame (the server side of HTTP/2 has no preface)."""
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                header = await reader.readexactly(_FRAME_HEADER_LEN)
                payload = await reader.readexactly(int.from_bytes(header[:3], "big"))
                stream_id = int.from_bytes(header[5:9], "big") & 0x7FFFFFFF
                if self.armed and header[3] == _HEADERS and stream_id > 0:
                    self.armed = False
                    await self._on_reply_committed()
                    self.triggered.set()
                    return  # the reply never reaches the client
                writer.write(header + payload)
                await writer.drain()


class CuttableProxy:
    """A loopback TCP proxy whose `cut()` drops every connection it carries at once.

    A client streaming through it sees UNAVAILABLE; the proxy keeps accepting,
    so a reconnect goes through to the same server. `connections` counts the
    connections it has accepted.
    """

    def __init__(self, upstream_port: int) -> None:
        self._upstream_port = upstream_port
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections = 0
        self.cuts = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)

    @property
    def target(self) -> str:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return f"127.0.0.1:{port}"

    def cut(self) -> None:
        """Closes both sides of every connection now."""
        self.cuts += 1
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self._upstream_port)
        except OSError:
            client_w.close()
            return
        self._writers |= {client_w, server_w}
        pumps = [
            asyncio.create_task(ReplyLosingProxy._copy(client_r, server_w)),
            asyncio.create_task(ReplyLosingProxy._copy(server_r, client_w)),
        ]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            for w in (client_w, server_w):
                self._writers.discard(w)
                w.transport.abort()
            for pump in pumps:
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    await pump

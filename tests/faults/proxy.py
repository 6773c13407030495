"""A loopback TCP proxy between the server and PostgreSQL that a test can cut, hang or pause.

It runs its own event loop in a thread, so sync tests and async tests drive it
alike, and the server under test sees a real network failure:
- `cut("refuse")`: every connection reset (RST) and new ones refused, like a
  database host that went down;
- `cut("blackhole")`: connections stay open but nothing gets through, like a
  partition where packets vanish (the case where a client without timeouts hangs);
- `pause()` / `resume()`: bytes are held, then delivered, so a call is surely in
  the middle of its transaction while the test does something to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qs, urlsplit

T = TypeVar("T")
CutMode = Literal["refuse", "blackhole"]


class _Conn:
    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream = upstream
        self.blackholed = False

    def abort(self) -> None:
        for writer in (self.client, self.upstream):
            sock = writer.get_extra_info("socket")
            if sock is not None:
                # Linger 0: close with RST, as a crashed host or a firewall would.
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()


class TcpProxy:
    """Listens on 127.0.0.1; forwards to a TCP host:port or, when `unix_path` is set, a socket."""

    def __init__(
        self,
        upstream_host: str = "",
        upstream_port: int = 0,
        listen_port: int = 0,
        unix_path: str = "",
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.unix_path = unix_path
        self.port = listen_port
        self.mode: CutMode | None = None
        self.conns: set[_Conn] = set()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="tcp-proxy", daemon=True)
        self.server: asyncio.Server | None = None
        self.flowing: asyncio.Event | None = None

    @classmethod
    def for_database(cls, database_url: str) -> TcpProxy:
        """A proxy to the PostgreSQL of `database_url` (TCP, or the embedded one's socket)."""
        parts = urlsplit(database_url)
        socket_dir = parse_qs(parts.query).get("host", [""])[0]
        port = parts.port or 5432
        if parts.hostname:
            return cls(parts.hostname, port)
        return cls(unix_path=f"{socket_dir or '/tmp'}/.s.PGSQL.{port}")

    # ---- sync API (any thread) ---------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=10)

    def start(self) -> None:
        self.thread.start()
        self._call(self._start())

    def url_for(self, database_url: str) -> str:
        """`database_url` reaching the same database through the proxy (TCP, no socket dir)."""
        parts = urlsplit(database_url)
        user = parts.username or "postgres"
        password = f":{parts.password}" if parts.password else ""
        return f"postgresql://{user}{password}@127.0.0.1:{self.port}{parts.path}"

    def cut(self, mode: CutMode = "refuse") -> None:
        self._call(self._cut(mode))

    def restore(self) -> None:
        self._call(self._restore())

    def pause(self) -> None:
        self._call(self._set_flowing(False))

    def resume(self) -> None:
        self._call(self._set_flowing(True))

    def close(self) -> None:
        if not self.thread.is_alive():
            return
        self._call(self._cut("refuse"))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)

    # ---- inside the proxy's loop -----------------------------------------------------

    async def _start(self) -> None:
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self.server.sockets[0].getsockname()[1]

    async def _set_flowing(self, flowing: bool) -> None:
        assert self.flowing is not None
        if flowing:
            self.flowing.set()
        else:
            self.flowing.clear()

    async def _cut(self, mode: CutMode) -> None:
        self.mode = mode
        if mode == "refuse":
            if self.server is not None:
                self.server.close()
                self.server = None
            for conn in list(self.conns):
                conn.abort()
            self.conns.clear()
        else:
            for conn in self.conns:
                conn.blackholed = True

    async def _restore(self) -> None:
        # Blackholed connections lost bytes: their protocol state is garbage.
        for conn in list(self.conns):
            if conn.blackholed:
                conn.abort()
                self.conns.discard(conn)
        self.mode = None
        if self.server is None:
            self.server = await asyncio.start_server(
                self._accept, "127.0.0.1", self.port, reuse_address=True
            )

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "blackhole":
            # Accept and say nothing: the peer waits for a server greeting forever.
            hold = _Conn(writer, writer)
            hold.blackholed = True
            self.conns.add(hold)
            return
        try:
            if self.unix_path:
                up_reader, up_writer = await asyncio.open_unix_connection(self.unix_path)
            else:
                up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        conn = _Conn(writer, up_writer)
        self.conns.add(conn)
        await asyncio.gather(
            self._pump(reader, up_writer, conn),
            self._pump(up_reader, writer, conn),
            return_exceptions=True,
        )
        self.conns.discard(conn)
        for w in (writer, up_writer):
            w.close()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: _Conn
    ) -> None:
        assert self.flowing is not None
        while True:
            try:
                data = await reader.read(65536)
            except OSError:
                data = b""
            if not data:
                # A clean end (the peer closed): pass it on after what is buffered,
                # e.g. PostgreSQL's FATAL message before it closes a terminated session.
                writer.close()
                return
            await self.flowing.wait()
            if conn.blackholed:
                continue
            writer.write(data)
            await writer.drain()

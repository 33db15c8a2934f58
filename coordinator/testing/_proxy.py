"""A TCP proxy that fakes network faults between clients and PostgreSQL.

It runs its own event loop in a daemon thread, so that it keeps forwarding
(or keeps swallowing) while the caller's loop is blocked, and so that it can
sit in front of other processes.

Fault semantics:

* ``blackhole()`` models a silent partition: every byte read from either
  side is dropped, and neither side learns anything, not even that the
  other closed or reset its end. Connections opened during the blackhole
  are accepted but never connected upstream.
* ``heal()`` forwards again for connections opened *afterwards*. Every
  connection that existed during the blackhole stays cut for good, because
  the bytes dropped from its stream would leave the PostgreSQL protocol
  corrupt if forwarding resumed; its ends stay open, as half-open TCP
  sessions do after a long partition, until they close themselves or
  ``reset()`` aborts them.
* ``reset()`` aborts every current connection on both sides with a TCP RST.

The proxy's own kernel still answers TCP keepalives, so a blackhole hides
the partition from keepalive probes on either side; ``reset()`` is the way
to make the server notice.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from coordinator.testing._managed import Managed

__all__ = ["TcpProxy"]

_T = TypeVar("_T")
_CHUNK = 65536
_CALL_TIMEOUT = 30.0
_LINGER_RST = struct.pack("ii", 1, 0)


class _Link:
    """One client connection and, unless it was cut from the start, its upstream connection."""

    def __init__(self, client: asyncio.StreamWriter, *, cut: bool) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.cut = cut
        self.client_open = True
        task = asyncio.current_task()
        assert task is not None
        self.task = task

    def _ends(self) -> list[asyncio.StreamWriter]:
        return [end for end in (self.client, self.upstream) if end is not None]

    def close(self) -> None:
        for end in self._ends():
            end.close()

    def abort(self) -> None:
        for end in self._ends():
            sock = end.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
            end.transport.abort()


class TcpProxy(Managed):
    """Forwards ``listen_host:listen_port`` to the target, with faults on demand."""

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
    ) -> None:
        self._target = (target_host, target_port)
        self._listen = (listen_host, listen_port)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._port: int | None = None
        # Touched only on the proxy's loop.
        self._links: set[_Link] = set()
        self._blackholed = False
        self._delay = 0.0

    def start(self) -> None:
        if self._loop is not None:
            raise RuntimeError("the proxy is already started")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"TcpProxy->{self._target[1]}", daemon=True
        )
        self._thread.start()
        self._server = self._run(asyncio.start_server(self._serve, *self._listen))
        self._port = self._server.sockets[0].getsockname()[1]

    def close(self) -> None:
        """Abort every connection, stop listening and end the thread; idempotent."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._run(self._shutdown())
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
        self._loop = self._thread = self._server = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the proxy is not started")
        return self._port

    def dsn(self, dsn: str) -> str:
        """``dsn`` (a ``postgresql://`` URL) with its host and port replaced by the proxy's."""
        parts = urlsplit(dsn)
        if parts.scheme not in ("postgres", "postgresql"):
            raise ValueError("TcpProxy.dsn() rewrites postgresql:// URLs only")
        host = self._listen[0]
        hostport = f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"
        userinfo, at, _ = parts.netloc.rpartition("@")
        return urlunsplit(parts._replace(netloc=f"{userinfo}{at}{hostport}"))

    def blackhole(self) -> None:
        """Drop all traffic, on existing and new connections, without closing any socket."""
        self._run(self._set(blackholed=True))

    def heal(self) -> None:
        """Forward new connections again; those that lived through the blackhole stay cut."""
        self._run(self._set(blackholed=False))

    def delay(self, seconds: float) -> None:
        """Deliver every chunk ``seconds`` after it arrived (0 for none); order is kept."""
        if seconds < 0:
            raise ValueError("the delay cannot be negative")
        self._run(self._set(delay=seconds))

    def reset(self) -> None:
        """Abort every current connection with a TCP RST to both ends; return once all are gone."""
        self._run(self._abort_all(cancel=False))

    @property
    def connections(self) -> int:
        """Client connections currently open (including cut ones)."""
        return self._run(self._count())

    def _run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        """Run ``coro`` on the proxy's loop and wait for its result."""
        if self._loop is None:
            coro.close()
            raise RuntimeError("the proxy is not started")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(_CALL_TIMEOUT)

    async def _set(self, *, blackholed: bool | None = None, delay: float | None = None) -> None:
        if blackholed is not None:
            self._blackholed = blackholed
            if blackholed:
                for link in self._links:
                    link.cut = True
        if delay is not None:
            self._delay = delay

    async def _count(self) -> int:
        return sum(link.client_open for link in self._links)

    async def _abort_all(self, *, cancel: bool) -> None:
        tasks = {link.task for link in self._links}
        for link in self._links:
            link.abort()
        if cancel:
            for task in tasks:
                task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=_CALL_TIMEOUT / 2)

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        # A connection accepted just before the close has a task that has not yet
        # run, so no link: let it start, or the loop would stop with it pending.
        await asyncio.sleep(0)
        # Cancel too: a link may still be waiting for its upstream connection.
        await self._abort_all(cancel=True)
        await self._server.wait_closed()

    async def _serve(
        self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter
    ) -> None:
        link = _Link(client, cut=self._blackholed)
        self._links.add(link)
        try:
            if link.cut:
                await self._pump(client_reader, None, link, from_client=True)
                return
            try:
                upstream_reader, link.upstream = await asyncio.open_connection(*self._target)
            except OSError:
                link.abort()  # the client sees a reset, as it would from a server that is down
                return
            await asyncio.gather(
                self._pump(client_reader, link.upstream, link, from_client=True),
                self._pump(upstream_reader, client, link, from_client=False),
            )
        except asyncio.CancelledError:
            # Only close() cancels a link. This task is the top of its stack, and
            # asyncio's stream server would log a cancelled handler as an error.
            pass
        finally:
            self._links.discard(link)
            link.close()

    async def _pump(
        self,
        source: asyncio.StreamReader,
        target: asyncio.StreamWriter | None,
        link: _Link,
        *,
        from_client: bool,
    ) -> None:
        """Read ``source`` to its end; queue each chunk for ``target`` unless the link is cut.

        A separate sender delivers the queue, so that a delay adds latency
        to each chunk without limiting throughput.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        # The group also cancels the sender if this pump is cancelled (by close()).
        async with asyncio.TaskGroup() as group:
            if target is not None:
                group.create_task(self._send(queue, target, link))
            while True:
                try:
                    data = await source.read(_CHUNK)
                except OSError:
                    data = b""
                if not data:
                    break
                if target is not None and not link.cut:
                    queue.put_nowait((loop.time() + self._delay, data))
            if from_client:
                link.client_open = False
            queue.put_nowait((loop.time() + self._delay, b""))
        if not link.cut:
            link.close()  # pass the end of one side on to the other

    @staticmethod
    async def _send(
        queue: asyncio.Queue[tuple[float, bytes]], target: asyncio.StreamWriter, link: _Link
    ) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due, data = await queue.get()
            if not data:
                return
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if link.cut:
                continue  # the partition also swallows what was in flight
            target.write(data)
            try:
                await target.drain()
            except OSError:
                return

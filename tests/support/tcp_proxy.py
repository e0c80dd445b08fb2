"""A TCP proxy on 127.0.0.1 that a test can cut (an outage) and restore.

``cut()`` closes every proxied connection and refuses new ones (the listening socket is
closed), as a network failure between a replica and its database would; ``resume()`` listens
again on the same port. ``hang()`` is the nastier partition: connections stay open (and new
ones are accepted) but no byte goes through, so every request waits for its own timeout;
``resume()`` passes traffic again.
"""

from __future__ import annotations

import asyncio
import contextlib


class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target_host:target_port``."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self.accepted = 0

    async def start(self) -> int:
        """Listen (on a random port the first time, the same one afterwards); the port."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def cut(self) -> None:
        """Drop every connection and stop accepting."""
        server, self._server = self._server, None
        if server is not None:
            server.close()   # no new connections
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        if server is not None:
            await server.wait_closed()

    async def hang(self) -> None:
        """Hold every byte in both directions (a black hole) until ``resume``."""
        self._flowing.clear()

    async def resume(self) -> None:
        """Accept connections again, on the same port, and pass traffic again."""
        self._flowing.set()
        if self._server is None:
            await self.start()

    stop = cut

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            self._writers.discard(writer)
            return
        if writer not in self._writers:   # cut while we were connecting upstream
            up_writer.transport.abort()
            writer.transport.abort()
            return
        self._writers.add(up_writer)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    await self._flowing.wait()
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers.difference_update((writer, up_writer))


async def proxied_url(url: str) -> tuple[TcpProxy, str]:
    """A started :class:`TcpProxy` in front of ``url``'s server (a ``postgresql://`` store
    URL) and the same URL through it."""
    from urllib.parse import urlsplit, urlunsplit
    parts = urlsplit(url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    await proxy.start()
    user = f"{parts.username}@" if parts.username else ""
    return proxy, urlunsplit((parts.scheme, f"{user}127.0.0.1:{proxy.port}", parts.path,
                              parts.query, ""))

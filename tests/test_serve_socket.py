"""The server's listening socket makes connections that answer without Nagle's delay.

A keep-alive request used to take ~44 ms: the socket was made with proto 0, so asyncio did not
set TCP_NODELAY on the connections it accepted, and each response's second write waited for
the client's delayed ACK (bench.serve_speed: HTTP search 40 ms above the in-process query)."""

from __future__ import annotations

import asyncio
import socket

from clipsearch.server.run import bind


def test_accepted_connections_have_tcp_nodelay():
    listener = bind("127.0.0.1", 0)
    port = listener.getsockname()[1]
    seen: list[int] = []

    async def main() -> None:
        def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            sock = writer.get_extra_info("socket")
            seen.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(on_connect, sock=listener)
        async with server:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            for _ in range(100):
                if seen:
                    break
                await asyncio.sleep(0.01)
            writer.close()

    asyncio.run(main())
    assert seen and seen[0] != 0

"""The load generator's ceiling: a raw uvloop protocol answering every request with a fixed 200 and no
parsing beyond counting request ends. If wrk drives this far faster than the FastAPI floor, the floor
(and every row measured against it) is bound by the server, not by the client.

    python benchmarks/ceiling_server.py PORT
"""

from __future__ import annotations

import asyncio
import sys

import uvloop

_RESPONSE = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 15\r\n\r\n"
             b'{"status":"ok"}')


class Fixed(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.transport.write(_RESPONSE * max(1, data.count(b"\r\n\r\n")))


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Fixed, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))

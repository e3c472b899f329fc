"""The kernel's floor under fan-out: CPU per send() of a ~150-byte frame to one loopback socket.

A server that writes each delivery with its own send() cannot cost less than
this, whatever its language: N connected TCP pairs on loopback, one frame sent
to each in turn by a plain loop, the sender's CPU (user + system) divided by
the sends. The receiving ends are drained between rounds and not counted.
"""

from __future__ import annotations

import resource
import socket

FRAME = b"\x81\x7e\x00\x96" + b"x" * 150  # a text frame of a ~150-byte `msg`, as the edge sends one


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def us_per_send(sockets: int = 2000, rounds: int = 20) -> float:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    pairs: list[tuple[socket.socket, socket.socket]] = []
    try:
        for _ in range(sockets):
            client = socket.create_connection(("127.0.0.1", port))
            server, _addr = listener.accept()
            client.setblocking(False)
            server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pairs.append((server, client))
        spent = 0.0
        for _ in range(rounds):
            started = _cpu()
            for server, _client in pairs:
                server.send(FRAME)
            spent += _cpu() - started
            for _server, client in pairs:
                client.recv(65536)
        return round(spent / (sockets * rounds) * 1e6, 2)
    finally:
        for server, client in pairs:
            server.close()
            client.close()
        listener.close()


if __name__ == "__main__":
    print(f"{us_per_send()} µs of CPU per send() on loopback")

"""Can `ledger serve` listen where it was told to? Asked before anything starts.

gRPC's own failure to bind is a RuntimeError naming neither the reason nor
the flag (and the metrics server's an OSError traceback): `ledger serve` with
a port in use died with a stack trace. Binding a plain socket the way the
servers will (SO_REUSEADDR, every address the host resolves to) tells why,
in one line (issue 13, item 9).
"""

from __future__ import annotations

import socket


def split_host_port(value: str) -> tuple[str, int]:
    """("127.0.0.1", 50051) from "127.0.0.1:50051"; "[::1]:1" and ":1" too.

    Errors: ValueError when the port is not a number from 0 to 65535.
    """
    host, _, port_text = value.rpartition(":")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is not 0-65535")
    return host.strip("[]") or "127.0.0.1", port


def bind_problem(address: str) -> str | None:
    """Why nothing can listen on HOST:PORT now (e.g. "address already in use"), or None.

    Like gRPC, it is enough that one of the host's addresses can be bound. Addresses
    gRPC reads otherwise (unix:PATH, unix-abstract:NAME, vsock:...) are left to it.
    """
    if address.startswith(("unix:", "unix-abstract:", "vsock:")):
        return None
    try:
        host, port = split_host_port(address)
    except ValueError:
        return "not HOST:PORT (such as 127.0.0.1:50051)"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        return f"cannot resolve {host}: {describe(exc)}"
    problem = "no address to bind"
    for family, kind, proto, _, sockaddr in infos:
        try:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(sockaddr)
            return None
        except OSError as exc:
            problem = describe(exc)
    return problem


def describe(exc: OSError) -> str:
    """An OSError as one lower-case phrase: "address already in use"."""
    text = exc.strerror or str(exc) or type(exc).__name__
    return text[:1].lower() + text[1:]

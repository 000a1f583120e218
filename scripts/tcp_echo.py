#!/usr/bin/env python3
"""A tiny TCP echo server for the proxy's conformance checks (scripts/autobahn).

Binds 127.0.0.1 (port 0 by default, so the OS picks one), prints the bound port on
stdout as its first line, then echoes every connection: each read (up to 256 KiB at
once) is written back whole. A large read buffer lets a message the proxy wrote in one
go come back as one chunk, which the proxy then sends as one binary message.

The server stops by itself after --lifetime seconds (default 600), so a run that loses
track of it cannot leave it behind for long.
"""

from __future__ import annotations

import argparse
import socket
import sys
import threading
import time

READ_SIZE = 256 * 1024
SOCKET_BUFFER = 1024 * 1024


def echo(conn: socket.socket, log_reads: bool) -> None:
    with conn:
        try:
            while True:
                data = conn.recv(READ_SIZE)
                if log_reads:
                    print(f"fd {conn.fileno()}: read {len(data)}", file=sys.stderr, flush=True)
                if not data:
                    break
                conn.sendall(data)
        except OSError:
            pass
        try:
            conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--lifetime", type=float, default=600.0,
                        help="seconds after which the server exits on its own")
    parser.add_argument("--log-reads", action="store_true",
                        help="log the size of every read on stderr")
    args = parser.parse_args()

    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Large socket buffers, set before listen() so accepted sockets inherit them (the window
    # scale is agreed in the handshake): a fresh connection's receive window otherwise lets
    # only about 32 KiB of a 64 KiB write through before the first read, and the echo would
    # come back in two pieces.
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
    server.bind((args.host, args.port))
    server.listen(128)
    server.settimeout(0.5)
    print(server.getsockname()[1], flush=True)

    deadline = time.monotonic() + args.lifetime
    while time.monotonic() < deadline:
        try:
            conn, _ = server.accept()
        except socket.timeout:
            continue
        except OSError:
            break
        conn.settimeout(None)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=echo, args=(conn, args.log_reads), daemon=True).start()
    server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Hostile: opens a TCP connection."""

import socket


def connect(port):
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(b"hello from a submission")
    return "connected"

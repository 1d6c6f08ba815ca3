"""Framed msgpack messages over a unix socket pair between a model host and its trusted parent.

A frame is a 4-byte big-endian length and a msgpack map; file descriptors (a connected
Redis socket handed to the host) ride as ancillary data on the frame's first bytes. Never
pickle: what the host sends may have been written by model code that took over the host.
"""

from __future__ import annotations

import array
import socket
import struct
import threading
from typing import Any

import msgpack

HEADER = struct.Struct(">I")
# A frame carries at most this much: a batch of a job's rows or a model's outputs.
MAX_FRAME = 1024**3
MAX_FDS = 4


class ChannelClosed(ConnectionError):
    """The other end closed the channel (its process exited)."""


class ChannelError(ValueError):
    """A frame that is not a well-formed message."""


class Channel:
    """One end of the pair: `send` and `receive` whole messages; `call` is a locked request/reply."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._send_lock = threading.Lock()
        self._call_lock = threading.Lock()

    @classmethod
    def from_fd(cls, fd: int) -> Channel:
        return cls(socket.socket(fileno=fd))

    def send(self, message: dict[str, Any], fds: list[int] | None = None) -> None:
        body = msgpack.packb(message, use_bin_type=True)
        frame = HEADER.pack(len(body)) + body
        with self._send_lock:
            if fds:
                sent = socket.send_fds(self.sock, [frame[: HEADER.size]], fds)
                self.sock.sendall(frame[sent:])
            else:
                self.sock.sendall(frame)

    def receive(self) -> tuple[dict[str, Any], list[int]]:
        """The next message and the descriptors that came with it; ChannelClosed at the end."""
        fds: list[int] = []
        header = b""
        while len(header) < HEADER.size:
            data, ancillary, _, _ = self.sock.recvmsg(
                HEADER.size - len(header), socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)
            )
            if not data:
                raise ChannelClosed("the other end of the sandbox channel closed it")
            header += data
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    received = array.array("i")
                    received.frombytes(payload[: len(payload) - len(payload) % received.itemsize])
                    fds += list(received)
        (length,) = HEADER.unpack(header)
        if length > MAX_FRAME:
            raise ChannelError(f"a frame of {length} bytes is over the limit of {MAX_FRAME}")
        body = bytearray(length)
        view, read = memoryview(body), 0
        while read < length:
            count = self.sock.recv_into(view[read:])
            if not count:
                raise ChannelClosed("the sandbox channel closed in the middle of a frame")
            read += count
        try:
            message = msgpack.unpackb(body, raw=False)
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise ChannelError(f"not msgpack: {exc!r}") from None
        if not isinstance(message, dict):
            raise ChannelError(f"a message must be a map, not {type(message).__name__}")
        return message, fds

    def call(self, message: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
        """Send a request and wait for its reply (one call at a time over the channel)."""
        with self._call_lock:
            self.send(message)
            return self.receive()

    def close(self) -> None:
        self.sock.close()


def pair() -> tuple[Channel, socket.socket]:
    """A channel for the parent and the socket the child inherits."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return Channel(parent), child

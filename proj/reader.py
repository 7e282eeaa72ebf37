"""The worker's reads from the broker: one ``recv`` per wake-up of the event loop, frames parsed from memory.

kombu's reader (``Transport.on_readable`` for py-amqp) calls ``drain_events(timeout=0)``, then again on the loop's
next turn until it raises ``socket.timeout``. Each call reads one frame at a time, 7 bytes, then its payload,
then its end byte (three ``recv`` per frame, three frames per task message), and switches the socket to
non-blocking and back around every frame (two more system calls per frame). py-spy on a solo worker draining
no-op tasks: 13 % of its samples in those switches alone.

:func:`register` puts this reader on the loop instead, for the worker's consuming connection: when the socket is
readable it takes what the kernel holds in one non-blocking ``recv`` (``MSG_DONTWAIT``: the socket's own mode
is never touched) into py-amqp's read buffer, then hands each complete frame to py-amqp's own frame reader and
dispatcher (``read_frame``, ``on_inbound_frame``: the same parsing, heartbeat counting and callbacks as
before); a partial frame waits in the buffer for the next wake-up (epoll is level-triggered: bytes the
``recv`` left in the kernel wake the loop again). Nothing else changes: py-amqp's blocking waits on the same
connection (``basic_qos``, ``close``) read the same buffer.

The one private name is ``proj.compat.READ_BUFFER`` (py-amqp's ``TCPTransport._read_buffer``), checked at each
connection; when it is missing, or the connection is TLS (the buffer then holds decrypted bytes only py-amqp's
``SSLTransport`` may fill), kombu's reader is registered as before.
"""

from __future__ import annotations

import socket
import struct

from amqp.exceptions import RecoverableConnectionError
from amqp.transport import TCPTransport

from proj import compat

#: Bytes taken from the kernel per wake-up (a task message is three frames, a few hundred bytes).
CHUNK = 65536

_HEADER = struct.Struct(">BHI")  # frame type, channel, payload size (AMQP 0-9-1 general frame format)
_FRAME_OVERHEAD = _HEADER.size + 1  # the header and the frame-end octet


def usable(conn) -> bool:
    """Whether the worker's connection ``conn`` (kombu) can be read by :func:`on_readable`."""
    transport = getattr(conn.connection, "transport", None)
    return isinstance(transport, TCPTransport) and compat.usable(
        compat.READ_BUFFER, lambda: compat.read_buffer_problem(transport), stage="connection"
    )


def register(conn, hub) -> None:
    """Read the consuming connection ``conn`` (kombu) on ``hub`` with :func:`on_readable` (else kombu's reader)."""
    if not usable(conn):
        conn.transport.register_with_event_loop(conn.connection, hub)
        return
    amqp_conn = conn.connection
    # What kombu's registration sets: a read interrupted before any byte of a frame is a timeout, not a retry.
    amqp_conn.transport.raise_on_initial_eintr = True
    hub.add_reader(amqp_conn.sock, on_readable, amqp_conn)


def on_readable(amqp_conn) -> None:
    """Take what the socket holds, then dispatch every complete frame in the buffer (see the module)."""
    transport = amqp_conn.transport
    if transport is None or not amqp_conn.connected:
        raise RecoverableConnectionError("Socket was disconnected")
    buffer_name = compat.attrs(compat.READ_BUFFER)["TCPTransport._read_buffer"]
    try:
        data = transport.sock.recv(CHUNK, socket.MSG_DONTWAIT)
        if not data:
            raise OSError("Server unexpectedly closed connection")  # py-amqp's words for the same end
    except (BlockingIOError, InterruptedError):
        return  # woken for nothing: the loop polls again
    except OSError:
        transport.connected = False  # as py-amqp marks a transport whose read failed
        raise
    setattr(transport, buffer_name, getattr(transport, buffer_name) + data)
    read_frame, on_frame = transport.read_frame, amqp_conn.on_inbound_frame
    # A callback may close the connection or read from it itself (a blocking wait on the same connection):
    # the buffer is looked at afresh before each frame.
    while amqp_conn.transport is transport:
        buffered = getattr(transport, buffer_name)
        if len(buffered) < _FRAME_OVERHEAD:
            return
        size = _HEADER.unpack_from(buffered)[2]
        if len(buffered) < size + _FRAME_OVERHEAD:
            return
        on_frame(read_frame())

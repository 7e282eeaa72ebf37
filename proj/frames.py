"""``proj.tasks.work`` task messages encoded straight to AMQP 0-9-1 frames, for publishing many at once.

Celery's ``create_task_message`` and ``send_task_message``, kombu's ``Producer.publish`` and amqp's
frame writer rebuild and re-encode the same twenty headers for every message, and write each message
with its own system call: most of a bulk publish's time went there (proj/bulk.py, README
"Performance"). Here Celery builds one message of the task, once; amqp's own serializer encodes its
constant headers, once; and each message only fills in what differs from one task to the next: its id
(the ``id`` and ``root_id`` headers and the ``correlation_id`` property), its ``argsrepr`` header and
its JSON body. The frames are those amqp would write for the message kombu would publish
(``tests/test_bulk.py`` compares what the broker holds from both), and :func:`template` checks its
encoding against amqp's once per process.

The amqp names this needs (the connection's transport and heartbeat counter, the property encoder) are
``proj.compat.RAW_FRAMES``: a sender asks :func:`usable` first and takes kombu's path when it is off.
"""

from __future__ import annotations

import struct

import amqp
from amqp import Message
from amqp.serialization import dumps as amqp_dumps
from celery.utils.saferepr import saferepr
from kombu.utils.json import dumps as json_dumps

from proj import compat, config

#: AMQP 0-9-1: frame types, the frame end octet, basic.publish's class and method, basic's property flags.
METHOD, HEADER, BODY, FRAME_END = 1, 2, 3, b"\xce"
BASIC_CLASS, BASIC_PUBLISH = 60, 40
_FLAGS = 0x8000 | 0x4000 | 0x2000 | 0x1000 | 0x0800 | 0x0400 | 0x0200  # content_type .. reply_to

#: What kombu's Producer.publish adds to Celery's properties for a JSON task message to task_queue.
CONTENT_TYPE, CONTENT_ENCODING, PERSISTENT, PRIORITY = "application/json", "utf-8", 2, 0

#: A placeholder task id of a real id's length (36 characters), to find where the ids go.
_SAMPLE_ID = "00000000-0000-4000-8000-000000000000"


def _shortstr(value: str) -> bytes:
    raw = value.encode("utf-8")
    return bytes([len(raw)]) + raw


def _longstr_item(value: str) -> bytes:
    raw = value.encode("utf-8", "surrogatepass")
    return b"S" + struct.pack(">I", len(raw)) + raw


def method_frame(channel_id: int, method: tuple[int, int], argsig: str, args: tuple) -> bytes:
    """One method frame, its arguments encoded by amqp's own serializer (as ``Channel.send_method``)."""
    payload = struct.pack(">HH", *method) + amqp_dumps(argsig, args)
    return struct.pack(">BHI", METHOD, channel_id, len(payload)) + payload + FRAME_END


def publish_frame(channel_id: int, exchange: str, routing_key: str) -> bytes:
    """The basic.publish method frame (not mandatory, not immediate), as amqp encodes it."""
    return method_frame(channel_id, (BASIC_CLASS, BASIC_PUBLISH), "Bssbb", (0, exchange, routing_key, False, False))


def content_frames(method_frame: bytes, channel_id: int, properties: bytes, body: bytes, chunk: int) -> bytes:
    """A whole message: its basic.publish frame, the content header (``properties`` encoded), the body frames."""
    header = struct.pack(">HHQ", BASIC_CLASS, 0, len(body)) + properties
    out = [method_frame, struct.pack(">BHI", HEADER, channel_id, len(header)), header, FRAME_END]
    for i in range(0, len(body), chunk):
        part = body[i : i + chunk]
        out += (struct.pack(">BHI", BODY, channel_id, len(part)), part, FRAME_END)
    return b"".join(out)


def usable(amqp_connection) -> bool:
    """Whether frames can be written to ``amqp_connection`` (checked once per process, proj.compat).

    A connection of another kombu transport (the in-memory one of a test's embedded worker) is simply not
    written to: it says nothing about py-amqp, so it turns nothing off.
    """
    if not isinstance(amqp_connection, amqp.Connection):
        return False
    return compat.usable(compat.RAW_FRAMES, lambda: compat.raw_frames_problem(amqp_connection))


def write(amqp_connection, data: bytes) -> None:
    """Ready-made frames to the connection's socket in one system call, as amqp's frame writer would send
    them, with amqp's heartbeat bookkeeping ("something was sent")."""
    compat.write_frames(amqp_connection, data)


class Template:
    """One task's message frames, per (task id, message), for one channel with ``frame_max``."""

    def __init__(
        self,
        app,
        task_name: str,
        channel_id: int,
        frame_max: int,
        queue: str = config.QUEUE_NAME,
        reply_to: str | None = None,
        ignore_result: bool = True,
    ):
        # As Celery's send_task builds it (reply_to: the sender's rpc reply queue, app.thread_oid).
        headers, properties, body, sent_event = app.amqp.create_task_message(
            _SAMPLE_ID, task_name, ["x"], {}, reply_to=reply_to, create_sent_event=True, ignore_result=ignore_result
        )
        self.headers = headers
        self.properties = properties
        self.reply_to = properties.get("reply_to") or ""
        self.repr_maxsize = app.amqp.argsrepr_maxsize
        self.repr_maxlevels = app.conf.task_repr_maxlevels
        # The JSON body around its one varying part, the message: '[["' ... '"], {}, {"callbacks": null, ...}]'
        self.body_head, self.body_tail = json_dumps(([_SAMPLE_ID], *body[1:])).split(json_dumps(_SAMPLE_ID))
        self.chunk = frame_max - 8
        self.channel_id = channel_id
        #: The task-sent event's fields (uuid, root_id and args replaced per task), as send_task_message adds them.
        self.sent_fields = dict(sent_event, queue=queue, exchange="", routing_key=queue)
        # The headers table in pieces: constant runs encoded once by amqp, and the slots that vary.
        self.pieces: list[bytes | str] = []
        run: dict = {}
        for key, value in headers.items():
            if value == _SAMPLE_ID or key == "argsrepr":
                if run:
                    self.pieces.append(amqp_dumps("F", [run])[4:])
                    run = {}
                self.pieces.append(_shortstr(key))
                self.pieces.append("id" if value == _SAMPLE_ID else "argsrepr")
            else:
                run[key] = value
        if run:
            self.pieces.append(amqp_dumps("F", [run])[4:])
        self.props_head = struct.pack(">H", _FLAGS) + _shortstr(CONTENT_TYPE) + _shortstr(CONTENT_ENCODING)
        self.props_mid = bytes([PERSISTENT, PRIORITY])
        self.props_tail = _shortstr(self.reply_to)
        self.method_frame = publish_frame(channel_id, "", queue)
        self._check(headers, json_dumps(body).encode("utf-8"))

    def argsrepr(self, message: str) -> str:
        return saferepr([message], self.repr_maxsize, maxlevels=self.repr_maxlevels)

    def body(self, message: str) -> bytes:
        return (self.body_head + json_dumps(message) + self.body_tail).encode("utf-8")

    def properties_of(self, task_id: str, argsrepr: str) -> bytes:
        """The content header's property flags and list, as amqp's ``Message._serialize_properties``
        (:meth:`_check`)."""
        id_item = _longstr_item(task_id)
        table = b"".join(
            p if isinstance(p, bytes) else id_item if p == "id" else _longstr_item(argsrepr) for p in self.pieces
        )
        return b"".join(
            (self.props_head, struct.pack(">I", len(table)), table, self.props_mid, _shortstr(task_id), self.props_tail)
        )

    def frames(self, task_id: str, message: str, argsrepr: str) -> bytes:
        """basic.publish, the content header and the body frames of one task message."""
        return content_frames(
            self.method_frame, self.channel_id, self.properties_of(task_id, argsrepr), self.body(message), self.chunk
        )

    def sent_event(self, task_id: str, argsrepr: str) -> dict:
        """The task-sent event's fields, as Celery's send_task_message hands them to the event dispatcher."""
        # In Celery's order (the event's JSON is then the very one Celery's path sends).
        return {**self.sent_fields, "uuid": task_id, "root_id": task_id, "args": argsrepr}

    def _check(self, headers: dict, body: bytes) -> None:
        """The template encodes Celery's sample message as amqp does, or it is not used at all."""
        expected = compat.serialize_properties(
            Message(
                b"",
                content_type=CONTENT_TYPE,
                content_encoding=CONTENT_ENCODING,
                application_headers=headers,
                delivery_mode=PERSISTENT,
                priority=PRIORITY,
                correlation_id=_SAMPLE_ID,
                reply_to=self.reply_to,
            )
        )
        if self.properties_of(_SAMPLE_ID, headers["argsrepr"]) != expected or self.body("x") != body:
            raise RuntimeError("proj.frames: the task message template does not encode as amqp does")

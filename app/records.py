"""The Record: one published message, stamped once and never changed; no I/O here."""

from __future__ import annotations

import random
import secrets
import time
from dataclasses import dataclass
from typing import Any

ChannelKey = tuple[str, str]
"""(app id, channel name): channels live inside their app."""


@dataclass(frozen=True, slots=True)
class Record:
    """A message as the hub, broker and store see it.

    `data` is what c8 members get as `record.data`; `text` is the original piesocket frame, relayed
    byte for byte to piesocket members; `binary` marks a binary frame, relayed and never stored.
    """

    app: str
    channel: str
    seq: int
    id: str
    client_id: str
    created: int
    data: Any
    username: str | None = None
    text: str | None = None
    binary: bytes | None = None
    persistent: bool = False
    node: str = ""  # the node that accepted the publish
    sender: int | None = None  # the publishing member's id on that node, so fan-out can skip it

    @property
    def key(self) -> ChannelKey:
        return (self.app, self.channel)

    def public(self) -> dict[str, Any]:
        """The RECORD object of the wire contract."""
        return {
            "id": self.id,
            "client_id": self.client_id,
            "created": self.created,
            "data": self.data,
            "username": self.username,
            "seq": self.seq,
        }


def now_ms() -> int:
    """Milliseconds since the epoch, the unit of `created`."""
    return time.time_ns() // 1_000_000


def record_id(seq: int) -> str:
    """A unique id that sorts in publish order within a channel: the padded seq, then noise
    (not a secret: `random`, which costs no system call, unlike `secrets`)."""
    return f"{seq:012d}-{random.getrandbits(32):08x}"


def new_client_id() -> str:
    return secrets.token_hex(8)

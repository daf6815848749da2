"""ChannelOrder, the ordering every broker feeds its records through: what it holds before it
knows where the channel stands."""

from __future__ import annotations

from app.broker.base import ChannelOrder
from app.records import Record, now_ms, record_id
from tests.live import UNIT

KEY = ("demo", "room")


def record(seq: int) -> Record:
    return Record(app=KEY[0], channel=KEY[1], seq=seq, id=record_id(seq), client_id="c1",
                  created=now_ms(), data={"n": seq}, node="n1")


async def test_records_held_before_the_position_is_known_are_bounded() -> None:
    """Until `begin`, at most `max_held` records are held: the oldest are dropped and counted,
    and the latest are delivered in seq order once the position is known."""
    delivered: list[Record] = []
    order = ChannelOrder(delivered.append, window=UNIT, max_held=3)
    for seq in (2, 1, 3, 4, 6, 5, 7):
        order.push(record(seq))
    assert not delivered
    assert order.dropped == 4
    order.begin(None)
    assert [each.seq for each in delivered] == [5, 6, 7]
    order.close()


async def test_records_held_after_a_resync_are_bounded() -> None:
    """A channel subscribed again holds until `begin` too, within the same bound."""
    delivered: list[Record] = []
    order = ChannelOrder(delivered.append, window=UNIT, max_held=2)
    order.begin(0)
    order.push(record(1))
    order.resync()
    for seq in range(10, 15):
        order.push(record(seq))
    assert order.dropped == 3
    order.begin(None)
    assert [each.seq for each in delivered] == [1, 13, 14]
    order.close()

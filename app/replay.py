"""Replays: a recorded stretch of a channel published again into a scratch channel, with the
original ids, `created`, usernames and data, at the original pace times `speed` (or as fast as
possible, or one record per step), with play, pause, step and seek. The live channel is never
touched."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from app.node import Node
from app.records import Record

log = logging.getLogger(__name__)

MAX_RECORDS = 10_000  # per replay: a conversation, not a whole archive
MAX_GAP = 5.0  # seconds: a long silence in the recording is shortened to this


class ReplayState(Enum):
    PAUSED = "paused"
    PLAYING = "playing"
    DONE = "done"


@dataclass(eq=False)
class Replay:
    """One replay; `speed` None plays as fast as possible, 0 one record per step."""

    id: str
    app: str
    source: str
    target: str
    records: list[Record]
    speed: float | None
    position: int = 0
    state: ReplayState = ReplayState.PAUSED
    generation: int = 0  # bumped when a backward seek moves to a fresh scratch channel
    _wake: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _task: asyncio.Task[None] | None = field(default=None, repr=False)

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id, "source": self.source, "channel": self.target,
            "total": len(self.records), "position": self.position, "state": self.state.value,
            "speed": "max" if self.speed is None else ("step" if self.speed == 0 else self.speed),
            "first_created": self.records[0].created if self.records else None,
            "last_created": self.records[-1].created if self.records else None,
        }


class Replays:
    """The node's running replays."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self._replays: dict[str, Replay] = {}

    def get(self, app: str, replay_id: str) -> Replay | None:
        replay = self._replays.get(replay_id)
        return replay if replay is not None and replay.app == app else None

    async def start(self, app: str, source: str, records: list[Record],
                    speed: float | None) -> Replay:
        replay = Replay(id=secrets.token_hex(6), app=app, source=source, target="",
                        records=records, speed=speed)
        replay.target = self._scratch(replay)
        self._replays[replay.id] = replay
        self._run_soon(replay)
        return replay

    def _run_soon(self, replay: Replay) -> None:
        replay._task = asyncio.create_task(self._run(replay), name=f"replay-{replay.id}")

    def _scratch(self, replay: Replay) -> str:
        return f"replay-{replay.id}-{replay.generation}"

    def play(self, replay: Replay) -> None:
        if replay.state is ReplayState.PAUSED:
            replay.state = ReplayState.PLAYING
            replay._wake.set()

    def pause(self, replay: Replay) -> None:
        if replay.state is ReplayState.PLAYING:
            replay.state = ReplayState.PAUSED
            replay._wake.set()

    async def step(self, replay: Replay) -> None:
        """Publish the next record now, whatever the mode; stays paused."""
        self.pause(replay)
        if replay.position < len(replay.records):
            await self._publish_next(replay)

    async def seek(self, replay: Replay, position: int) -> None:
        """Jump to `position`: forward by publishing what lies between at once; backward by
        starting over in a fresh scratch channel (viewers move there) and catching up."""
        position = max(0, min(position, len(replay.records)))
        if position < replay.position:
            replay.generation += 1
            replay.target = self._scratch(replay)
            replay.position = 0
        while replay.position < position:
            await self._publish_next(replay)
        if replay.state is ReplayState.DONE and replay.position < len(replay.records):
            replay.state = ReplayState.PAUSED
            self._run_soon(replay)
        replay._wake.set()

    async def stop(self, replay: Replay) -> None:
        self._replays.pop(replay.id, None)
        if replay._task is not None:
            replay._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await replay._task

    async def stop_all(self) -> None:
        for replay in list(self._replays.values()):
            await self.stop(replay)

    async def _publish_next(self, replay: Replay) -> None:
        record = replay.records[replay.position]
        replay.position += 1
        await self.node.republish((replay.app, replay.target), record)

    async def _run(self, replay: Replay) -> None:
        try:
            while replay.position < len(replay.records):
                if replay.state is not ReplayState.PLAYING:
                    replay._wake.clear()
                    await replay._wake.wait()
                    continue
                delay = self._delay(replay)
                if delay > 0:
                    replay._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(replay._wake.wait(), delay)
                        continue  # paused, stepped or sought meanwhile: look again
                await self._publish_next(replay)
                if replay.speed == 0:
                    replay.state = ReplayState.PAUSED
            replay.state = ReplayState.DONE
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("replay %s failed", replay.id)
            replay.state = ReplayState.DONE

    def _delay(self, replay: Replay) -> float:
        if not replay.speed or replay.position == 0:
            return 0.0
        gap = replay.records[replay.position].created - replay.records[replay.position - 1].created
        return min(max(gap, 0) / 1000 / replay.speed, MAX_GAP)

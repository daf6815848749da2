"""Per-app limits (server defaults, overridden per app) and the token bucket that meters each
member's messages."""

from __future__ import annotations

import time
from dataclasses import dataclass, fields, replace
from typing import Any

from app.config import Settings, non_negative
from app.errors import ConfigError


@dataclass(frozen=True)
class Limits:
    """What one app may use; `allowed_origins` empty means any origin."""

    max_frame_bytes: int
    max_queue_bytes: int
    msg_rate: float
    msg_burst: int
    max_connections_per_app: int
    max_connections_per_ip: int
    max_channels_per_app: int
    allowed_origins: tuple[str, ...] = ()


OVERRIDABLE = tuple(f.name for f in fields(Limits))


def default_limits(settings: Settings) -> Limits:
    return Limits(
        max_frame_bytes=settings.max_frame_bytes, max_queue_bytes=settings.max_queue_bytes,
        msg_rate=settings.msg_rate, msg_burst=settings.msg_burst,
        max_connections_per_app=settings.max_connections_per_app,
        max_connections_per_ip=settings.max_connections_per_ip,
        max_channels_per_app=settings.max_channels_per_app,
    )


def limits_for(settings: Settings, app_settings: dict[str, Any]) -> Limits:
    """The server's defaults with the app's own overrides applied."""
    overrides = {k: v for k, v in app_settings.items() if k in OVERRIDABLE}
    if "allowed_origins" in overrides:
        overrides["allowed_origins"] = tuple(overrides["allowed_origins"])
    return replace(default_limits(settings), **overrides)


def parse_override(name: str, raw: str) -> Any:
    """A `c8ws keys set` value, checked like the environment variable it overrides; None for
    `default`, which takes the app's override away."""
    if raw == "default":
        return None
    if name == "allowed_origins":
        return [origin.strip() for origin in raw.split(",") if origin.strip()]
    if name not in OVERRIDABLE:
        raise ConfigError(f"unknown limit {name!r}; choose from {', '.join(OVERRIDABLE)}")
    flag = f"--{name.replace('_', '-')}"
    value = non_negative(flag, raw, float if name == "msg_rate" else int)
    if name == "max_frame_bytes" and value < 1:  # as C8WS_MAX_FRAME_BYTES: no frame would pass
        raise ConfigError(f"{flag} must be at least 1")
    return value


class TokenBucket:
    """`rate` tokens a second up to `burst`; a rate of 0 turns metering off."""

    __slots__ = ("burst", "rate", "refused", "tokens", "updated")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(max(burst, 1))
        self.tokens = self.burst
        self.updated = time.monotonic()
        # Frames refused, less those let through since: a sender a little over the rate stays
        # near 0, one at over twice the rate (a flood, even one that gets a token now and
        # then) climbs, and is closed once it reaches a burst.
        self.refused = 0

    def take(self) -> bool:
        if self.rate <= 0:
            return True
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.refused = max(0, self.refused - 1)
            self.tokens -= 1
            return True
        self.refused += 1
        return False

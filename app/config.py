"""Settings: one frozen dataclass read from C8WS_* environment variables and explicit overrides.

A bad value stops start-up with a `ConfigError` whose message names the setting, so an operator
sees one clear line instead of a traceback.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from app.errors import ConfigError

KIB = 1024
MIB = 1024 * KIB
ROOT = Path(__file__).resolve().parent.parent
STATIC_DIR = ROOT / "static"
TEMPLATES_DIR = ROOT / "templates"


@dataclass(frozen=True)
class Settings:
    """Everything the server reads at start-up; each field has a `C8WS_<NAME>` variable."""

    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = Path("var")
    certfile: Path | None = None
    keyfile: Path | None = None
    database_url: str = ""  # empty: sqlite:///<data_dir>/c8ws.sqlite3
    broker_url: str = "memory://"
    demo_key: str = "demo"
    demo_secret: str | None = None
    session_secret: str | None = None  # default: a random key kept in <data_dir>/session.key
    max_frame_bytes: int = 64 * KIB
    max_queue_bytes: int = 4 * MIB
    msg_rate: float = 200.0
    msg_burst: int = 400
    max_connections_per_app: int = 10_000
    max_connections_per_ip: int = 1_000
    max_channels_per_app: int = 10_000
    ping_interval: float = 0.0  # off: Hypercorn keeps a closed socket until its next ping
    presence_grace: float = 3.0
    history_size: int = 1000
    commit_interval_ms: float = 0.0
    shutdown_timeout: float = 3.0
    workers: int = 1

    @property
    def sqlite_file(self) -> Path:
        """The SQLite file under `data_dir`, the store unless `database_url` names another."""
        return self.data_dir / "c8ws.sqlite3"

    @property
    def store_url(self) -> str:
        """The store to open: `database_url`, or the SQLite file under `data_dir`."""
        return self.database_url or f"sqlite:///{self.sqlite_file}"


def non_negative(name: str, raw: str, convert: Callable[[str], float] = int) -> Any:
    """`raw` as a number of `convert`'s kind, at least 0; the error names the setting."""
    try:
        value = convert(raw)
    except ValueError:
        wanted = "a whole number" if convert is int else "a number"
        raise ConfigError(f"{name} must be {wanted}, got {raw!r}") from None
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {raw!r}")
    if value < 0:
        raise ConfigError(f"{name} must not be negative, got {raw!r}")
    return value


def _positive_int(name: str, raw: str) -> int:
    return int(non_negative(name, raw, int))


def _positive_float(name: str, raw: str) -> float:
    return float(non_negative(name, raw, float))


def _port(name: str, raw: str) -> int:
    value = _positive_int(name, raw)
    if value > 65535:
        raise ConfigError(f"{name} must be a port number from 0 to 65535, got {raw!r}")
    return value


def _existing_file(name: str, raw: str) -> Path:
    path = Path(raw)
    if not path.is_file():
        raise ConfigError(f"{name} must name a readable file, {raw!r} does not exist")
    return path


def _url(schemes: tuple[str, ...]) -> Callable[[str, str], str]:
    def parse(name: str, raw: str) -> str:
        if raw and not raw.startswith(tuple(f"{s}://" for s in schemes)):
            wanted = ", ".join(f"{s}://" for s in schemes)
            raise ConfigError(f"{name} must start with one of {wanted}, got {raw!r}")
        return raw

    return parse


def _text(name: str, raw: str) -> str:
    if not raw.strip():
        raise ConfigError(f"{name} must not be empty")
    return raw


_PARSERS: dict[str, Callable[[str, str], Any]] = {
    "host": _text,
    "port": _port,
    "data_dir": lambda _name, raw: Path(raw),
    "certfile": _existing_file,
    "keyfile": _existing_file,
    "database_url": _url(("sqlite", "postgresql", "postgres")),
    "broker_url": _url(("memory", "redis", "rediss")),
    "demo_key": _text,
    "demo_secret": _text,
    "session_secret": _text,
    "max_frame_bytes": _positive_int,
    "max_queue_bytes": _positive_int,
    "msg_rate": _positive_float,
    "msg_burst": _positive_int,
    "max_connections_per_app": _positive_int,
    "max_connections_per_ip": _positive_int,
    "max_channels_per_app": _positive_int,
    "ping_interval": _positive_float,
    "presence_grace": _positive_float,
    "history_size": _positive_int,
    "commit_interval_ms": _positive_float,
    "shutdown_timeout": _positive_float,
    "workers": _positive_int,
}


def env_name(field_name: str) -> str:
    """The environment variable that sets `field_name`."""
    return f"C8WS_{field_name.upper()}"


def load_settings(
    environ: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
) -> Settings:
    """Build Settings from `environ` (default: os.environ), then `overrides` (CLI flags, tests).

    Overrides given as strings are parsed like environment values; other types are taken as is.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for field in fields(Settings):
        parse = _PARSERS[field.name]
        raw = environ.get(env_name(field.name))
        if raw is not None and raw != "":
            values[field.name] = parse(env_name(field.name), raw)
    for key, value in (overrides or {}).items():
        if key not in _PARSERS:
            raise ConfigError(f"unknown setting {key!r}")
        if value is None:
            continue
        values[key] = _PARSERS[key](f"--{key.replace('_', '-')}", value) if isinstance(
            value, str
        ) else value
    settings = Settings(**values)
    if (settings.certfile is None) != (settings.keyfile is None):
        raise ConfigError("C8WS_CERTFILE and C8WS_KEYFILE must be given together")
    if settings.max_frame_bytes < 1:
        raise ConfigError("C8WS_MAX_FRAME_BYTES must be at least 1")
    if settings.workers < 1:
        raise ConfigError("C8WS_WORKERS must be at least 1")
    if settings.workers > 1 and settings.broker_url.startswith("memory://"):
        raise ConfigError("C8WS_WORKERS: several workers need a shared broker; set "
                          "C8WS_BROKER_URL=redis://host:port/0 (the memory broker cannot span "
                          "processes)")
    return settings

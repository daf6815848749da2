"""Search under fan-out load: c8ws with one channel of stored votes runs the rate scenario twice,
alone and while a client searches that channel over HTTP, so the search's latency under load
and what it costs the live traffic's latency come from the same server and run."""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from runs import SEARCH, SEARCH_TIMEOUT, RunResult, Scenario, run_scenario
from search import SEED_QUERY, nearest_rank
from servers import HOST, SERVERS, STORE_FILE, Pins, pinned, running_server

SEARCH_INTERVAL = 0.1  # seconds between one search's answer and the next search
SEARCH_CHANNEL = "big"  # the channel bench/search.py fills


@dataclass
class SearchUnderLoad:
    """The rate run alone, the same run with searches going, and the searches' latencies."""

    rows: int
    alone: RunResult
    loaded: RunResult
    first_ms: float
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def p99_rise(self) -> float | None:
        """How much the live traffic's p99 rose with the searches going (0.1: 10 %)."""
        before, after = self.alone.gen.get("p99_ms"), self.loaded.gen.get("p99_ms")
        return after / before - 1 if before and after is not None else None

    def search_ms(self, q: float) -> float:
        return nearest_rank(sorted(self.latencies_ms), q) if self.latencies_ms else math.nan

    @property
    def search_p50_ms(self) -> float:
        return statistics.median(self.latencies_ms) if self.latencies_ms else math.nan


def run_search_under_load(args: argparse.Namespace, pins: Pins, workdir: Path) -> SearchUnderLoad:
    """Make c8ws's store, fill it (server stopped), then time the rate scenario alone and with a
    searcher; the first search (which counts every match) is made before either."""
    folder = workdir / "search-load"
    folder.mkdir()
    spec = SERVERS["c8ws"]
    with running_server(spec, pins, folder):
        pass  # its start-up creates the store's tables
    store = folder / "c8ws-data" / STORE_FILE
    filled = subprocess.run(
        pinned([sys.executable, str(SEARCH), "--fill", str(store), "--rows", str(args.search_rows)],
               pins[0]), capture_output=True, text=True, check=False, timeout=SEARCH_TIMEOUT)
    if filled.returncode != 0:
        raise RuntimeError(f"filling the store failed: {filled.stderr[-2000:]}")
    rate = Scenario(
        f"rate {args.rate_channels}x{args.rate_subscribers} @ {args.rate}/s",
        {"mode": "rate", "channels": args.rate_channels, "subscribers": args.rate_subscribers,
         "rate": args.rate, "duration": args.duration, "deflate": args.deflate})
    with running_server(spec, pins, folder) as server:
        url = f"http://{HOST}:{server.port}/api/channels/{SEARCH_CHANNEL}/search"
        first_ms = timed_search(url)
        alone = run_scenario(server, rate, pins[1])
        searcher = Searcher(url)
        try:
            loaded = run_scenario(server, rate, pins[1], on_mark=searcher.on_mark)
        finally:
            searcher.stop()
    if searcher.error is not None:
        raise RuntimeError(f"a search under load failed: {searcher.error}")
    return SearchUnderLoad(args.search_rows, alone, loaded, first_ms, searcher.latencies_ms)


def timed_search(url: str) -> float:
    """One seed-QUERY search over HTTP; its latency in ms (raises unless it answers 200)."""
    request = urllib.request.Request(url, data=json.dumps(SEED_QUERY).encode(), method="POST",
                                     headers={"X-Api-Key": "demo",
                                              "Content-Type": "application/json"})
    began = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as response:
        response.read()
    return (time.perf_counter() - began) * 1000


class Searcher:
    """Searches in a thread of its own between the generator's start and stop marks (after its
    connections are made, before they close), so only the measured phase is searched."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.latencies_ms: list[float] = []
        self.error: str | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def on_mark(self, mark: str) -> None:
        if mark == "mark:start":
            self._thread.start()
        else:
            self.stop()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.latencies_ms.append(timed_search(self.url))
            except Exception as error:  # noted, and the run reported as failed
                self.error = f"{type(error).__name__}: {error}"
                return
            self._stopping.wait(SEARCH_INTERVAL)

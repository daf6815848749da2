"""Where c8ws's CPU goes: run the largest fan-out with c8ws under bench/profile_server.py (a
SIGPROF sampler inside the server, between the generator's marks) and turn the collapsed stacks
into the "Where the time goes" section of RESULTS.md."""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from runs import RunResult, Scenario, run_scenario
from servers import BENCH, ROOT, Pins, ServerSpec, running_server, serve_args
from tables import fmt

SAMPLE_HZ = 500  # profile samples per second of server CPU
PROFILE_SECONDS = 6.0  # enough samples (~3,000) for shares to within a percent or so


def run_profile(args: argparse.Namespace, pins: Pins, workdir: Path) -> str:
    """Profile c8ws in the largest fan-out of the command line; returns the markdown section."""
    n = max(args.fanout, default=1000)
    duration = min(args.duration, PROFILE_SECONDS)
    scenario = Scenario(f"fanout N={n}", {"mode": "fanout", "subscribers": n,
                                          "window": args.window, "duration": duration,
                                          "deflate": args.deflate})
    print(f"  c8ws   {scenario.name} under the sampler ...", flush=True)
    result, profile = profile_c8ws(scenario, pins, workdir, dict(args.env))
    section = profile_markdown(profile, result)
    print(section)
    return section


def profiled_c8ws_argv(output: Path) -> Callable[[Path], list[str]]:
    """c8ws under bench/profile_server.py, which samples between SIGUSR1 and SIGUSR2."""

    def argv(data_dir: Path) -> list[str]:
        return [sys.executable, str(BENCH / "profile_server.py"), "--output", str(output),
                "--hz", str(SAMPLE_HZ), "--", *serve_args(data_dir)]

    return argv


def profile_c8ws(scenario: Scenario, pins: Pins, workdir: Path,
                 extra_env: dict[str, str] | None = None) -> tuple[RunResult, Profile]:
    """Run `scenario` on c8ws, sampling the server's CPU during the measured phase only."""
    out = workdir / "profile.txt"
    spec = ServerSpec("c8ws", profiled_c8ws_argv(out))
    with running_server(spec, pins, workdir, extra_env) as server:
        signals = {"mark:start": signal.SIGUSR1, "mark:stop": signal.SIGUSR2}
        result = run_scenario(server, scenario, pins[1],
                              on_mark=lambda mark: server.process.send_signal(signals[mark]))
    if not out.exists():
        raise RuntimeError("the profiled server wrote no samples")
    return result, Profile.parse(out.read_text())


@dataclass
class Profile:
    """Own and inclusive sample counts per function, from collapsed stacks (the format of
    profile_server.py, py-spy's `--format raw` and flame graph tools)."""

    total: int = 0
    own: Counter[str] = field(default_factory=Counter)
    inclusive: Counter[str] = field(default_factory=Counter)
    layers: Counter[str] = field(default_factory=Counter)

    @classmethod
    def parse(cls, text: str) -> Profile:
        """Collapsed stacks, one `frame;frame;... count` per line, outermost frame first."""
        profile = cls()
        for line in text.splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            frames = [function_name(frame) for frame in stack.split(";")]
            profile.total += int(count)
            profile.own[frames[-1]] += int(count)
            profile.layers[layer(frames[-1])] += int(count)
            for name in set(frames):
                profile.inclusive[name] += int(count)
        return profile


def function_name(frame: str) -> str:
    """`func (path/to/file.py:123)` -> `func (file path without line)`, never an absolute path."""
    match = re.fullmatch(r"(.*) \((.*?)(?::\d+)?\)", frame.strip())
    if not match:
        return frame.strip()
    name, path = match.groups()
    for anchor in ("site-packages/", "/lib/python3."):
        if anchor in path:
            path = path.split(anchor, 1)[1]
            path = path.split("/", 1)[1] if anchor.startswith("/lib") else path
    if path.startswith(str(ROOT)):
        path = os.path.relpath(path, ROOT)
    if path.startswith("/"):
        path = Path(path).name
    return f"{name} ({path})"


SEND_SYSCALL = "_SelectorSocketTransport.write ("


def layer(name: str) -> str:
    """Which part of the stack a function belongs to, by its file."""
    if name.startswith(SEND_SYSCALL):
        return "socket `send()` syscall (own time of asyncio's transport write)"
    path = name.rsplit("(", 1)[-1]
    for prefix in ("app/", "hypercorn/", "wsproto/", "h11/", "quart/", "asyncio/",
                   "werkzeug/", "orjson"):
        if path.startswith(prefix):
            return prefix.rstrip("/")
    return "other (stdlib, native, interpreter)"


def profile_markdown(profile: Profile, result: RunResult, top: int = 15) -> str:
    """The "Where the time goes" section: top functions by own and by inclusive time."""
    pct = 100 / profile.total if profile.total else 0.0
    lines = [
        "## Where the time goes",
        "",
        f"c8ws, {result.scenario.name}, sampled by `bench/profile_server.py` (SIGPROF every "
        f"{1000 / SAMPLE_HZ:g} ms of server CPU, measured phase only: {profile.total} samples, "
        f"so shares are of server CPU). Run under the sampler: {result.deliveries_per_s:,.0f} "
        f"deliveries/s, {fmt(result.cpu_us_per_delivery, 1)} µs server CPU per delivery, "
        f"{fmt(result.server_cpu_pct)} % of a core, of which {fmt(result.server_sys_pct)} % "
        f"kernel time (/proc stime). The own time of asyncio's "
        f"`_SelectorSocketTransport.write` is almost all the `send()` syscall it makes, one "
        f"per frame per subscriber (on loopback that includes the kernel's delivery into the "
        f"receiving socket).",
        "",
        "By layer (own time of the innermost Python frame):",
        "",
        "| layer | % of server CPU |",
        "| --- | ---: |",
    ]
    lines += [f"| {name} | {n * pct:.1f} |" for name, n in profile.layers.most_common()
              if n * pct >= 0.05]
    lines += ["", f"Top {top} functions by own time:", "",
              "| function | own % | inclusive % |", "| --- | ---: | ---: |"]
    lines += [f"| `{name}` | {n * pct:.1f} | {profile.inclusive[name] * pct:.1f} |"
              for name, n in profile.own.most_common(top)]
    lines += ["", f"Top {top} functions by inclusive time (the call paths that matter):", "",
              "| function | inclusive % |", "| --- | ---: |"]
    lines += [f"| `{name}` | {n * pct:.1f} |"
              for name, n in profile.inclusive.most_common(top + 20)
              if not is_entry_frame(name)][:top]
    return "\n".join(lines) + "\n"


def is_entry_frame(name: str) -> bool:
    """Frames every sample passes through (main, asyncio.run, the loop) say nothing."""
    return name.startswith(("<module>", "main (", "serve (app/cli", "run (asyncio", "Runner.run",
                            "BaseEventLoop.run_", "BaseEventLoop._run_once", "Handle._run"))


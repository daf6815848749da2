"""Run `c8ws` with an in-process CPU sampler, for the "Where the time goes" section of RESULTS.md.

Why not py-spy: on this 2-core VM its default (blocking) mode put ~85 % of the samples in
`send()` while perf and /proc put the kernel's share near 40-47 %, and `--nonblocking` read torn
stacks. A SIGPROF timer ticks on CPU time only (idle never samples) and the handler walks the
main thread's Python stack; a C call (e.g. `socket.send`) is charged to the Python frame that
made it. Python runs the handler at its next bytecode check, so a sample can land a little late
(often on the next call): shares are good to a few percent, not to the line.

Usage: `python bench/profile_server.py --output FILE -- serve --port 0 ...` (the `c8ws` command
line after `--`). SIGUSR1 starts sampling, SIGUSR2 stops it; the stacks are written to FILE in
the collapsed format (`frame;frame;... count`, one line per distinct stack) when the server exits.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections import Counter
from pathlib import Path
from types import FrameType

MAX_DEPTH = 200


class Sampler:
    """Counts the main thread's stack on every SIGPROF (every `interval` s of process CPU)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.stacks: Counter[str] = Counter()

    def install(self) -> None:
        signal.signal(signal.SIGPROF, self.sample)
        signal.signal(signal.SIGUSR1, lambda *_: self.start())
        signal.signal(signal.SIGUSR2, lambda *_: self.stop())

    def start(self) -> None:
        signal.setitimer(signal.ITIMER_PROF, self.interval, self.interval)

    def stop(self) -> None:
        signal.setitimer(signal.ITIMER_PROF, 0, 0)

    def sample(self, _signum: int, frame: FrameType | None) -> None:
        names: list[str] = []
        while frame is not None and len(names) < MAX_DEPTH:
            names.append(describe(frame))
            frame = frame.f_back
        self.stacks[";".join(reversed(names))] += 1

    def write(self, path: Path) -> None:
        lines = [f"{stack} {count}" for stack, count in self.stacks.items()]
        path.write_text("\n".join(lines) + "\n")


def describe(frame: FrameType) -> str:
    """`qualname (file:line)`, the format py-spy and flame graph tools use."""
    code = frame.f_code
    if code.co_filename == "<string>":
        return generated_owner(frame) or f"{code.co_qualname} (<string>:0)"
    return f"{code.co_qualname} ({code.co_filename}:{code.co_firstlineno})"


def generated_owner(frame: FrameType) -> str | None:
    """Methods written by dataclasses or namedtuple (exec'd, file `<string>`) say nothing by
    themselves: name them after the class they belong to, in that class's module file."""
    code = frame.f_code
    for arg in ("self", "_cls", "cls"):
        if arg in code.co_varnames[: code.co_argcount]:
            value = frame.f_locals.get(arg)
            cls = value if isinstance(value, type) else type(value)
            file = getattr(sys.modules.get(cls.__module__), "__file__", None) or cls.__module__
            return f"{cls.__qualname__}.{code.co_name}[generated] ({file}:0)"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--hz", type=float, default=500.0, help="samples per CPU second")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="c8ws arguments after --")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    sampler = Sampler(1 / args.hz)
    sampler.install()
    from app.cli import main as c8ws_main

    try:
        c8ws_main(command)
    finally:
        sampler.stop()
        sampler.write(args.output)


if __name__ == "__main__":
    main()

"""Keeps the processes of ``vdip up`` alive: one supervisor restarts whichever dies, with backoff.

``vdip up`` starts the supervisor in the background (``run/supervisor.pid``); it starts the
gateway, the worker and the sinks (``run/<name>.pid``, ``run/<name>.log``), or adopts those that
already run, and watches their pids. A process that died is started again after 1 s, then 2, 4…
up to 60 s while it keeps dying within a minute of its start; once it ran a minute, the next
restart waits 1 s again. Each exit and restart goes to ``run/supervisor.log``, and the state of
every process (pid, start time, restarts, last exit) to ``run/processes.json``, which
``vdip status`` reads. SIGTERM stops the processes, then the supervisor.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vdip import stack

FIRST_DELAY_S = 1.0
MAX_DELAY_S = 60.0
STABLE_AFTER_S = 60.0  # a process that ran this long starts again after FIRST_DELAY_S


@dataclass
class Watched:
    name: str
    pid: int | None = None
    started_at: float | None = None  # epoch seconds
    restarts: int = 0
    last_exit: str | None = None  # "exit code 1 at 12:00:01", "killed by SIGKILL at ..."
    next_start_at: float | None = None
    delay_s: float = FIRST_DELAY_S


def next_delay(delay_s: float, ran_s: float) -> tuple[float, float]:
    """(how long to wait before this restart, the delay after that)."""
    if ran_s >= STABLE_AFTER_S:
        return FIRST_DELAY_S, FIRST_DELAY_S * 2
    return delay_s, min(delay_s * 2, MAX_DELAY_S)


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "exited"  # not our child (adopted): its status is not ours to read
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return f"exit code {returncode}"


class Supervisor:
    def __init__(self, run_dir: Path, names: Sequence[str], env: dict[str, str]) -> None:
        self.run_dir = run_dir
        self.env = env
        self.watched = {name: Watched(name) for name in names}
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.stopping = False

    def log(self, message: str) -> None:
        print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {message}", flush=True)

    def pid_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def start(self, item: Watched) -> None:
        child = stack.start_process(
            stack.vdip_command(item.name), log_file=self.run_dir / f"{item.name}.log", env=self.env
        )
        self.pid_file(item.name).write_text(str(child.pid))
        self.children[item.name] = child
        item.pid, item.started_at, item.next_start_at = child.pid, time.time(), None

    def adopt_or_start(self) -> None:
        for item in self.watched.values():
            pid = stack.read_pid(self.pid_file(item.name))
            if pid is not None:
                item.pid, item.started_at = pid, _process_start_time(pid)
                self.log(f"{item.name} runs already (pid {pid}): watching it")
            else:
                self.start(item)
                self.log(f"started {item.name} (pid {item.pid})")
        self.save()

    def check(self) -> None:
        """One round: notice the processes that died, start those whose wait is over."""
        now = time.time()
        changed = False
        for item in self.watched.values():
            if item.pid is not None and not self._alive(item):
                child = self.children.pop(item.name, None)
                ran = now - (item.started_at or now)
                wait, item.delay_s = next_delay(item.delay_s, ran)
                item.last_exit = f"{describe_exit(child.poll() if child else None)} after {ran:.0f} s"
                self.log(
                    f"{item.name} (pid {item.pid}) died: {item.last_exit}; starting it again in {wait:.0f} s"
                )
                item.pid, item.next_start_at = None, now + wait
                changed = True
            if item.pid is None and item.next_start_at is not None and now >= item.next_start_at:
                self.start(item)
                item.restarts += 1
                self.log(f"restarted {item.name} (pid {item.pid}, restart {item.restarts})")
                changed = True
        if changed:
            self.save()

    def _alive(self, item: Watched) -> bool:
        child = self.children.get(item.name)
        if child is not None:
            return child.poll() is None
        return item.pid is not None and stack.pid_alive(item.pid)

    def save(self) -> None:
        state = {name: asdict(item) for name, item in self.watched.items()}
        temporary = self.run_dir / "processes.json.tmp"
        temporary.write_text(json.dumps(state, indent=1))
        temporary.replace(self.run_dir / "processes.json")

    def stop(self) -> None:
        """Stop every process at once (SIGTERM, SIGKILL after 30 s)."""
        self.stopping = True
        stack.terminate_all([self.pid_file(name) for name in self.watched], timeout_s=30)
        for child in self.children.values():
            child.poll()  # reap
        for item in self.watched.values():
            item.pid = None
        self.save()
        self.log("stopped every process")


def _process_start_time(pid: int) -> float | None:
    """When a process started (epoch seconds), from /proc; None where that cannot be read."""
    try:
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[19])
        booted = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime")
        )
    except (OSError, IndexError, ValueError, StopIteration):
        return None
    return booted + ticks / os.sysconf("SC_CLK_TCK")


def run(run_dir: Path, names: Sequence[str], env: dict[str, str], interval_s: float = 0.5) -> None:
    """The supervisor's foreground loop, until SIGTERM or SIGINT."""
    supervisor = Supervisor(run_dir, names, env)

    def on_signal(signum: int, _: Any) -> None:
        supervisor.stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    supervisor.adopt_or_start()
    while not supervisor.stopping:
        supervisor.check()
        time.sleep(interval_s)
    supervisor.stop()


def read_state(run_dir: Path) -> dict[str, dict[str, Any]]:
    """What the supervisor last wrote about each process (empty when it never ran)."""
    try:
        state: dict[str, dict[str, Any]] = json.loads((run_dir / "processes.json").read_text())
    except (OSError, ValueError):
        return {}
    return state

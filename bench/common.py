"""What the benchmark drivers share: free ports, the pipeline's processes as subprocesses (run as
``python -m <module> <args>`` from the repository, with ``VDIP_*`` variables from a ``Settings``),
waiting for the gateway, and the topics of a run's prefix.
"""

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import httpx
from aiokafka.admin import AIOKafkaAdminClient

from vdip import db, stack
from vdip.settings import Settings
from vdip.topics import ApplyReport, apply_topics, declared_topics

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def process_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment that makes a ``vdip`` process use ``settings`` (what a benchmark sets)."""
    return {**os.environ, **settings.as_environment(), **extra}


class Processes:
    """Subprocesses started from the repository's root; ``stop_all`` ends every one of them
    (SIGTERM, then SIGKILL after ``grace`` seconds). Use it in a ``finally``."""

    def __init__(self) -> None:
        self.started: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}

    def start(
        self, label: str, argv: list[str], env: dict[str, str], log_path: Path | None = None
    ) -> subprocess.Popen[bytes]:
        """Run ``python <argv>`` (e.g. ``["-m", "vdip.cli", "worker"]``); output to ``log_path``,
        or to this terminal when None."""
        if log_path is None:
            process = subprocess.Popen([sys.executable, *argv], env=env, cwd=ROOT)
        else:
            process = stack.start_process(
                [sys.executable, *argv], log_file=log_path, env=env, detached=False, cwd=ROOT
            )
            self.logs[label] = log_path
        self.started[label] = process
        return process

    def vdip(self, name: str, env: dict[str, str], log_path: Path | None = None) -> subprocess.Popen[bytes]:
        """``python -m vdip.cli <name>``, as ``vdip <name>`` runs it (gateway, worker, sink, ...)."""
        return self.start(name, ["-m", "vdip.cli", name], env, log_path)

    def dead(self) -> list[str]:
        """Labels of the processes that exited."""
        return [label for label, p in self.started.items() if p.poll() is not None]

    def log_tail(self, label: str, lines: int = 30) -> str:
        path = self.logs.get(label)
        if path is None or not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time (user + system) each running process used so far (Linux /proc; else empty)."""
        found = {}
        for label, process in self.started.items():
            used = process_cpu_seconds(process.pid)
            if used is not None:
                found[label] = used
        return found

    def stop(self, label: str, grace: float = 30) -> None:
        process = self.started.pop(label, None)
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def stop_all(self, grace: float = 30) -> None:
        """Terminate all at once, then wait for each (the total wait is at most ``grace``)."""
        for process in self.started.values():
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + grace
        for process in self.started.values():
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.started.clear()


def process_cpu_seconds(pid: int) -> float | None:
    """utime + stime of ``pid`` from /proc (None where there is no /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def services_cpu_seconds() -> dict[str, float]:
    """CPU time so far of the machine's PostgreSQL processes ("postgres") and Kafka brokers
    ("kafka"), running ones only (/proc; else empty): what of "other" the stack itself used."""
    found = {"postgres": 0.0, "kafka": 0.0}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        program = cmdline.split(b"\0", 1)[0]
        label = (
            "postgres"
            if program.startswith(b"postgres:") or program.endswith(b"/postgres")
            else "kafka"
            if program.endswith(b"java") and b"kafka" in cmdline
            else None
        )
        used = process_cpu_seconds(int(entry.name)) if label else None
        if label and used is not None:
            found[label] += used
    return found


def machine_busy_seconds() -> float | None:
    """CPU time the whole machine spent not idle, summed over its cores (/proc/stat)."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    ticks = [int(v) for v in first[1:]]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


async def wait_ready(base_url: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """Until ``GET /health/ready`` answers 200 (Kafka and PostgreSQL reachable from the gateway)."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=base_url, timeout=2) as http:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"the gateway exited with {process.returncode}")
            try:
                if (await http.get("/health/ready")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"the gateway at {base_url} was not ready within {timeout} s")


async def apply_own_topics(settings: Settings) -> ApplyReport:
    """Create the topics of topics.yaml under the settings' prefix."""
    return await apply_topics(settings, declared_topics(settings, ROOT / "topics.yaml"))


async def drop_database(url: str, database: str) -> None:
    """Drop a run's database, connected to ``url``."""
    conn = await asyncpg.connect(url)
    try:
        await db.drop_database(conn, database)
    finally:
        await conn.close()


async def delete_topics(bootstrap: str, prefix: str) -> list[str]:
    """Delete every topic whose name starts with ``prefix``; returns their names."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if names:
            await admin.delete_topics(names)
        return names
    finally:
        await admin.close()


def exit_code(lost: list[str]) -> int:
    """1 (and which) when an accepted event was not stored, else 0."""
    if lost:
        print(f"LOST: {len(lost)} accepted events were not stored, e.g. {lost[:5]}")
        return 1
    return 0

"""The local stack: a single-node KRaft Kafka broker and PostgreSQL, without Docker.

Kafka runs from the official ``org.apache.kafka:kafka_2.13`` jars that Maven resolves (cached in
``~/.m2`` and copied once into ``<stack_dir>/kafka/<version>/libs``), with its data in
``<stack_dir>/kafka/data`` so it survives restarts. PostgreSQL is Debian's package and cluster.

Every function here is idempotent: starting what runs already is a no-op, installing what is
installed does nothing. Starting waits until the service answers a real request (a Kafka metadata
request, a SQL query) and raises ``StackError`` with the log's tail when it does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from urllib.parse import unquote, urlsplit

from vdip.errors import StackError
from vdip.settings import Settings


def log(message: str) -> None:
    print(f"[stack] {message}", file=sys.stderr, flush=True)


def _run(
    argv: Sequence[str], *, check: bool = True, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(argv), capture_output=True, text=True, env=env, cwd=cwd)
    if check and result.returncode != 0:
        raise StackError(
            f"command failed ({result.returncode}): {' '.join(argv)}\n"
            f"{result.stdout[-2000:]}{result.stderr[-2000:]}"
        )
    return result


def _as_root(argv: Sequence[str]) -> list[str]:
    return list(argv) if os.geteuid() == 0 else ["sudo", *argv]


def _as_postgres(argv: Sequence[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *argv]
    return ["sudo", "-u", "postgres", *argv]


_apt_updated = False


def _apt_install(*packages: str) -> None:
    global _apt_updated
    log(f"installing Debian packages: {' '.join(packages)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if not _apt_updated:
        _run(_as_root(["apt-get", "update", "-q"]), env=env)
        _apt_updated = True
    _run(_as_root(["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]), env=env)


def tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return f"(no log at {path})"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# --------------------------------------------------------------------------------------- processes


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); look at its state.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ")[-1].startswith("Z"))


def read_pid(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def spawn(argv: Sequence[str], *, pid_file: Path, log_file: Path, env: dict[str, str] | None = None) -> int:
    """Start a detached background process whose output goes to ``log_file``."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as out:
        proc = subprocess.Popen(
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )
    pid_file.write_text(str(proc.pid))
    return proc.pid


def terminate(pid_file: Path, *, timeout_s: float = 30.0) -> bool:
    """SIGTERM the process of ``pid_file``, SIGKILL it after ``timeout_s``. True if one ran."""
    pid = read_pid(pid_file)
    if pid is None:
        pid_file.unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if pid_alive(pid):
        os.kill(pid, signal.SIGKILL)
        while pid_alive(pid):
            time.sleep(0.1)
    pid_file.unlink(missing_ok=True)
    return True


# ------------------------------------------------------------------------------------------ Kafka


@dataclass(frozen=True)
class KafkaPaths:
    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def config(self) -> Path:
        return self.root / "server.properties"

    @property
    def pid(self) -> Path:
        return self.root / "kafka.pid"

    def libs(self, version: str) -> Path:
        return self.root / version / "libs"


def kafka_paths(settings: Settings) -> KafkaPaths:
    return KafkaPaths(settings.stack_dir.resolve() / "kafka")


def _broker_host_port(settings: Settings) -> tuple[str, int]:
    host, _, port = settings.kafka_bootstrap.split(",")[0].rpartition(":")
    return host or "127.0.0.1", int(port)


def server_properties(settings: Settings, data_dir: Path) -> str:
    host, port = _broker_host_port(settings)
    cport = settings.kafka_controller_port
    return "\n".join(
        [
            "# Generated by `vdip stack up`: a single-node KRaft broker+controller.",
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@{host}:{cport}",
            f"listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{cport}",
            f"advertised.listeners=PLAINTEXT://{host}:{port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            f"log.dirs={data_dir}",
            "num.partitions=3",
            # One node: every internal topic must have replication factor 1, or groups never work.
            "default.replication.factor=1",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=10",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "min.insync.replicas=1",
            "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=false",
            "log.retention.hours=168",
            "",
        ]
    )


def ensure_java_and_maven() -> None:
    missing = [tool for tool in ("java", "mvn") if shutil.which(tool) is None]
    if missing:
        _apt_install("openjdk-17-jre-headless", "maven")


def install_kafka(settings: Settings) -> Path:
    """Resolve the broker's jars with Maven, once per version. Returns the libs folder."""
    paths = kafka_paths(settings)
    libs = paths.libs(settings.kafka_version)
    marker = libs / ".complete"
    if marker.exists():
        return libs
    ensure_java_and_maven()
    log(f"resolving Apache Kafka {settings.kafka_version} from Maven Central (once)")
    libs.mkdir(parents=True, exist_ok=True)
    pom = resources.files("vdip.stackfiles").joinpath("pom.xml")
    with resources.as_file(pom) as pom_path:
        _run(
            [
                "mvn",
                "-q",
                "-B",
                "-f",
                str(pom_path),
                "dependency:copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={libs}",
                f"-Dkafka.version={settings.kafka_version}",
            ]
        )
    marker.write_text(settings.kafka_version)
    return libs


async def kafka_answers(bootstrap: str, timeout_s: float = 5.0) -> bool:
    """True when the broker answers a metadata request."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
    quiet = logging.getLogger("aiokafka")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # while waiting, "connection refused" is the expected answer
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        await asyncio.wait_for(admin.list_topics(), timeout_s)
        return True
    except Exception:
        return False
    finally:
        with contextlib.suppress(Exception):
            await admin.close()
        quiet.setLevel(level)


def wait_for_kafka(settings: Settings, *, log_file: Path | None = None) -> None:
    deadline = time.monotonic() + settings.stack_timeout_s
    while time.monotonic() < deadline:
        if asyncio.run(kafka_answers(settings.kafka_bootstrap)):
            return
        pid = read_pid(kafka_paths(settings).pid)
        if log_file is not None and pid is None:
            break  # the broker died; no point waiting
        time.sleep(1)
    raise StackError(
        f"Kafka at {settings.kafka_bootstrap} did not answer a metadata request"
        + (f"; last lines of {log_file}:\n{tail(log_file)}" if log_file else "")
    )


def start_kafka(settings: Settings) -> None:
    paths = kafka_paths(settings)
    if read_pid(paths.pid) is not None or asyncio.run(kafka_answers(settings.kafka_bootstrap, 2)):
        wait_for_kafka(settings)
        log(f"Kafka already running at {settings.kafka_bootstrap}")
        return
    libs = install_kafka(settings)
    paths.data.mkdir(parents=True, exist_ok=True)
    paths.logs.mkdir(parents=True, exist_ok=True)
    paths.config.write_text(server_properties(settings, paths.data))
    classpath = f"{libs}/*"
    if not (paths.data / "meta.properties").exists():
        cluster_id = _run(["java", "-cp", classpath, "kafka.tools.StorageTool", "random-uuid"])
        log("formatting Kafka storage (once)")
        _run(
            [
                "java",
                "-cp",
                classpath,
                "kafka.tools.StorageTool",
                "format",
                "--ignore-formatted",
                "-t",
                cluster_id.stdout.strip(),
                "-c",
                str(paths.config),
            ]
        )
    log4j = resources.files("vdip.stackfiles").joinpath("log4j2.properties")
    with resources.as_file(log4j) as log4j_path:
        argv = [
            "java",
            f"-Xmx{settings.kafka_heap}",
            f"-Xms{settings.kafka_heap}",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={log4j_path}",
            f"-Dkafka.logs.dir={paths.logs}",
            "-cp",
            classpath,
            "kafka.Kafka",
            str(paths.config),
        ]
        log(f"starting Kafka {settings.kafka_version} at {settings.kafka_bootstrap}")
        spawn(argv, pid_file=paths.pid, log_file=paths.logs / "stdout.log")
    try:
        wait_for_kafka(settings, log_file=paths.logs / "server.log")
    except StackError as exc:
        raise StackError(f"{exc}\nstdout:\n{tail(paths.logs / 'stdout.log', 20)}") from None
    log("Kafka is up")


def stop_kafka(settings: Settings) -> None:
    if terminate(kafka_paths(settings).pid, timeout_s=60):
        log("Kafka stopped")


# ------------------------------------------------------------------------------------- PostgreSQL


@dataclass(frozen=True)
class DbTarget:
    user: str
    password: str
    database: str
    host: str
    port: int


def db_target(database_url: str) -> DbTarget:
    url = urlsplit(database_url)
    return DbTarget(
        user=unquote(url.username or "postgres"),
        password=unquote(url.password or ""),
        database=url.path.lstrip("/") or "postgres",
        host=url.hostname or "127.0.0.1",
        port=url.port or 5432,
    )


@dataclass(frozen=True)
class Cluster:
    version: str
    name: str
    port: int
    online: bool


def _clusters() -> list[Cluster]:
    out = _run(["pg_lsclusters", "--no-header"]).stdout
    clusters = []
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 4:
            clusters.append(Cluster(fields[0], fields[1], int(fields[2]), fields[3] == "online"))
    return clusters


def install_browser() -> None:
    """Debian's chromium, for the dashboard's browser test (idempotent)."""
    if shutil.which("chromium") is None:
        _apt_install("chromium")


def install_postgres() -> None:
    if shutil.which("pg_lsclusters") is None or not Path("/usr/lib/postgresql").exists():
        _apt_install("postgresql")


def _cluster_for(port: int) -> Cluster:
    clusters = _clusters()
    for cluster in clusters:
        if cluster.port == port:
            return cluster
    if clusters:
        raise StackError(
            f"no PostgreSQL cluster listens on port {port} (clusters: "
            + ", ".join(f"{c.version}/{c.name}:{c.port}" for c in clusters)
            + "); set VDIP_DATABASE_URL to one of them"
        )
    versions = sorted(Path("/usr/lib/postgresql").iterdir(), key=lambda p: int(p.name))
    if not versions:
        raise StackError("PostgreSQL is installed but no server version is under /usr/lib/postgresql")
    version = versions[-1].name
    log(f"creating PostgreSQL cluster {version}/main on port {port}")
    _run(_as_root(["pg_createcluster", "--port", str(port), version, "main"]))
    return Cluster(version, "main", port, False)


def _psql(port: int, sql: str, database: str = "postgres") -> str:
    return _run(_as_postgres(["psql", "-X", "-q", "-At", "-p", str(port), "-d", database, "-c", sql])).stdout


def _quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _quote_ident(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def start_postgres(settings: Settings) -> None:
    target = db_target(settings.database_url)
    install_postgres()
    cluster = _cluster_for(target.port)
    if not cluster.online:
        log(f"starting PostgreSQL {cluster.version}/{cluster.name} on port {cluster.port}")
        result = _run(_as_root(["pg_ctlcluster", cluster.version, cluster.name, "start"]), check=False)
        if result.returncode != 0:
            logfile = Path(f"/var/log/postgresql/postgresql-{cluster.version}-{cluster.name}.log")
            raise StackError(f"PostgreSQL did not start:\n{result.stderr}\n{tail(logfile)}")
    deadline = time.monotonic() + settings.stack_timeout_s
    while True:
        if (
            _run(
                _as_postgres(["psql", "-X", "-At", "-p", str(target.port), "-c", "SELECT 1"]), check=False
            ).returncode
            == 0
        ):
            break
        if time.monotonic() > deadline:
            logfile = Path(f"/var/log/postgresql/postgresql-{cluster.version}-{cluster.name}.log")
            raise StackError(f"PostgreSQL did not answer SELECT 1 on port {target.port}:\n{tail(logfile)}")
        time.sleep(0.5)
    ensure_database(target)
    asyncio.run(_check_login(settings.database_url))
    log(f"PostgreSQL is up: database {target.database} on port {target.port}")


def ensure_database(target: DbTarget) -> None:
    """Create the project's role (with CREATEDB, for test databases) and database, idempotently."""
    role, password = _quote_ident(target.user), _quote_literal(target.password)
    if not _psql(target.port, f"SELECT 1 FROM pg_roles WHERE rolname = {_quote_literal(target.user)}"):
        _psql(target.port, f"CREATE ROLE {role} LOGIN CREATEDB PASSWORD {password}")
    else:
        _psql(target.port, f"ALTER ROLE {role} LOGIN CREATEDB PASSWORD {password}")
    if not _psql(target.port, f"SELECT 1 FROM pg_database WHERE datname = {_quote_literal(target.database)}"):
        _psql(target.port, f"CREATE DATABASE {_quote_ident(target.database)} OWNER {role}")


async def postgres_answers(database_url: str, timeout_s: float = 3.0) -> bool:
    """True when the project's role can log in to its database."""
    import asyncpg

    try:
        conn = await asyncpg.connect(database_url, timeout=timeout_s)
    except Exception:
        return False
    await conn.close()
    return True


async def _check_login(database_url: str) -> None:
    import asyncpg

    try:
        conn = await asyncpg.connect(database_url, timeout=10)
    except Exception as exc:
        raise StackError(f"cannot log in to {db_target(database_url).database}: {exc}") from exc
    try:
        await conn.fetchval("SELECT 1")
    finally:
        await conn.close()


def stop_postgres(settings: Settings) -> None:
    if shutil.which("pg_lsclusters") is None:
        return
    port = db_target(settings.database_url).port
    for cluster in _clusters():
        if cluster.port == port and cluster.online:
            _run(_as_root(["pg_ctlcluster", cluster.version, cluster.name, "stop"]))
            log("PostgreSQL stopped")


# ----------------------------------------------------------------------------------------- stack


def up(settings: Settings) -> None:
    started = time.monotonic()
    start_postgres(settings)
    start_kafka(settings)
    log(f"stack ready in {time.monotonic() - started:.1f} s")


def down(settings: Settings) -> None:
    stop_kafka(settings)
    stop_postgres(settings)

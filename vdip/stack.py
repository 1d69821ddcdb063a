"""The local stack: Kafka in KRaft mode (one node, or a cluster) and PostgreSQL, without Docker.

Kafka runs from the official ``org.apache.kafka:kafka_2.13`` jars that Maven resolves (cached in
``~/.m2`` and copied once into ``<stack_dir>/kafka/<version>/libs``), with its data in
``<stack_dir>/kafka/data`` so it survives restarts. With ``VDIP_KAFKA_BROKERS=3`` it runs three
nodes, each a broker and a voter of the controller quorum, on ports 9092/9094/9096 (controllers
9093/9095/9097), their data in ``<stack_dir>/kafka/cluster-3/node-<id>``. PostgreSQL is Debian's
package and cluster.

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
from collections.abc import Callable, Mapping, Sequence
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


def vdip_command(name: str) -> list[str]:
    """How ``vdip <name>`` runs one of the pipeline's processes, with this interpreter."""
    return [sys.executable, "-m", "vdip.cli", name]


def start_process(
    argv: Sequence[str],
    *,
    log_file: Path,
    env: dict[str, str] | None = None,
    detached: bool = True,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` with its output (stdout and stderr) appended to ``log_file``: the one way
    the CLI, its supervisor, the tests and the benchmarks start a process. ``detached``: in a
    session of its own, so that it outlives the terminal that started it."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as out:
        return subprocess.Popen(
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=detached,
            env=env,
            cwd=cwd,
        )


def spawn(argv: Sequence[str], *, pid_file: Path, log_file: Path, env: dict[str, str] | None = None) -> int:
    """Start a detached background process whose output goes to ``log_file``."""
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    proc = start_process(argv, log_file=log_file, env=env)
    pid_file.write_text(str(proc.pid))
    return proc.pid


def terminate(pid_file: Path, *, timeout_s: float = 30.0) -> bool:
    """SIGTERM the process of ``pid_file``, SIGKILL it after ``timeout_s``. True if one ran."""
    return bool(terminate_all([pid_file], timeout_s=timeout_s))


def terminate_all(pid_files: Sequence[Path], *, timeout_s: float = 30.0) -> list[Path]:
    """SIGTERM the processes of ``pid_files`` at once, SIGKILL those still running after
    ``timeout_s``. Returns the pid files whose process ran."""
    running = {pid_file: pid for pid_file in pid_files if (pid := read_pid(pid_file)) is not None}
    for pid_file in pid_files:
        if pid_file not in running:
            pid_file.unlink(missing_ok=True)
    for pid in running.values():
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while any(pid_alive(pid) for pid in running.values()) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid_file, pid in running.items():
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
            while pid_alive(pid):
                time.sleep(0.1)
        pid_file.unlink(missing_ok=True)
    return list(running)


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


@dataclass(frozen=True)
class KafkaNode:
    """One local Kafka process: a broker and a controller of the KRaft quorum."""

    node_id: int
    host: str
    port: int
    controller_port: int
    paths: KafkaPaths

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def _kafka_root(settings: Settings) -> Path:
    return settings.stack_dir.resolve() / "kafka"


def kafka_libs(settings: Settings) -> Path:
    return _kafka_root(settings) / settings.kafka_version / "libs"


def kafka_nodes(settings: Settings) -> list[KafkaNode]:
    """The local nodes ``vdip stack up`` runs: node k (from 0) listens on the first bootstrap
    address's port + 2k, its controller on ``kafka_controller_port`` + 2k. One node keeps its data
    in ``<stack_dir>/kafka``; a cluster of N in ``<stack_dir>/kafka/cluster-N/node-<id>``."""
    host, _, port = settings.kafka_bootstrap.split(",")[0].rpartition(":")
    root = _kafka_root(settings)
    count = settings.kafka_brokers
    return [
        KafkaNode(
            node_id=k + 1,
            host=host or "127.0.0.1",
            port=int(port) + 2 * k,
            controller_port=settings.kafka_controller_port + 2 * k,
            paths=KafkaPaths(root if count == 1 else root / f"cluster-{count}" / f"node-{k + 1}"),
        )
        for k in range(count)
    ]


def server_properties(node: KafkaNode, nodes: list[KafkaNode], extra: Mapping[str, str] | None = None) -> str:
    """One node's server.properties; ``extra`` comes last, so its keys win over the stack's."""
    replicas = min(len(nodes), 3)
    insync = 2 if replicas >= 3 else 1
    voters = ",".join(f"{n.node_id}@{n.host}:{n.controller_port}" for n in nodes)
    return "\n".join(
        [
            f"# Generated by `vdip stack up`: KRaft broker+controller {node.node_id} of {len(nodes)}.",
            "process.roles=broker,controller",
            f"node.id={node.node_id}",
            f"controller.quorum.voters={voters}",
            f"listeners=PLAINTEXT://{node.host}:{node.port},CONTROLLER://{node.host}:{node.controller_port}",
            f"advertised.listeners=PLAINTEXT://{node.address}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            f"log.dirs={node.paths.data}",
            "num.partitions=3",
            # Internal topics: as many copies as there are nodes, up to 3 (with one node, a
            # replication factor above 1 would leave consumer groups unable to work).
            f"default.replication.factor={replicas}",
            f"offsets.topic.replication.factor={replicas}",
            "offsets.topic.num.partitions=10",
            f"transaction.state.log.replication.factor={replicas}",
            f"transaction.state.log.min.isr={insync}",
            f"share.coordinator.state.topic.replication.factor={replicas}",
            f"share.coordinator.state.topic.min.isr={insync}",
            f"min.insync.replicas={insync}",
            "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=false",
            "log.retention.hours=168",
            *(f"{key}={value}" for key, value in (extra or {}).items()),  # a later key wins
            "",
        ]
    )


def ensure_java_and_maven() -> None:
    missing = [tool for tool in ("java", "mvn") if shutil.which(tool) is None]
    if missing:
        _apt_install("openjdk-17-jre-headless", "maven")


def install_kafka(settings: Settings) -> Path:
    """Resolve the broker's jars with Maven, once per version. Returns the libs folder."""
    libs = kafka_libs(settings)
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


async def kafka_answers(settings: Settings, timeout_s: float = 5.0) -> bool:
    """True when the broker answers a metadata request."""
    from aiokafka.admin import AIOKafkaAdminClient

    from vdip.kafka import client_options

    admin = AIOKafkaAdminClient(**client_options(settings), request_timeout_ms=int(timeout_s * 1000))
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


async def kafka_brokers_up(settings: Settings, timeout_s: float = 5.0) -> int:
    """How many brokers the cluster reports (0 when it does not answer)."""
    from aiokafka.admin import AIOKafkaAdminClient

    from vdip.kafka import client_options

    admin = AIOKafkaAdminClient(**client_options(settings), request_timeout_ms=int(timeout_s * 1000))
    quiet = logging.getLogger("aiokafka")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        cluster = await asyncio.wait_for(admin.describe_cluster(), timeout_s)
        return len(cluster["brokers"])
    except Exception:
        return 0
    finally:
        with contextlib.suppress(Exception):
            await admin.close()
        quiet.setLevel(level)


def wait_for_kafka(settings: Settings, nodes: list[KafkaNode], *, started: bool = False) -> None:
    """Wait until every node is a registered broker; raise with the nodes' logs if not. With
    ``started`` (we spawned them), stop waiting as soon as one of them died."""
    bootstrap = ",".join(node.address for node in nodes)
    deadline = time.monotonic() + settings.stack_timeout_s
    while time.monotonic() < deadline:
        if asyncio.run(kafka_brokers_up(settings)) >= len(nodes):
            return
        if started and any(read_pid(node.paths.pid) is None for node in nodes):
            break  # no point waiting
        time.sleep(1)
    logs = [
        f"node {n.node_id}:\n{tail(n.paths.logs / 'server.log', 20)}\n{tail(n.paths.logs / 'stdout.log', 9)}"
        for n in nodes
    ]
    raise StackError(
        f"Kafka at {bootstrap} did not report {len(nodes)} broker(s); the logs end with:\n" + "\n".join(logs)
    )


def start_kafka(
    settings: Settings,
    libs: Path | None = None,
    extra_properties: Callable[[KafkaNode], Mapping[str, str]] | None = None,
) -> None:
    """Start every local node that is not running (a single broker, or a KRaft cluster of
    ``kafka_brokers`` nodes) and wait until each is a registered broker. ``libs``: the broker's
    jars, if not those of ``settings.stack_dir``; ``extra_properties``: a node's further
    server.properties, replacing the stack's values of those keys (e.g. listeners)."""
    if settings.kafka_security_protocol != "PLAINTEXT":
        raise StackError(
            "the local Kafka speaks PLAINTEXT, but kafka_security_protocol is"
            f" {settings.kafka_security_protocol}: with a cluster of your own, run the processes"
            " without the local stack (`vdip migrate`, `vdip topics apply`, `vdip supervise`)"
        )
    nodes = kafka_nodes(settings)
    _refuse_other_layout(settings)
    down = [node for node in nodes if read_pid(node.paths.pid) is None]
    if not down or (len(nodes) == 1 and asyncio.run(kafka_answers(settings, 2))):
        wait_for_kafka(settings, nodes)
        log(f"Kafka already running at {settings.kafka_bootstrap}")
        return
    libs = libs or install_kafka(settings)
    cluster_id = _cluster_id(settings, nodes, libs)
    for node in down:
        node.paths.data.mkdir(parents=True, exist_ok=True)
        node.paths.logs.mkdir(parents=True, exist_ok=True)
        node.paths.config.write_text(
            server_properties(node, nodes, extra_properties(node) if extra_properties else None)
        )
        if not (node.paths.data / "meta.properties").exists():
            log(f"formatting the storage of Kafka node {node.node_id} (once)")
            storage = ["java", "-cp", f"{libs}/*", "kafka.tools.StorageTool"]
            _run([*storage, "format", "--ignore-formatted", "-t", cluster_id, "-c", str(node.paths.config)])
    for node in down:
        log(f"starting Kafka {settings.kafka_version} node {node.node_id} at {node.address}")
        argv = kafka_argv(settings, node, libs)
        spawn(argv, pid_file=node.paths.pid, log_file=node.paths.logs / "stdout.log")
    wait_for_kafka(settings, nodes, started=True)
    log(f"Kafka is up: {len(nodes)} broker(s) at {settings.kafka_bootstrap}")


def kafka_argv(settings: Settings, node: KafkaNode, libs: Path) -> list[str]:
    log4j = Path(str(resources.files("vdip.stackfiles").joinpath("log4j2.properties")))
    return [
        "java",
        f"-Xmx{settings.kafka_heap}",
        f"-Xms{settings.kafka_heap}",
        "-XX:+UseG1GC",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={log4j}",
        f"-Dkafka.logs.dir={node.paths.logs}",
        "-cp",
        f"{libs}/*",
        "kafka.Kafka",
        str(node.paths.config),
    ]


def _cluster_id(settings: Settings, nodes: list[KafkaNode], libs: Path) -> str:
    """The cluster's id, made once and kept beside its nodes (every node is formatted with it)."""
    path = nodes[0].paths.root.parent / "cluster-id" if len(nodes) > 1 else nodes[0].paths.root / "cluster-id"
    if path.exists():
        return path.read_text().strip()
    made = _run(["java", "-cp", f"{libs}/*", "kafka.tools.StorageTool", "random-uuid"]).stdout.strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(made)
    return made


def _other_layouts(settings: Settings) -> list[KafkaPaths]:
    root = _kafka_root(settings)
    single = KafkaPaths(root)
    clusters = [KafkaPaths(node) for node in sorted(root.glob("cluster-*/node-*"))]
    mine = {node.paths for node in kafka_nodes(settings)}
    return [paths for paths in [single, *clusters] if paths not in mine]


def _refuse_other_layout(settings: Settings) -> None:
    """A single broker and a cluster share ports: only one of them runs at a time."""
    running = [paths for paths in _other_layouts(settings) if read_pid(paths.pid) is not None]
    if running:
        raise StackError(
            f"another local Kafka runs ({running[0].root}); stop it first (`vdip stack down` stops"
            " every local node) before starting one with VDIP_KAFKA_BROKERS="
            f"{settings.kafka_brokers}"
        )


def stop_kafka(settings: Settings) -> None:
    """Stop every local Kafka node, of this layout and of any other (single or cluster)."""
    layouts = [node.paths for node in kafka_nodes(settings)] + _other_layouts(settings)
    stopped = terminate_all([paths.pid for paths in layouts], timeout_s=60)
    if stopped:
        log(f"Kafka stopped ({len(stopped)} node(s))")


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

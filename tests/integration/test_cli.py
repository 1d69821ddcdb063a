"""The console script as a newcomer uses it: `vdip up` prints a working demo key."""

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from tests.conftest import ROOT, Services, _free_port, needs_local_stack, wait_until
from vdip import stack, supervisor
from vdip.cli import PROCESSES, stop_processes
from vdip.settings import Settings


def vdip(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vdip.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )


@pytest.fixture
def cli_env(settings: Settings, tmp_path: Path) -> dict[str, str]:
    """The run's services and database, but a stack dir, ports, groups and prefix of its own."""
    return {
        **os.environ,
        "VDIP_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "VDIP_DATABASE_URL": settings.database_url,
        "VDIP_TOPIC_PREFIX": f"{settings.topic_prefix}cli.",
        "VDIP_WORKER_ID": f"{settings.worker_id}-cli",
        "VDIP_WORKER_DATADIR": str(tmp_path / "worker"),
        "VDIP_SINK_GROUP_ID": f"{settings.sink_group_id}-cli",
        "VDIP_TABLE_SINK_GROUP_ID": f"{settings.table_sink_group_id}-cli",
        "VDIP_GATEWAY_PORT": str(_free_port()),
        "VDIP_STACK_DIR": str(tmp_path / "stack"),
    }


async def test_up_starts_everything_and_prints_a_working_demo_key(
    services: Services, cli_env: dict[str, str]
) -> None:
    settings = Settings.model_validate(
        {k[5:].lower(): v for k, v in cli_env.items() if k.startswith("VDIP_")}
    )
    try:
        result = vdip("up", env=cli_env)
        assert result.returncode == 0, result.stdout + result.stderr
        key = re.search(r"Demo API key: (\S+)", result.stdout)
        assert key, result.stdout
        assert "OpenAPI docs: http://" in result.stdout
        run_dir = settings.stack_dir.resolve() / "run"
        # A process that dies is started again by the supervisor, which says so in `vdip status`.
        killed = stack.read_pid(run_dir / "worker.pid")
        assert killed is not None
        os.kill(killed, signal.SIGKILL)

        async def restarted() -> bool:
            worker = supervisor.read_state(run_dir).get("worker", {})
            return worker.get("restarts") == 1 and stack.read_pid(run_dir / "worker.pid") not in (
                None,
                killed,
            )

        await wait_until(restarted, 30, message="the killed worker started again")
        status = vdip("status", env=cli_env)
        assert status.returncode == 0, status.stdout + status.stderr
        rows = {line.split()[0]: line.split() for line in status.stdout.splitlines()[2:]}
        assert set(rows) == set(PROCESSES), status.stdout
        assert rows["worker"][3] == "1" and "killed by SIGKILL" in status.stdout, status.stdout
        assert all(row[3] == "0" for name, row in rows.items() if name != "worker"), status.stdout
        base = f"http://127.0.0.1:{cli_env['VDIP_GATEWAY_PORT']}"
        async with httpx.AsyncClient(base_url=base, headers={"X-API-Key": key[1]}) as client:
            accepted = await client.post("/api/ingest/demo", json={"event_type": "hello", "payload": {}})
            assert accepted.status_code == 202
            event_id = accepted.json()["data"]["event_id"]

            async def stored() -> bool:
                return (await client.get(f"/api/events/{event_id}")).status_code == 200

            await wait_until(stored, 60, message="the demo event went through the pipeline")
        again = vdip("up", env=cli_env)  # a second run is a no-op for what runs, and a new key
        assert again.returncode == 0, again.stderr
        assert "gateway already running" in again.stderr
        assert re.search(r"Demo API key: (\S+)", again.stdout)[1] != key[1]  # type: ignore[index]
    finally:
        stop_processes(settings)
    for name in ("supervisor", *PROCESSES):
        assert stack.read_pid(settings.stack_dir.resolve() / "run" / f"{name}.pid") is None


def test_restarts_back_off_while_a_process_keeps_dying() -> None:
    delays = []
    delay = supervisor.FIRST_DELAY_S
    for _ in range(8):
        wait, delay = supervisor.next_delay(delay, ran_s=2)
        delays.append(wait)
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60]
    assert supervisor.next_delay(60, ran_s=supervisor.STABLE_AFTER_S) == (1, 2)
    assert (
        supervisor.describe_exit(-9) == "killed by SIGKILL" and supervisor.describe_exit(3) == "exit code 3"
    )


def test_topics_apply_exits_non_zero_on_drift(cli_env: dict[str, str], tmp_path: Path) -> None:
    declared = tmp_path / "topics.yaml"
    declared.write_text("topics:\n  - name: drifty\n    partitions: 1\n")
    created = vdip("topics", "apply", "--file", str(declared), env=cli_env)
    assert created.returncode == 0, created.stdout + created.stderr
    assert created.stdout.endswith("1 created, 0 as declared, 0 drifted\n"), created.stdout
    declared.write_text("topics:\n  - name: drifty\n    partitions: 2\n")
    result = vdip("topics", "apply", "--file", str(declared), env=cli_env)
    # The report, to its last line, and no traceback: a crash exits 1 too.
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stdout.splitlines() == [
        f"DRIFT    {cli_env['VDIP_TOPIC_PREFIX']}drifty: 1 partitions, declared 2",
        "0 created, 0 as declared, 1 drifted",
    ], result.stdout
    assert result.returncode == 1


def test_stack_status_and_up_are_idempotent(services: Services, cli_env: dict[str, str]) -> None:
    needs_local_stack(services, "Kafka and PostgreSQL, which `vdip stack up` manages")
    env = {**os.environ}  # the real stack's own settings
    up = vdip("stack", "up", env=env)
    assert up.returncode == 0, up.stderr
    assert "Kafka already running" in up.stderr
    status = vdip("stack", "status", env=env)
    assert status.returncode == 0 and "kafka" in status.stdout and "postgres: up" in status.stdout


def _properties(node: stack.KafkaNode, nodes: list[stack.KafkaNode]) -> dict[str, str]:
    text = stack.server_properties(node, nodes)
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))


def test_server_properties_are_single_node_kraft(tmp_path: Path) -> None:
    own = Settings(stack_dir=tmp_path, kafka_bootstrap="127.0.0.1:19092", kafka_controller_port=19093)
    [node] = stack.kafka_nodes(own)
    lines = _properties(node, [node])
    assert lines["process.roles"] == "broker,controller"
    assert lines["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert lines["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert lines["log.dirs"] == str(tmp_path.resolve() / "kafka" / "data")
    for key in (
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "transaction.state.log.min.isr",
        "default.replication.factor",
        "min.insync.replicas",
    ):
        assert lines[key] == "1"


def test_three_nodes_form_one_quorum_with_three_copies_of_everything(tmp_path: Path) -> None:
    own = Settings(stack_dir=tmp_path, kafka_brokers=3, kafka_controller_port=19093)
    nodes = stack.kafka_nodes(own)
    assert own.kafka_bootstrap == "127.0.0.1:9092,127.0.0.1:9094,127.0.0.1:9096"
    assert [n.address for n in nodes] == own.kafka_bootstrap.split(",")
    assert len({n.paths.data for n in nodes}) == 3
    voters = "1@127.0.0.1:19093,2@127.0.0.1:19095,3@127.0.0.1:19097"
    for node in nodes:
        lines = _properties(node, nodes)
        assert lines["node.id"] == str(node.node_id)
        assert lines["controller.quorum.voters"] == voters
        assert (
            lines["listeners"] == f"PLAINTEXT://{node.address},CONTROLLER://127.0.0.1:{node.controller_port}"
        )
        assert lines["log.dirs"] == str(node.paths.data)
        assert lines["offsets.topic.replication.factor"] == lines["default.replication.factor"] == "3"
        assert lines["min.insync.replicas"] == lines["transaction.state.log.min.isr"] == "2"
    assert (own.replication_factor, own.min_insync_replicas) == (3, 2)


def test_replication_settings_are_checked() -> None:
    assert (Settings(kafka_brokers=2).replication_factor, Settings(kafka_brokers=2).min_insync_replicas) == (
        2,
        1,
    )
    explicit = Settings(topic_replication_factor=3, topic_min_insync_replicas=3)
    assert (explicit.replication_factor, explicit.min_insync_replicas) == (3, 3)
    with pytest.raises(ValidationError, match="exceeds the replication factor"):
        Settings(topic_min_insync_replicas=2)


def test_database_url_parsing() -> None:
    target = stack.db_target("postgresql://us%40er:p%3Ass@db.local:6543/events")
    assert (target.user, target.password, target.host, target.port, target.database) == (
        "us@er",
        "p:ss",
        "db.local",
        6543,
        "events",
    )

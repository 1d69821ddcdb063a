"""docker-compose.yml cannot run here (no Docker engine): check that it agrees with the scripts."""

from pathlib import Path
from typing import Any

import yaml

from tests.conftest import ROOT
from vdip import stack
from vdip.cli import PROCESSES
from vdip.settings import Settings


def compose(name: str = "docker-compose.yml") -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / name).read_text())
    return loaded


def _same_broker_settings(env: dict[str, Any], node: stack.KafkaNode, nodes: list[stack.KafkaNode]) -> None:
    props = dict(
        line.split("=", 1)
        for line in stack.server_properties(node, nodes).splitlines()
        if "=" in line and not line.startswith("#")
    )
    for key, value in props.items():
        if key in {"log.dirs", "listeners", "advertised.listeners", "controller.quorum.voters"}:
            continue  # addresses and paths differ inside Docker's network
        name = "KAFKA_" + key.upper().replace(".", "_")
        assert str(env[name]) == value, name


def test_same_kafka_version_and_single_node_settings(tmp_path: Path) -> None:
    services = compose()["services"]
    assert services["kafka"]["image"] == f"apache/kafka:{Settings().kafka_version}"
    nodes = stack.kafka_nodes(Settings(stack_dir=tmp_path))
    _same_broker_settings(services["kafka"]["environment"], nodes[0], nodes)


def test_the_cluster_overlay_is_the_stacks_three_node_cluster(tmp_path: Path) -> None:
    base, overlay = compose()["services"], compose("docker-compose.cluster.yml")["services"]
    own = Settings(stack_dir=tmp_path, kafka_brokers=3)
    nodes = stack.kafka_nodes(own)
    names = ["kafka", "kafka-2", "kafka-3"]
    for name, node in zip(names, nodes, strict=True):
        env = {**(base.get(name, {}).get("environment") or {}), **overlay[name]["environment"]}
        assert overlay[name]["image"] == f"apache/kafka:{own.kafka_version}"
        _same_broker_settings(env, node, nodes)
        assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@kafka:9093,2@kafka-2:9093,3@kafka-3:9093"
        assert env["KAFKA_NODE_ID"] == node.node_id
    assert len({overlay[name]["environment"]["CLUSTER_ID"] for name in names}) == 1
    for name in (*PROCESSES, "setup"):
        env = overlay[name]["environment"]
        assert env["VDIP_KAFKA_BOOTSTRAP"] == ",".join(f"{n}:9092" for n in names)
        assert env["VDIP_TOPIC_REPLICATION_FACTOR"] == str(own.replication_factor)
        assert env["VDIP_TOPIC_MIN_INSYNC_REPLICAS"] == str(own.min_insync_replicas)


def test_every_long_running_service_restarts_and_has_a_healthcheck() -> None:
    base, overlay = compose()["services"], compose("docker-compose.cluster.yml")["services"]
    merged = {name: {**base.get(name, {}), **overlay.get(name, {})} for name in {*base, *overlay}}
    for services in (base, merged):
        for name, service in services.items():
            if name != "setup":
                assert service.get("restart") == "unless-stopped", name
                assert service["healthcheck"]["test"], name
    defaults = Settings()
    for name in PROCESSES:
        port = int(base[name]["healthcheck"]["test"][-1].split("127.0.0.1:")[1].split("/")[0])
        if name == "gateway":
            assert port == defaults.gateway_port
        else:
            assert port == getattr(defaults, f"{name.replace('-', '_')}_metrics_port"), name


def test_every_process_of_the_cli_runs_in_compose() -> None:
    services = compose()["services"]
    commands = {tuple(s["command"]) for s in services.values() if "command" in s}
    assert commands == {(name,) for name in PROCESSES}
    for name in (*PROCESSES, "setup"):
        env = services[name]["environment"]
        assert env["VDIP_KAFKA_BOOTSTRAP"] == "kafka:9092"
        assert env["VDIP_DATABASE_URL"].startswith("postgresql://vdip:vdip@postgres:5432/")
    assert "topics apply" in " ".join(services["setup"]["entrypoint"])

"""docker-compose.yml cannot run here (no Docker engine): check that it agrees with the scripts."""

from pathlib import Path
from typing import Any

import yaml

from tests.conftest import ROOT
from vdip import stack
from vdip.cli import PROCESSES
from vdip.settings import Settings


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def test_same_kafka_version_and_single_node_settings(tmp_path: Path) -> None:
    services = compose()["services"]
    assert services["kafka"]["image"] == f"apache/kafka:{Settings().kafka_version}"
    env = services["kafka"]["environment"]
    nodes = stack.kafka_nodes(Settings(stack_dir=tmp_path))
    props = dict(
        line.split("=", 1)
        for line in stack.server_properties(nodes[0], nodes).splitlines()
        if "=" in line and not line.startswith("#")
    )
    for key, value in props.items():
        if key in {"log.dirs", "listeners", "advertised.listeners", "controller.quorum.voters"}:
            continue  # addresses and paths differ inside Docker's network
        name = "KAFKA_" + key.upper().replace(".", "_")
        assert str(env[name]) == value, name


def test_every_process_of_the_cli_runs_in_compose() -> None:
    services = compose()["services"]
    commands = {tuple(s["command"]) for s in services.values() if "command" in s}
    assert commands == {(name,) for name in PROCESSES}
    for name in (*PROCESSES, "setup"):
        env = services[name]["environment"]
        assert env["VDIP_KAFKA_BOOTSTRAP"] == "kafka:9092"
        assert env["VDIP_DATABASE_URL"].startswith("postgresql://vdip:vdip@postgres:5432/")
    assert "topics apply" in " ".join(services["setup"]["entrypoint"])

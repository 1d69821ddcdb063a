"""Settings travel to the processes a test, a benchmark or the CLI starts as VDIP_* variables."""

import os
from pathlib import Path

import pytest

from vdip.settings import Settings


def test_a_process_started_with_the_environment_loads_the_same_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    chosen = Settings(
        kafka_brokers=3,
        topic_replication_factor=2,
        topic_prefix="t-1.",
        admin_token="secret-token",
        webhook_allowed_networks=["127.0.0.2/32", "10.0.0.0/8"],
        webhook_retry_schedule_s=[0.5, 1.0, 30.0],
        worker_datadir=tmp_path / "worker",
        produce_timeout_s=2.5,
        gateway_port=18000,
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="SCRAM-SHA-256",
        kafka_sasl_username="vdip",
        kafka_sasl_password="pw",
    )
    for name in [n for n in os.environ if n.startswith("VDIP_")]:
        monkeypatch.delenv(name)
    for name, value in chosen.as_environment().items():
        monkeypatch.setenv(name, value)
    loaded = Settings(_env_file=None)
    assert loaded.model_dump() == chosen.model_dump()
    assert loaded.admin_token is not None and loaded.admin_token.get_secret_value() == "secret-token"
    assert "VDIP_KAFKA_SSL_CAFILE" not in chosen.as_environment()  # None: left to the default

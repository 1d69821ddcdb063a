"""Kafka with TLS and SASL: the settings refuse combinations that cannot work, and the platform's
clients (topics, gateway, worker, sink) connect to a broker of this run that asks for a password
(SASL PLAIN) or for certificates (TLS, with the client's certificate required)."""

import asyncio
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka.errors import KafkaConnectionError
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from pydantic import SecretStr, ValidationError

from tests.conftest import (
    ROOT,
    AppKey,
    PrivateKafka,
    Process,
    _free_port,
    another_gateway,
    read_to_end,
    record_values,
    start_private_kafka,
    wait_until,
)
from vdip import stack
from vdip.errors import StackError
from vdip.kafka import broker_credentials, client_options
from vdip.settings import Settings
from vdip.topics import apply_topics, declared_topics

SASL: dict[str, Any] = {
    "kafka_sasl_mechanism": "PLAIN",
    "kafka_sasl_username": "vdip",
    "kafka_sasl_password": "s3cret",
}


# ------------------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"kafka_security_protocol": "SASL_SSL"}, "needs kafka_sasl_mechanism, kafka_sasl_username"),
        (
            {"kafka_security_protocol": "SASL_PLAINTEXT", **SASL, "kafka_sasl_password": ""},
            "needs kafka_sasl_password",
        ),
        ({"kafka_sasl_username": "vdip"}, "kafka_sasl_username set, but kafka_security_protocol PLAINTEXT"),
        ({"kafka_security_protocol": "SSL", **SASL}, "does not use SASL"),
        (
            {"kafka_security_protocol": "SASL_PLAINTEXT", **SASL, "kafka_ssl_cafile": __file__},
            "does not use TLS",
        ),
        ({"kafka_security_protocol": "SSL", "kafka_ssl_certfile": __file__}, "go together"),
        ({"kafka_security_protocol": "SSL", "kafka_ssl_keyfile": __file__}, "go together"),
        ({"kafka_security_protocol": "SSL", "kafka_ssl_key_password": "x"}, "without kafka_ssl_keyfile"),
        (
            {"kafka_security_protocol": "SSL", "kafka_ssl_cafile": "/nonexistent/ca.pem"},
            "does not point to a file",
        ),
        ({"kafka_security_protocol": "TLS"}, "kafka_security_protocol"),
        ({"kafka_security_protocol": "SASL_SSL", **SASL, "kafka_sasl_mechanism": "GSSAPI"}, "mechanism"),
    ],
)
def test_settings_refuse_what_cannot_work(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message) as refused:
        Settings(**fields)
    assert "s3cret" not in str(refused.value)  # the values given are not repeated


def test_the_local_stack_refuses_a_protocol_it_does_not_speak(tmp_path: Path) -> None:
    settings = Settings(stack_dir=tmp_path, kafka_security_protocol="SASL_PLAINTEXT", **SASL)
    with pytest.raises(StackError, match="the local Kafka speaks PLAINTEXT"):
        stack.start_kafka(settings)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"kafka_security_protocol": "SSL"},
        {"kafka_security_protocol": "SASL_PLAINTEXT", **SASL},
        {"kafka_security_protocol": "SASL_SSL", **SASL, "kafka_sasl_mechanism": "SCRAM-SHA-512"},
    ],
)
def test_faust_connects_as_aiokafka_does(fields: dict[str, Any]) -> None:
    """What faust hands aiokafka for ``broker_credentials`` is what every other client gets."""
    settings = Settings(**fields)
    ours = client_options(settings)
    del ours["bootstrap_servers"]
    faust = dict(credentials_to_aiokafka_auth(broker_credentials(settings)))
    assert {k: v for k, v in faust.items() if v is not None}.keys() == ours.keys()
    assert {k: v for k, v in faust.items() if k != "ssl_context"} == {
        k: v for k, v in ours.items() if k != "ssl_context"
    }
    assert ours["security_protocol"] == settings.kafka_security_protocol
    if "ssl_context" in ours:
        assert ours["ssl_context"].check_hostname and faust["ssl_context"].check_hostname


# ---------------------------------------------------------------------- a broker asking for them


@dataclass
class SecureKafka:
    kafka: PrivateKafka
    sasl: Settings  # this run's settings, pointing at the SASL_PLAINTEXT listener with the right password
    tls: Settings  # at the SSL listener, with the test CA and a client certificate (encrypted key)
    sasl_ssl: Settings  # at the SASL_SSL listener


def _certificates(folder: Path) -> dict[str, Path]:
    """A CA of this run, a broker certificate for 127.0.0.1 and a client certificate whose key is
    encrypted (password ``keypass``), made with the openssl CLI."""

    def run(*argv: str) -> None:
        subprocess.run(["openssl", *argv], check=True, capture_output=True, cwd=folder)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=vdip test CA")  # fmt: skip
    for name, extra in (("broker", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={name}")  # fmt: skip
        (folder / f"{name}.ext").write_text(extra + "\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext")  # fmt: skip
    # Kafka's PEM key store: the (PKCS#8, unencrypted) key and the certificate in one file.
    (folder / "broker.pem").write_text(
        (folder / "broker.key").read_text() + (folder / "broker.crt").read_text()
    )
    run("pkcs8", "-topk8", "-in", "client.key", "-out", "client-encrypted.key", "-passout", "pass:keypass")
    return {
        "ca": folder / "ca.pem",
        "broker": folder / "broker.pem",
        "client_cert": folder / "client.crt",
        "client_key": folder / "client-encrypted.key",
    }


@pytest.fixture(scope="module")
async def secure(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SecureKafka]:
    """A private broker whose PLAINTEXT listener serves only the stack's own checks; clients use
    its SASL_PLAINTEXT (user vdip), SSL (client certificate required) and SASL_SSL listeners."""
    files = await asyncio.to_thread(_certificates, tmp_path_factory.mktemp("tls"))
    ports = {"SASL_PLAINTEXT": _free_port(), "SSL": _free_port(), "SASL_SSL": _free_port()}
    login = 'org.apache.kafka.common.security.plain.PlainLoginModule required user_vdip="s3cret";'

    def properties(node: stack.KafkaNode) -> dict[str, str]:
        extra = ",".join(f"{name}://127.0.0.1:{port}" for name, port in ports.items())
        return {
            "listeners": f"PLAINTEXT://{node.address},CONTROLLER://{node.host}:{node.controller_port},{extra}",
            "advertised.listeners": f"PLAINTEXT://{node.address},{extra}",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,"
            + ",".join(f"{name}:{name}" for name in ports),
            "sasl.enabled.mechanisms": "PLAIN",
            "listener.name.sasl_plaintext.plain.sasl.jaas.config": login,
            "listener.name.sasl_ssl.plain.sasl.jaas.config": login,
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(files["broker"]),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(files["ca"]),
            "listener.name.ssl.ssl.client.auth": "required",
        }

    kafka = await asyncio.to_thread(
        start_private_kafka, tmp_path_factory.mktemp("secure-kafka"), 1, properties
    )
    try:

        def at(protocol: str, **fields: Any) -> Settings:
            return settings.model_copy(
                update={
                    "kafka_bootstrap": f"127.0.0.1:{ports[protocol]}",
                    "kafka_security_protocol": protocol,
                    "produce_timeout_s": 2.0,
                    **fields,
                }
            )

        sasl = {**SASL, "kafka_sasl_password": SecretStr("s3cret")}
        yield SecureKafka(
            kafka,
            sasl=at("SASL_PLAINTEXT", **sasl),
            tls=at(
                "SSL",
                kafka_ssl_cafile=files["ca"],
                kafka_ssl_certfile=files["client_cert"],
                kafka_ssl_keyfile=files["client_key"],
                kafka_ssl_key_password=SecretStr("keypass"),
            ),
            sasl_ssl=at("SASL_SSL", **sasl, kafka_ssl_cafile=files["ca"]),
        )
    finally:
        await asyncio.to_thread(kafka.stop)


def _wrong_password(settings: Settings) -> Settings:
    return settings.model_copy(update={"kafka_sasl_password": SecretStr("wrong")})


def _event_ids(records: list[Any]) -> set[str]:
    found: set[str] = set()
    for record in records:
        for item in record_values(record):
            found.add(item["event"]["event_id"] if "event" in item else item["event_id"])
    return found


async def _ingest(base_url: str, app: AppKey) -> httpx.Response:
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        return await http.post(
            f"/api/ingest/{app.app_id}", json={"event_type": "secure"}, headers=app.headers
        )


async def test_each_protocol_needs_its_credentials(secure: SecureKafka) -> None:
    for settings in (secure.sasl, secure.tls, secure.sasl_ssl):
        assert await stack.kafka_brokers_up(settings) == 1, settings.kafka_security_protocol
    assert await stack.kafka_brokers_up(_wrong_password(secure.sasl)) == 0
    assert await stack.kafka_brokers_up(_wrong_password(secure.sasl_ssl)) == 0
    no_password = secure.sasl.model_copy(update={"kafka_security_protocol": "PLAINTEXT"})
    assert await stack.kafka_brokers_up(no_password, 2) == 0
    no_certificate = secure.tls.model_copy(
        update={"kafka_ssl_certfile": None, "kafka_ssl_keyfile": None, "kafka_ssl_key_password": None}
    )
    assert await stack.kafka_brokers_up(no_certificate) == 0
    unknown_ca = secure.tls.model_copy(update={"kafka_ssl_cafile": None})  # the system's CAs
    assert await stack.kafka_brokers_up(unknown_ca) == 0


async def test_topics_gateway_worker_and_sink_over_sasl(
    secure: SecureKafka, app: AppKey, pool: asyncpg.Pool, log_dir: Path, tmp_path: Path
) -> None:
    sasl = secure.sasl
    with pytest.raises(KafkaConnectionError):
        await apply_topics(_wrong_password(sasl), declared_topics(sasl, ROOT / "topics.yaml"))
    report = await apply_topics(sasl, declared_topics(sasl, ROOT / "topics.yaml"))
    assert report.created and not report.drift, report

    own = sasl.model_copy(
        update={
            "worker_id": f"{sasl.worker_id}-sasl",
            "worker_datadir": tmp_path / "worker",
            "worker_metrics_port": _free_port(),
            "sink_group_id": f"{sasl.sink_group_id}-sasl",
            "sink_metrics_port": _free_port(),
        }
    )
    worker = Process("worker", own, log_dir, label="worker-sasl")
    sink = Process("sink", own, log_dir, label="sink-sasl")
    worker.start()
    sink.start()
    try:
        async with another_gateway(own, log_dir, "gateway-sasl") as base_url:
            response = await _ingest(base_url, app)
            assert response.status_code == 202, response.text
        event_id = response.json()["data"]["event_id"]
        assert event_id in _event_ids(await read_to_end(sasl, "events"))

        async def stored() -> bool:
            assert worker.alive(), worker.log_tail()
            assert sink.alive(), sink.log_tail()
            return bool(
                await pool.fetchval("SELECT 1 FROM data_events WHERE event_id = $1", uuid.UUID(event_id))
            )

        await wait_until(
            stored, 120, message="the event routed by the worker and stored by the sink over SASL"
        )
        assert event_id in _event_ids(await read_to_end(sasl, "events.routed"))
    finally:
        worker.stop()
        sink.stop()


async def test_gateway_with_a_wrong_password_is_not_ready_and_answers_503(
    secure: SecureKafka, app: AppKey, log_dir: Path
) -> None:
    wrong = _wrong_password(secure.sasl).model_copy(update={"gateway_port": _free_port()})
    gateway = Process("gateway", wrong, log_dir, label="gateway-wrong-password")
    gateway.start()
    base_url = f"http://127.0.0.1:{wrong.gateway_port}"
    try:

        async def live() -> bool:
            assert gateway.alive(), gateway.log_tail()
            try:
                async with httpx.AsyncClient() as http:
                    return (await http.get(f"{base_url}/health")).status_code == 200
            except httpx.HTTPError:
                return False

        await wait_until(live, 60, message="the gateway answers")
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
            ready = await http.get("/health/ready")
        assert ready.status_code == 503, ready.text
        assert ready.json()["data"]["kafka"]["ok"] is False
        assert ready.json()["data"]["postgres"]["ok"] is True
        started = time.monotonic()
        response = await _ingest(base_url, app)
        assert response.status_code == 503, response.text
        assert time.monotonic() - started < 10
        assert "Retry-After" in response.headers
        assert gateway.alive()
        assert "SaslAuthenticationFailed" in gateway.log_tail()  # the reason, in the log
    finally:
        gateway.stop()


async def test_gateway_over_tls_with_a_client_certificate(
    secure: SecureKafka, app: AppKey, log_dir: Path
) -> None:
    tls = secure.tls
    report = await apply_topics(tls, declared_topics(tls, ROOT / "topics.yaml"))
    assert not report.drift, report
    async with another_gateway(tls, log_dir, "gateway-tls") as base_url:
        response = await _ingest(base_url, app)
        assert response.status_code == 202, response.text
    assert response.json()["data"]["event_id"] in _event_ids(await read_to_end(tls, "events"))

"""The gateway's Kafka producer: idempotent, ``acks=all``, and bounded in time.

``send`` returns only once the broker acknowledged the record durably; when the broker does not
answer within ``produce_timeout_s`` it raises ``BrokerUnavailable`` (the API answers 503). Events
of one application sent at the same moment by concurrent requests share a record. A record
whose wait timed out may still be written once the broker is back: the client was told to retry,
and retrying with the same ``event_id`` keeps it one event (the store is idempotent on it).
"""

import asyncio
import contextlib
import functools
import logging
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from schemas import EventEnvelope
from schemas.events import envelope_json
from schemas.records import batch_records
from vdip import metrics
from vdip.errors import BrokerUnavailable
from vdip.kafka import client_options
from vdip.settings import Settings

log = logging.getLogger(__name__)


def _outcome(future: "asyncio.Future[Any]", timeout: float) -> BrokerUnavailable | None:
    """What became of one record: None once acknowledged, or why it was not (yet)."""
    if not future.done():
        return BrokerUnavailable(f"Kafka did not acknowledge within {timeout} s")
    error = asyncio.CancelledError() if future.cancelled() else future.exception()
    return None if error is None else BrokerUnavailable(f"Kafka refused the record: {error!r}")


class EventProducer:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()
        self._inflight = 0
        self._gathering: dict[str, list[tuple[EventEnvelope, asyncio.Future[BaseException | None]]]] = {}
        self._gathered = 0  # events in self._gathering: in flight too
        self._tasks: set[asyncio.Task[None]] = set()

    def _new_producer(self) -> AIOKafkaProducer:
        timeout_ms = int(self._settings.produce_timeout_s * 1000)
        return AIOKafkaProducer(
            **client_options(self._settings),
            client_id="vdip-gateway",
            acks="all",
            enable_idempotence=True,
            linger_ms=2,
            # aiokafka sends one request per broker at a time, one batch per partition: batches
            # of 16 KiB (its default) made each batch request's record (~35 KiB) a round trip.
            # Below the events topic's max.message.bytes (1 MiB), a record alone is up to 900 KB.
            max_batch_size=512 * 1024,
            request_timeout_ms=max(timeout_ms, 1000),
            retry_backoff_ms=100,
        )

    async def start(self) -> None:
        """Connect now if the broker answers; otherwise the first ``send`` tries again."""
        try:
            await self._ensure_started()
        except BrokerUnavailable as exc:
            log.warning("Kafka is not reachable yet: %s", exc)

    async def _ensure_started(self) -> AIOKafkaProducer:
        if self._producer is not None:
            return self._producer
        async with self._lock:
            if self._producer is None:
                producer = self._new_producer()
                try:
                    await asyncio.wait_for(producer.start(), self._settings.produce_timeout_s)
                except Exception as exc:
                    await producer.stop()
                    raise BrokerUnavailable(f"cannot connect to Kafka: {exc!r}") from exc
                self._producer = producer
        return self._producer

    async def send(self, envelope: EventEnvelope) -> None:
        """Produce one event; raises ``BrokerUnavailable`` unless Kafka acknowledged it in time.

        The events of one application that concurrent requests send in the same turn of the event
        loop go to Kafka together (``send_many``: one record), and each request gets its event's
        outcome: one produce for all of them rather than one each, and one record for the router,
        which pays a fixed cost per record.
        """
        if self._inflight + self._gathered + 1 > self._settings.max_inflight_events:
            raise BrokerUnavailable(f"more than {self._settings.max_inflight_events} events await Kafka")
        waiter: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
        gathering = self._gathering.get(envelope.app_id)
        if gathering is None:
            gathering = self._gathering[envelope.app_id] = []
            task = asyncio.create_task(self._send_gathered(envelope.app_id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        gathering.append((envelope, waiter))
        self._gathered += 1
        error = await waiter
        if error is not None:
            raise error

    async def _send_gathered(self, app_id: str) -> None:
        """Send the events gathered for ``app_id`` (runs once the requests of this turn of the
        event loop added theirs) and give each request its outcome."""
        gathered = self._gathering.pop(app_id)
        self._gathered -= len(gathered)
        outcomes: Sequence[BaseException | None]
        try:
            outcomes = await self.send_many([envelope for envelope, _ in gathered])
        except Exception as exc:  # raised to each request, as if it had sent alone
            outcomes = [exc] * len(gathered)
        for (_, waiter), outcome in zip(gathered, outcomes, strict=True):
            if not waiter.done():  # done: its request was cancelled
                waiter.set_result(outcome)

    async def send_many(self, envelopes: Sequence[EventEnvelope]) -> list[BrokerUnavailable | None]:
        """Produce events of one application together, in as few records as fit (``batch_records``),
        to ``events``, or to ``events.bulk`` when more than ``bulk_batch_events``; for each event,
        None once acknowledged, or why it was not.

        Raises ``BrokerUnavailable`` for all of them when the producer cannot even start, or when
        more than ``max_inflight_events`` would be awaiting acknowledgement (memory stays bounded).
        An event counts as in flight until Kafka acknowledged or failed its record, not until this
        gives up waiting: a record whose wait timed out is still in the producer's buffer.
        """
        count = len(envelopes)
        if self._inflight + count > self._settings.max_inflight_events:
            raise BrokerUnavailable(f"more than {self._settings.max_inflight_events} events await Kafka")
        producer = await self._ensure_started()
        lane = "events.bulk" if count > self._settings.bulk_batch_events else "events"
        topic, key = self._settings.topic(lane), envelopes[0].app_id.encode()
        timeout = self._settings.produce_timeout_s
        records = batch_records([envelope_json(e) for e in envelopes])
        sent: list[tuple[asyncio.Future[Any], int]] = []
        unsent = BrokerUnavailable(f"Kafka did not acknowledge within {timeout} s")
        self._inflight += count
        try:
            with metrics.PRODUCE_SECONDS.time():
                async with asyncio.timeout(timeout):
                    try:
                        for value, events in records:
                            sent.append((await producer.send(topic, key=key, value=value), events))
                    except KafkaError as exc:  # its KafkaTimeoutError is no TimeoutError
                        unsent = BrokerUnavailable(f"Kafka refused the record: {exc!r}")
                    for future, _ in sent:  # shielded: a record stays in flight until Kafka answers
                        with contextlib.suppress(KafkaError):  # its outcome says why
                            await asyncio.shield(future)
        except TimeoutError:
            pass
        finally:  # what Kafka has not answered yet is released when it does
            waiting = [(future, events) for future, events in sent if not future.done()]
            for future, events in waiting:
                future.add_done_callback(functools.partial(self._release, events))
            self._release(count - sum(events for _, events in waiting))
        outcomes: list[BrokerUnavailable | None] = []
        for future, events in sent:
            outcomes += [_outcome(future, timeout)] * events
        return outcomes + [unsent] * (count - len(outcomes))

    def _release(self, events: int, _: object = None) -> None:
        self._inflight -= events

    async def publish(self, topic: str, key: bytes, value: bytes | None) -> None:
        """Produce one record (``None``: a tombstone) and wait for Kafka's acknowledgement."""
        producer = await self._ensure_started()
        timeout = self._settings.produce_timeout_s
        try:
            await asyncio.wait_for(producer.send_and_wait(topic, key=key, value=value), timeout)
        except TimeoutError as exc:
            raise BrokerUnavailable(f"Kafka did not acknowledge within {timeout} s") from exc
        except Exception as exc:
            raise BrokerUnavailable(f"Kafka refused the record: {exc!r}") from exc

    async def ready(self) -> tuple[bool, str]:
        """Whether the broker answers a metadata request now."""
        try:
            producer = await self._ensure_started()
            await asyncio.wait_for(producer.client.fetch_all_metadata(), 3)
            brokers = producer.client.cluster.brokers()
            if not brokers:
                return False, "no broker in the cluster metadata"
        except Exception as exc:
            return False, f"{type(exc).__name__}: {exc}"
        return True, f"{len(brokers)} broker(s)"

    async def stop(self) -> None:
        """Flush what is in flight, then disconnect."""
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

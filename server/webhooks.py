"""Optional webhooks: lesson events POSTed to the operator's URLs, signed, retried.

Events are queued (bounded) and delivered by background tasks, so a slow or dead
receiver never holds up a lesson. Each POST carries ``X-LCO-Event``,
``X-LCO-Delivery`` (unique per event), ``X-LCO-Timestamp`` and
``X-LCO-Signature: sha256=HMAC(secret, timestamp + "." + body)``; receivers should
check the signature and reject old timestamps. Failed deliveries (network errors,
5xx, 429) are retried with exponential back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import secrets
import time
from dataclasses import dataclass

import httpx

logger = logging.getLogger(__name__)

QUEUE_LIMIT = 1000
MAX_CONCURRENT = 4


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The signature header value for ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    urls: tuple[str, ...]
    secret: bytes
    attempts: int = 6
    first_retry_delay: float = 1.0
    timeout: float = 5.0


class Webhooks:
    """Delivers events to every configured URL."""

    def __init__(self, settings: WebhookSettings) -> None:
        self._settings = settings
        self._queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(QUEUE_LIMIT)
        self._worker: asyncio.Task[None] | None = None
        self._deliveries: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(MAX_CONCURRENT)
        self.delivered = 0
        self.failed = 0
        self.dropped = 0

    @property
    def enabled(self) -> bool:
        """Whether any URL is configured."""
        return bool(self._settings.urls)

    def notify(self, event: str, data: dict[str, object]) -> None:
        """Queue an event; never blocks, drops (and counts) when the queue is full."""
        if not self.enabled:
            return
        body = json.dumps(
            {"id": secrets.token_hex(8), "event": event, "at": time.time(), "data": data}
        ).encode()
        try:
            self._queue.put_nowait((event, body))
        except asyncio.QueueFull:
            self.dropped += 1
            logger.warning("webhook queue full: dropped a %s event", event)

    async def run(self) -> None:
        """Deliver queued events until cancelled."""
        async with httpx.AsyncClient(timeout=self._settings.timeout) as client:
            try:
                while True:
                    event, body = await self._queue.get()
                    for url in self._settings.urls:
                        await self._slots.acquire()
                        task = asyncio.create_task(self._deliver(client, url, event, body))
                        self._deliveries.add(task)
                        task.add_done_callback(self._finished)
            finally:
                for task in list(self._deliveries):
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.gather(*self._deliveries, return_exceptions=True)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._deliveries.discard(task)
        self._slots.release()

    async def _deliver(self, client: httpx.AsyncClient, url: str, event: str, body: bytes) -> None:
        delivery = json.loads(body)["id"]
        delay = self._settings.first_retry_delay
        for attempt in range(1, self._settings.attempts + 1):
            timestamp = str(int(time.time()))
            headers = {
                "Content-Type": "application/json",
                "X-LCO-Event": event,
                "X-LCO-Delivery": delivery,
                "X-LCO-Timestamp": timestamp,
                "X-LCO-Signature": sign(self._settings.secret, timestamp, body),
            }
            try:
                response = await client.post(url, content=body, headers=headers)
                if response.status_code < 500 and response.status_code != 429:
                    if response.is_success:
                        self.delivered += 1
                    else:
                        # A 4xx other than 429 will not change on retry.
                        self.failed += 1
                        logger.warning(
                            "webhook %s refused %s: %d", url, event, response.status_code
                        )
                    return
            except httpx.HTTPError as exc:
                logger.info("webhook %s attempt %d failed: %s", url, attempt, exc)
            if attempt < self._settings.attempts:
                await asyncio.sleep(delay)
                delay *= 2
        self.failed += 1
        logger.warning("webhook %s gave up on %s after %d attempts", url, event, attempt)

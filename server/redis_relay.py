"""Signalling relayed between nodes over Redis pub/sub.

A socket whose lesson lives on another node stays where it landed (the *entry*
node); its frames go to the owner on the owner's channel (``lco:relay:{node}``) and
the owner's replies come back on the entry's channel. On the owner the relayed
socket is a :class:`RelayedSocket`, served by an ordinary ``ParticipantConnection``:
the lesson sees a participant like any other. Media does not pass here: the owner's
SDP carries the owner's ICE candidates, so the client's peer connections go straight
to the owner's SFU.

Messages (JSON): ``open`` (entry → owner: relay id, entry node, client address, first
frame), ``in`` (a client frame), ``out`` (a frame for the client), ``close`` (either
way, with a close code), ``moved`` (owner → entry: another node owns the lesson);
and for the HTTP API, ``ask`` (a question about a lesson for its node: its summary,
its live view, ending it) and ``answer``.
Each side publishes one relay's messages one after another, so they arrive in order.
If the connection to Redis is lost, every relayed socket is closed on both sides:
clients reconnect (their seats wait for them) and media goes on meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from starlette.datastructures import Address
from starlette.websockets import WebSocket, WebSocketDisconnect

from signaling import protocol as p

from . import redis_keys as keys

logger = logging.getLogger(__name__)

# Close code for a relayed client when its relay breaks (RFC 6455 / IANA: 1012
# "service restart"): not final, the client reconnects.
CLOSE_RELAY_LOST = 1012
# Seconds an entry waits for the last frames of a client whose socket broke under a
# message to it (it closes right after its ``leave``).
LAST_WORDS_WAIT = 1.0
# How often to try subscribing again while Redis is unreachable.
RETRY_INTERVAL = 0.2

# serve(socket, first frame): runs a connection for a relayed socket
# here, returning when it ends.
Serve = Callable[["RelayedSocket", str], Awaitable[None]]
# answer(question, lesson id, details): what this node says about a lesson it serves
# (JSON).
Answer = Callable[[str, str, Any], Awaitable[Any]]
# How long the HTTP API waits for another node's answer.
ASK_TIMEOUT = 5.0


class OwnerUnreachable(Exception):
    """The lesson's node does not listen (it stopped) or did not answer in time."""


# claim(first frame): the owner of the frame's lesson after this node tried to take
# it (this node's id for a frame that names no lesson: the session refuses it here).
Claim = Callable[[str], Awaitable[str]]


class RelayedSocket:
    """The owner's side of a relayed client socket, shaped like Starlette's."""

    def __init__(self, relay: Relay, relay_id: str, entry: str, address: str | None) -> None:
        self._relay = relay
        self._id = relay_id
        self._entry = entry
        self._incoming: asyncio.Queue[MutableMapping[str, Any]] = asyncio.Queue()
        self._closed = False
        self.client = Address(address, 0) if address else None

    @property
    def entry(self) -> str:
        """The node the client's socket is connected to."""
        return self._entry

    def feed(self, text: str) -> None:
        self._incoming.put_nowait({"type": "websocket.receive", "text": text})

    def disconnected(self) -> None:
        self._incoming.put_nowait({"type": "websocket.disconnect", "code": CLOSE_RELAY_LOST})

    async def receive(self) -> MutableMapping[str, Any]:
        return await self._incoming.get()

    async def send_text(self, data: str) -> None:
        if self._closed:
            raise WebSocketDisconnect(CLOSE_RELAY_LOST)
        # A Redis error ends this connection like a broken socket would.
        await self._relay.publish(self._entry, {"k": "out", "r": self._id, "d": data})

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        if self._closed:
            return
        self._closed = True
        self._relay.forget_remote(self._id)
        with contextlib.suppress(RedisError, OSError):
            await self._relay.publish(self._entry, {"k": "close", "r": self._id, "c": code})


class Relay:
    """This node's relay channel: both the entry side and the owner side."""

    def __init__(
        self, client: aioredis.Redis, node_id: str, serve: Serve, claim: Claim, answer: Answer
    ) -> None:
        self._redis = client
        self.node_id = node_id
        self._serve = serve
        self._claim = claim
        self._answer = answer
        self._questions: dict[str, asyncio.Future[Any]] = {}
        self._entries: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        self._remotes: dict[str, RelayedSocket] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.listening = asyncio.Event()
        self.relayed_in = 0  # client frames sent to owners
        self.relayed_out = 0  # owners' frames written to clients here

    @property
    def counts(self) -> dict[str, int]:
        """Relayed sockets open now, by side, and frames relayed (for metrics)."""
        return {
            "entry_sockets": len(self._entries),
            "owner_sockets": len(self._remotes),
            "frames_in": self.relayed_in,
            "frames_out": self.relayed_out,
        }

    async def publish(self, node_id: str, message: dict[str, Any]) -> int:
        """Send ``message`` to a node; returns how many listeners got it (0: none)."""
        listeners: int = await self._redis.publish(keys.relay_channel(node_id), json.dumps(message))
        return listeners

    async def ask(
        self,
        node_id: str,
        question: str,
        lesson_id: str,
        details: Any = None,
        timeout: float = ASK_TIMEOUT,
    ) -> Any:
        """Ask ``node_id`` about a lesson it serves; its answer (JSON)."""
        ask_id = uuid.uuid4().hex
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._questions[ask_id] = future
        try:
            message = {
                "k": "ask",
                "r": ask_id,
                "from": self.node_id,
                "q": question,
                "l": lesson_id,
                "p": details,
            }
            if not await self.publish(node_id, message):
                raise OwnerUnreachable(f"node {node_id} does not listen")
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise OwnerUnreachable(f"node {node_id} did not answer") from None
        finally:
            del self._questions[ask_id]

    async def _reply(
        self, ask_id: str, node_id: str, question: str, lesson_id: str, details: Any
    ) -> None:
        try:
            body = await self._answer(question, lesson_id, details)
        except Exception:
            logger.exception("answering %s about lesson %s failed", question, lesson_id)
            body = None
        with contextlib.suppress(RedisError, OSError):
            await self.publish(node_id, {"k": "answer", "r": ask_id, "b": body})

    def forget_remote(self, relay_id: str) -> None:
        self._remotes.pop(relay_id, None)

    # -- the entry side ------------------------------------------------------

    async def relay_client(self, ws: WebSocket, owner: str, first: str) -> bool:
        """Pump ``ws`` to and from ``owner`` until either side closes. Returns True,
        having sent nothing to the client, if the owner says the lesson is this node's
        now: the caller serves the socket here. Raises :class:`OwnerUnreachable`, having
        sent nothing either, if nobody listens on the owner's channel."""
        relay_id = uuid.uuid4().hex
        inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._entries[relay_id] = inbox
        address = ws.client.host if ws.client else None
        reader: asyncio.Task[None] | None = None
        code = CLOSE_RELAY_LOST
        owner_closed = here = client_gone = False
        try:
            for _attempt in range(3):
                opened = await self.publish(
                    owner,
                    {"k": "open", "r": relay_id, "from": self.node_id, "a": address, "d": first},
                )
                if not opened:
                    # Nobody listens on the owner's channel: nothing was sent to the
                    # client, and the caller decides what to tell it.
                    owner_closed = here = True
                    raise OwnerUnreachable(owner)
                if reader is None:
                    reader = asyncio.create_task(self._client_to_owner(ws, relay_id, inbox))
                while True:
                    message = await inbox.get()
                    kind = message["k"]
                    if kind == "out":
                        self.relayed_out += 1
                        await ws.send_text(message["d"])
                    elif kind == "moved":
                        owner = message["owner"]
                        if owner == self.node_id:
                            owner_closed = True  # nobody to tell over there
                            here = True
                            return True
                        break
                    elif kind == "sent":
                        # The client's frame for the owner (from the reader task).
                        await self.publish(owner, {"k": "in", "r": relay_id, "d": message["d"]})
                        self.relayed_in += 1
                    elif kind == "gone":
                        return False  # the client went; the owner is told in finally
                    else:  # close
                        code = int(message.get("c", CLOSE_RELAY_LOST))
                        owner_closed = message.get("from") != "relay"
                        return False
        except WebSocketDisconnect:
            client_gone = True  # a message to it failed: its last frames may be pending
            logger.info("relay to node %s broke", owner, exc_info=True)
        except (RedisError, OSError):
            logger.info("relay to node %s broke", owner, exc_info=True)
        finally:
            del self._entries[relay_id]
            if reader is not None:
                if client_gone:
                    # A client that leaves says so and closes at once: while a message to
                    # it failed, its last frames may be unread, or read and not yet sent.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(reader), LAST_WORDS_WAIT)
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
            if not owner_closed:
                with contextlib.suppress(RedisError, OSError):
                    if not here:
                        await self._send_last_words(owner, relay_id, inbox)
                    await self.publish(owner, {"k": "close", "r": relay_id, "c": code})
            if not here:
                with contextlib.suppress(Exception):
                    await ws.close(code)
        return False

    async def _send_last_words(
        self, owner: str, relay_id: str, inbox: asyncio.Queue[dict[str, Any]]
    ) -> None:
        """What the client sent and the pump had not passed on yet (a ``leave``, say):
        to the owner, in order, before the close, so that it leaves rather than drops."""
        while not inbox.empty():
            message = inbox.get_nowait()
            if message["k"] == "sent":
                await self.publish(owner, {"k": "in", "r": relay_id, "d": message["d"]})
                self.relayed_in += 1

    @staticmethod
    async def _client_to_owner(
        ws: WebSocket, relay_id: str, inbox: asyncio.Queue[dict[str, Any]]
    ) -> None:
        # Frames go through the pump's inbox so that one task publishes this relay's
        # messages, in order, whatever happens to the owner meanwhile.
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                data = message.get("text")
                if data is None:
                    data = (message.get("bytes") or b"").decode("utf-8", "replace")
                inbox.put_nowait({"k": "sent", "d": data[: p.MAX_MESSAGE_BYTES + 1]})
        except Exception:  # a broken socket: the client is gone
            logger.debug("relayed socket read failed", exc_info=True)
        inbox.put_nowait({"k": "gone"})

    # -- the listener and the owner side -------------------------------------

    async def listen(self) -> None:
        """Receive this node's channel; subscribe again whenever Redis comes back."""
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(keys.relay_channel(self.node_id))
                    self.listening.set()
                    async for message in pubsub.listen():
                        if message["type"] == "message":
                            self._dispatch(json.loads(message["data"]))
            except (RedisError, OSError):
                if self.listening.is_set():
                    logger.warning("lost the relay channel in Redis; relayed sockets closed")
                self.listening.clear()
                self.drop_all()
                await asyncio.sleep(RETRY_INTERVAL)

    def drop_all(self) -> None:
        """Close every relayed socket, on both sides (the relay is broken)."""
        for inbox in self._entries.values():
            inbox.put_nowait({"k": "close", "c": CLOSE_RELAY_LOST, "from": "relay"})
        for remote in list(self._remotes.values()):
            remote.disconnected()
        self._remotes.clear()

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind, relay_id = message.get("k"), message.get("r", "")
        if kind == "open":
            remote = RelayedSocket(self, relay_id, message["from"], message.get("a"))
            self._remotes[relay_id] = remote
            self._spawn(self._open(remote, relay_id, message["from"], message["d"]))
        elif kind == "in":
            receiver = self._remotes.get(relay_id)
            if receiver is not None:
                receiver.feed(message["d"])
        elif kind == "ask":
            self._spawn(
                self._reply(relay_id, message["from"], message["q"], message["l"], message.get("p"))
            )
        elif kind == "answer":
            future = self._questions.get(relay_id)
            if future is not None and not future.done():
                future.set_result(message.get("b"))
        elif kind == "close" and relay_id in self._remotes:
            self._remotes.pop(relay_id).disconnected()
        elif relay_id in self._entries:  # out, close, moved: for a client here
            self._entries[relay_id].put_nowait(message)

    async def _open(self, remote: RelayedSocket, relay_id: str, entry: str, first: str) -> None:
        try:
            owner = await self._claim(first)
        except Exception:
            logger.warning("could not claim the lesson of a relayed socket", exc_info=True)
            await remote.close(CLOSE_RELAY_LOST)
            return
        if owner != self.node_id:
            self._remotes.pop(relay_id, None)
            with contextlib.suppress(RedisError, OSError):
                await self.publish(entry, {"k": "moved", "r": relay_id, "owner": owner})
            return
        await self._serve(remote, first)

    def _spawn(self, work: Awaitable[None]) -> None:
        async def run() -> None:
            await work

        task = asyncio.create_task(run(), name="relayed-socket")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Stop: close every relayed socket and wait for their connections to end."""
        self.drop_all()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)

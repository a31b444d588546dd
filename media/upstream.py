"""Tracks another node forwards to this one (cascading, ``--cascade``).

The lesson's node forwards each track once to every other node that has subscribers
for it: to the lesson's node this node is one more subscriber, whose subscribe
offers come over Redis instead of a WebSocket. :class:`UpstreamLink` answers those
offers here, like a client would, and hands each track it receives to the local
SFU as a published track of a pseudo-participant, so that local subscribers get it
through the same fast path (and their keyframe requests go upstream through it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiortc import RTCPeerConnection, RTCSessionDescription

from .peers import IceSettings, negotiated_media, new_peer_connection
from .sfu import IncomingTrack, MediaNotice, Sfu, SubscribeOffer, close_quietly

logger = logging.getLogger(__name__)

# (track id): a track is forwarded here now.
TrackStarted = Callable[[str], None]


class UpstreamLink:
    """One peer connection on which another node forwards tracks to this one."""

    def __init__(
        self,
        sfu: Sfu,
        settings: IceSettings,
        participant_id: str,
        on_started: TrackStarted,
    ) -> None:
        self._sfu = sfu
        # Node to node: host candidates only, no STUN round trips before answering.
        self._settings = IceSettings(public_ip=settings.public_ip)
        self.participant_id = participant_id  # the pseudo-participant in the local SFU
        self._on_started = on_started
        self._pc: RTCPeerConnection | None = None
        self._closed = False
        self._tracks: dict[str, str] = {}  # mid -> track id forwarded here
        self._lock = asyncio.Lock()
        sfu.open(participant_id, self._ignore)

    @property
    def track_ids(self) -> list[str]:
        """The tracks this link brings here now."""
        return list(self._tracks.values())

    async def answer(self, offer: SubscribeOffer) -> str:
        """Apply the upstream node's offer; the answer's SDP. Tracks the offer no longer
        carries stop here (their local subscribers renegotiate); new ones start. An
        offer that cannot be applied drops the connection (the next one starts anew)
        and raises; so does a renegotiation of a connection this link does not have (it
        was closed, or this node restarted): the upstream node then starts anew."""
        async with self._lock:
            if self._closed:
                raise RuntimeError(f"{self.participant_id} is closed")
            if not offer.new_connection and self._pc is None:
                raise RuntimeError("a renegotiation of a connection this node does not have")
            if offer.new_connection and self._pc is not None:
                await self._drop_connection()
            if self._pc is None:
                self._pc = new_peer_connection(self._settings)
            pc = self._pc
            offered = {track.mid: track for track in offer.tracks}
            for mid, track_id in list(self._tracks.items()):
                now = offered.get(mid)
                if now is None or now.track_id != track_id:
                    del self._tracks[mid]
                    await self._sfu.stop_track(track_id)
            try:
                await pc.setRemoteDescription(RTCSessionDescription(offer.sdp, "offer"))
                await pc.setLocalDescription(await pc.createAnswer())
            except Exception:
                await self._drop_connection()
                raise
            answer = pc.localDescription.sdp
            negotiated = {m.mid: m for m in negotiated_media(answer)}
            for transceiver in pc.getTransceivers():
                mid = transceiver.mid or ""
                track = offered.get(mid)
                m = negotiated.get(mid)
                if track is None or mid in self._tracks or m is None or m.codec is None:
                    continue
                self._sfu.start_forwarding(
                    self.participant_id,
                    track.track_id,
                    IncomingTrack(
                        mid=mid,
                        kind=track.kind,
                        track=transceiver.receiver.track,
                        receiver=transceiver.receiver,
                        codec=m.codec,
                    ),
                )
                self._tracks[mid] = track.track_id
                self._on_started(track.track_id)
            return answer

    async def close(self) -> None:
        """Stop every track this link brought (the upstream node is gone or done)."""
        async with self._lock:
            self._closed = True
            await self._drop_connection()
        await self._sfu.close(self.participant_id)

    async def _drop_connection(self) -> None:
        pc, self._pc = self._pc, None
        for track_id in self._tracks.values():
            await self._sfu.stop_track(track_id)
        self._tracks.clear()
        if pc is not None:
            await close_quietly(pc)

    async def _ignore(self, notice: MediaNotice) -> None:
        """The pseudo-participant subscribes to nothing here: no notice reaches it."""

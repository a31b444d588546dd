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

from aiortc import RTCPeerConnection, RTCSessionDescription

from .peers import IceSettings, negotiated_media, new_peer_connection
from .sfu import IncomingTrack, MediaNotice, Sfu, SubscribeOffer, close_quietly

logger = logging.getLogger(__name__)


class UpstreamLink:
    """One peer connection on which another node forwards tracks to this one."""

    def __init__(self, sfu: Sfu, settings: IceSettings, participant_id: str) -> None:
        self._sfu = sfu
        self._settings = settings
        self.participant_id = participant_id  # the pseudo-participant in the local SFU
        self._pc: RTCPeerConnection | None = None
        self._tracks: dict[str, str] = {}  # mid -> track id forwarded here
        self._arrived: dict[str, asyncio.Event] = {}  # track id -> forwarded here
        self._lock = asyncio.Lock()
        sfu.open(participant_id, self._ignore)

    @property
    def track_ids(self) -> list[str]:
        """The tracks this link brings here now."""
        return list(self._tracks.values())

    async def answer(self, offer: SubscribeOffer) -> str:
        """Apply the upstream node's offer; the answer's SDP. Tracks the offer no longer
        carries stop here (their local subscribers renegotiate); new ones start."""
        async with self._lock:
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
                    self._arrived.pop(track_id, None)
                    await self._sfu.stop_track(track_id)
            await pc.setRemoteDescription(RTCSessionDescription(offer.sdp, "offer"))
            await pc.setLocalDescription(await pc.createAnswer())
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
                self._arrival(track.track_id).set()
            return answer

    async def arrived(self, track_id: str, timeout: float) -> bool:
        """Wait until ``track_id`` is forwarded here (False: not within ``timeout``)."""
        event = self._arrival(track_id)
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            if self._arrived.get(track_id) is event:
                del self._arrived[track_id]  # nobody waits for it any more
            return False
        return True

    async def close(self) -> None:
        """Stop every track this link brought (the upstream node is gone or done)."""
        async with self._lock:
            await self._drop_connection()
        await self._sfu.close(self.participant_id)

    def _arrival(self, track_id: str) -> asyncio.Event:
        event = self._arrived.get(track_id)
        if event is None:
            event = self._arrived[track_id] = asyncio.Event()
        return event

    async def _drop_connection(self) -> None:
        pc, self._pc = self._pc, None
        for track_id in self._tracks.values():
            self._arrived.pop(track_id, None)
            await self._sfu.stop_track(track_id)
        self._tracks.clear()
        if pc is not None:
            await close_quietly(pc)

    async def _ignore(self, notice: MediaNotice) -> None:
        """The pseudo-participant subscribes to nothing here: no notice reaches it."""

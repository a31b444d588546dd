"""The server's subscribe offers when the viewer's connection is gone.

aiortc closes a peer connection by itself once its DTLS transport is closed (the
viewer closed its side, as a page does when it unloads), before the viewer's socket
is seen to close. A track that ends (or starts) for that viewer in between makes the
server offer again: it must give up quietly, not raise in a task nobody awaits.
"""

from __future__ import annotations

import asyncio

from aiortc import RTCPeerConnection, RTCSessionDescription

from media.peers import IceSettings, configuration
from media.sfu import MediaNotice, Sfu, SubscribeOffer
from media.testsource import PatternVideoTrack


async def test_an_offer_to_a_connection_aiortc_closed_is_given_up_quietly() -> None:
    sfu = Sfu(IceSettings(), on_track_ended=lambda publisher, track: None)
    offers: asyncio.Queue[SubscribeOffer] = asyncio.Queue()

    async def to_viewer(notice: MediaNotice) -> None:
        if isinstance(notice, SubscribeOffer):
            offers.put_nowait(notice)

    async def to_teacher(notice: MediaNotice) -> None:
        return None

    sfu.open("teacher", to_teacher, "127.0.0.1")
    sfu.open("viewer", to_viewer, "127.0.0.1")
    camera = RTCPeerConnection(configuration([]))
    viewer = RTCPeerConnection(configuration([]))
    try:
        camera.addTransceiver(PatternVideoTrack(), direction="sendonly")
        await camera.setLocalDescription(await camera.createOffer())
        result = await sfu.accept_publish_offer("teacher", camera.localDescription.sdp)
        (incoming,) = result.started
        sfu.start_forwarding("teacher", "teacher-1", incoming)
        await sfu.subscribe("viewer", "teacher", "teacher-1", "video", "camera")
        offer = await asyncio.wait_for(offers.get(), 10)
        await viewer.setRemoteDescription(RTCSessionDescription(offer.sdp, "offer"))
        await viewer.setLocalDescription(await viewer.createAnswer())
        await sfu.accept_subscribe_answer("viewer", viewer.localDescription.sdp)

        media = sfu._participants["viewer"]
        assert media.subscribe_pc is not None
        await media.subscribe_pc.close()  # what aiortc does when the viewer's DTLS closes
        await sfu.stop_track("teacher-1")  # the teacher's camera ends: offer again
        task = media.negotiation_task
        assert task is not None
        await task  # raised InvalidStateError ("RTCPeerConnection is closed") before
        assert offers.empty() and not media.offer_in_flight
    finally:
        await sfu.close_all()
        await camera.close()
        await viewer.close()

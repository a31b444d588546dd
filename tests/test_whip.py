"""WHIP ingest (RFC 9725) through ``lco serve``, with an aiortc WHIP client.

The client does what OBS does: one sendonly offer with every candidate, POSTed as
application/sdp with the join token as a Bearer token; the answer comes back in
a 201 with the resource URL in Location; DELETE on it ends the publication.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription

from media.client import LessonClient
from media.peers import configuration
from media.testsource import PatternVideoTrack, ToneAudioTrack
from signaling.permissions import Role

from .conftest import RunningServer

pytestmark = pytest.mark.usefixtures("decoding_clients")


async def whip_offer() -> RTCPeerConnection:
    pc = RTCPeerConnection(configuration([]))
    pc.addTransceiver(PatternVideoTrack(), direction="sendonly")
    pc.addTransceiver(ToneAudioTrack(), direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    return pc


def post(server: RunningServer, body: str, token: str | None, **headers: str) -> httpx.Response:
    sent = {"Content-Type": "application/sdp", **headers}
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    return httpx.post(f"{server.http}/whip", content=body, headers=sent, timeout=20)


async def wait_for_participant(client: LessonClient, name: str) -> dict[str, Any]:
    for participant in client.participants.values():
        if participant["name"] == name:
            return participant
    message = await client.wait_for(
        lambda m: m["type"] == "participant_joined" and m["participant"]["name"] == name
    )
    participant: dict[str, Any] = message["participant"]
    return participant


async def test_a_whip_publisher_reaches_students_and_delete_ends_it(
    server: RunningServer, clients: Any
) -> None:
    lesson = "field-trip"
    student = await clients("Ana", Role.STUDENT, lesson, "west")
    token = server.token("Museum camera", Role.FIELD_TRIP, lesson=lesson, school="north")
    pc = await whip_offer()
    http = httpx.AsyncClient(base_url=server.http, timeout=20)
    try:
        response = await http.post(
            "/whip",
            content=pc.localDescription.sdp,
            headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {token}"},
        )
        assert response.status_code == 201, response.text
        assert response.headers["content-type"] == "application/sdp"
        location = response.headers["location"]
        assert location.startswith("/whip/resource/")
        await pc.setRemoteDescription(RTCSessionDescription(response.text, "answer"))

        camera = await wait_for_participant(student, "Museum camera")
        assert camera["role"] == "field_trip"
        video = await student.wait_track(camera["id"], "video", timeout=30)
        audio = await student.wait_track(camera["id"], "audio", timeout=30)
        await student.wait_frames(video, 15)
        await student.wait_frames(audio, 25)
        assert (video.width, video.height) == (320, 240)

        # Trickle ICE is not offered: PATCH answers 405 (RFC 9725 4.3.1).
        patch = await http.patch(location)
        assert patch.status_code == 405
        # Another link cannot end it; its own can, once.
        other = server.token("Other camera", Role.FIELD_TRIP, lesson=lesson)
        wrong = await http.delete(location, headers={"Authorization": f"Bearer {other}"})
        assert wrong.status_code == 404
        left = student.wait_for(
            lambda m: m["type"] == "participant_left" and m["participant_id"] == camera["id"]
        )
        ended = await http.delete(location, headers={"Authorization": f"Bearer {token}"})
        assert ended.status_code == 200
        await left
        again = await http.delete(location, headers={"Authorization": f"Bearer {token}"})
        assert again.status_code == 404
    finally:
        await http.aclose()
        await pc.close()


def test_whip_refuses_what_it_cannot_take(server: RunningServer) -> None:
    token = server.token("Camera", Role.FIELD_TRIP, lesson="refusals")
    assert post(server, "v=0", None).status_code == 401
    assert post(server, "v=0", "not-a-token").status_code == 401
    wrong_type = post(server, "v=0", token, **{"Content-Type": "application/json"})
    assert wrong_type.status_code == 415
    student = server.token("Ana", Role.STUDENT, lesson="refusals")
    assert post(server, "v=0", student).status_code == 403
    assert post(server, "v=0\r\nnot sdp", token).status_code == 400
    assert post(server, "x" * 70_000, token).status_code == 413
    options = httpx.options(f"{server.http}/whip", timeout=10)
    assert options.status_code == 204 and options.headers["accept-post"] == "application/sdp"
    # Nothing was left behind by the refused offers.
    assert server.metrics()["connections"] == 0


async def test_the_same_link_publishing_again_replaces_its_session(
    server: RunningServer, clients: Any
) -> None:
    lesson = "field-trip-again"
    student = await clients("Ana", Role.STUDENT, lesson, "west")
    token = server.token("Phone", Role.FIELD_TRIP, lesson=lesson)
    first, second = await whip_offer(), await whip_offer()
    http = httpx.AsyncClient(base_url=server.http, timeout=20)
    headers = {"Content-Type": "application/sdp", "Authorization": f"Bearer {token}"}
    try:
        one = await http.post("/whip", content=first.localDescription.sdp, headers=headers)
        assert one.status_code == 201
        camera = await wait_for_participant(student, "Phone")
        left = student.wait_for(
            lambda m: m["type"] == "participant_left" and m["participant_id"] == camera["id"]
        )
        rejoined = student.wait_for(
            lambda m: (
                m["type"] == "participant_joined"
                and m["participant"]["name"] == "Phone"
                and m["participant"]["id"] != camera["id"]
            )
        )
        # The phone lost its connection and starts again with the same link.
        two = await http.post("/whip", content=second.localDescription.sdp, headers=headers)
        assert two.status_code == 201
        await left
        phone = (await rejoined)["participant"]
        assert two.headers["location"] != one.headers["location"]
        gone = await http.delete(one.headers["location"], headers=headers)
        assert gone.status_code == 404
        await second.setRemoteDescription(RTCSessionDescription(two.text, "answer"))
        assert [p["id"] for p in student.participants.values() if p["name"] == "Phone"] == [
            phone["id"]
        ]
        await student.wait_track(phone["id"], "video", timeout=30)
    finally:
        await http.aclose()
        await first.close()
        await second.close()

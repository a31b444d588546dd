"""Where the SFU meets the signalling protocol.

The SFU (``media/sfu.py``) knows nothing of wire messages: what it tells a
participant comes out as a :data:`media.sfu.MediaNotice`, and its refusals as
:class:`media.sfu.MediaError`. This module turns them into protocol messages and
errors, and holds what only the protocol knows: which source a published track
comes from, and the publish limits the protocol's schema also bounds.
"""

from __future__ import annotations

from media.sfu import IncomingTrack, MediaError, MediaNotice, PublishLimits, SubscribeOffer
from signaling import protocol as p

PUBLISH_LIMITS = PublishLimits(tracks=p.MAX_PUBLISHED_TRACKS, sections=p.MAX_PUBLISH_MLINES)


def media_message(notice: MediaNotice) -> p.ServerMessage:
    """The message that tells a participant what its media notice says."""
    if isinstance(notice, SubscribeOffer):
        return p.SubscribeOffer(
            sdp=notice.sdp,
            tracks=[
                # Validated: the source is the one the lesson gave the track.
                p.SubscribedTrack.model_validate(
                    {
                        "mid": track.mid,
                        "track_id": track.track_id,
                        "participant_id": track.publisher_id,
                        "kind": track.kind,
                        "source": track.source,
                    }
                )
                for track in notice.tracks
            ],
            offer_id=notice.offer_id,
            new_connection=notice.new_connection,
        )
    return p.ReceiveQuality(
        level=notice.level,
        limited_by=notice.limited_by,
        videos=[
            p.ReceivedVideo(
                track_id=video.track_id,
                forwarded=video.forwarded,
                width=video.width,
                height=video.height,
            )
            for video in notice.videos
        ],
    )


def track_source(tracks: list[p.PublishedTrackSpec], incoming: IncomingTrack) -> p.Source:
    """What a track a publish offer started comes from: as the offer says of its
    m-line (the last word, if it says it twice), else a microphone or a camera."""
    for spec in reversed(tracks):
        if spec.mid == incoming.mid:
            return spec.source
    return "microphone" if incoming.kind == "audio" else "camera"


def protocol_error(error: MediaError, request_type: str | None) -> p.ProtocolError:
    """The error a client gets for media input the SFU refused."""
    return p.ProtocolError(error.code, error.message, request_type)

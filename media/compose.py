"""``lco recording compose``: one video of a recording's stage, as it changed over time.

Offline, and the only place where recordings are transcoded. The manifest's
timeline says what the stage showed when (the director's choice for every
classroom; without one the spotlight; without one the teacher); each shown
track's file is decoded and its frames put where the stage had them (one item
fills the frame, two sit side by side), at :data:`FPS` frames a second, encoded
as VP8 into WebM. The audio of every recorded microphone is mixed in (FFmpeg's
``amix``; gaps such as mutes are filled with silence by ``aresample``).
"""

from __future__ import annotations

import fractions
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av

WIDTH, HEIGHT, FPS = 640, 360, 15
RATE = 48000
BLACK = (16, 128, 128)  # Y, U, V of black


@dataclass
class _VideoTrack:
    """One recorded video file, decoded lazily, its frames at recording time."""

    participant_id: str
    source: str
    role: str
    path: Path
    offset: float  # recording time of the file's first frame
    frames: Iterator[tuple[float, Any]] | None = None
    current: Any = None
    upcoming: tuple[float, Any] | None = None
    container: Any = None

    def frame_at(self, t: float) -> Any:
        """The newest frame shown at recording time ``t`` (None before the first)."""
        if self.frames is None:
            self.container = av.open(str(self.path))
            self.frames = self._decode()
            self.upcoming = next(self.frames, None)
        while self.upcoming is not None and self.upcoming[0] <= t:
            self.current = self.upcoming[1]
            self.upcoming = next(self.frames, None)
        return self.current

    def _decode(self) -> Iterator[tuple[float, Any]]:
        stream = self.container.streams.video[0]
        for frame in _decoded(self.container, stream):
            if frame.pts is None:
                continue
            yield self.offset + float(frame.pts * frame.time_base), frame

    def close(self) -> None:
        if self.container is not None:
            self.container.close()


@dataclass
class Composition:
    """What to draw when: stage items per time, from the manifest."""

    duration: float
    changes: list[tuple[float, list[tuple[str, str]]]] = field(default_factory=list)

    def items_at(self, t: float) -> list[tuple[str, str]]:
        current: list[tuple[str, str]] = []
        for at, items in self.changes:
            if at > t:
                break
            current = items
        return current


def plan(manifest: dict[str, Any]) -> Composition:
    """The stage over time: director's stage, else spotlight, else the (first) teacher
    with a camera."""
    duration = (manifest.get("stopped_at") or 0) - manifest.get("started_at", 0)
    events = manifest.get("timeline", [])
    if events:
        duration = max(duration, max(e["t"] for e in events))
    cameras = {
        t["participant_id"]
        for t in manifest.get("tracks", [])
        if t.get("kind") == "video" and t.get("source") == "camera"
    }
    teachers = [
        pid
        for pid, who in manifest.get("participants", {}).items()
        if who.get("role") == "teacher" and pid in cameras
    ]
    composition = Composition(duration)
    for event in events:
        if event["event"] != "stage":
            continue
        if event.get("stage"):
            items = [(i["participant_id"], i["source"]) for i in event["stage"]["items"]]
        elif event.get("spotlight"):
            items = [(event["spotlight"], "camera")]
        else:
            items = [(pid, "camera") for pid in teachers[:1]]
        composition.changes.append((event["t"], items))
    return composition


def _tracks(directory: Path, manifest: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [
        t
        for t in manifest.get("tracks", [])
        if t.get("kind") == kind and t.get("file") and (directory / t["file"]).is_file()
    ]


def _fit(frame: Any, width: int, height: int) -> bytes:
    """Planes of ``frame`` scaled to ``width`` x ``height`` (yuv420p), packed."""
    scaled = frame.reformat(width=width, height=height, format="yuv420p")
    out = b""
    for index, plane in enumerate(scaled.planes):
        w = width if index == 0 else width // 2
        h = height if index == 0 else height // 2
        data = bytes(plane)
        out += b"".join(data[row * plane.line_size : row * plane.line_size + w] for row in range(h))
    return out


def _canvas(pictures: list[Any]) -> av.VideoFrame:
    """One picture full frame, or two side by side (each half the width, centred)."""
    planes = [
        bytearray([BLACK[i]])
        * ((WIDTH if i == 0 else WIDTH // 2) * (HEIGHT if i == 0 else HEIGHT // 2))
        for i in range(3)
    ]
    if len(pictures) == 1:
        packed = _fit(pictures[0], WIDTH, HEIGHT)
        sizes = [WIDTH * HEIGHT, WIDTH * HEIGHT // 4, WIDTH * HEIGHT // 4]
        start = 0
        for i, size in enumerate(sizes):
            planes[i][:] = packed[start : start + size]
            start += size
    elif len(pictures) == 2:
        half_w, half_h = WIDTH // 2, HEIGHT // 2
        top = (HEIGHT - half_h) // 2
        for slot, picture in enumerate(pictures):
            packed = _fit(picture, half_w, half_h)
            start = 0
            for i in range(3):
                pw, ph = (half_w, half_h) if i == 0 else (half_w // 2, half_h // 2)
                row_width = WIDTH if i == 0 else WIDTH // 2
                y0 = top if i == 0 else top // 2
                x0 = slot * pw
                for row in range(ph):
                    source = packed[start + row * pw : start + (row + 1) * pw]
                    at = (y0 + row) * row_width + x0
                    planes[i][at : at + pw] = source
                start += pw * ph
    frame = av.VideoFrame(WIDTH, HEIGHT, "yuv420p")
    for i, plane in enumerate(frame.planes):
        w = WIDTH if i == 0 else WIDTH // 2
        if plane.line_size == w:
            plane.update(bytes(planes[i]))
        else:
            h = HEIGHT if i == 0 else HEIGHT // 2
            padded = b"".join(
                bytes(planes[i][r * w : (r + 1) * w]) + bytes(plane.line_size - w) for r in range(h)
            )
            plane.update(padded)
    return frame


def _audio_graph(inputs: int) -> tuple[Any, list[Any], Any]:
    graph = av.filter.Graph()
    sources = []
    mix = graph.add("amix", f"inputs={inputs}:normalize=0:duration=longest")
    for index in range(inputs):
        source = graph.add_abuffer(
            format="s16", sample_rate=RATE, layout="stereo", time_base=fractions.Fraction(1, RATE)
        )
        fill = graph.add("aresample", "async=1:first_pts=0")
        source.link_to(fill)
        fill.link_to(mix, 0, index)
        sources.append(source)
    sink = graph.add("abuffersink")
    mix.link_to(sink)
    graph.configure()
    return graph, sources, sink


def compose(
    directory: Path, output: Path, progress: Callable[[float], None] | None = None
) -> dict[str, Any]:
    """Write the stage of the recording in ``directory`` to ``output`` (WebM)."""
    manifest = json.loads((directory / "manifest.json").read_text())
    composition = plan(manifest)
    roles = {pid: who.get("role", "") for pid, who in manifest.get("participants", {}).items()}
    videos = [
        _VideoTrack(
            t["participant_id"],
            t["source"],
            roles.get(t["participant_id"], ""),
            directory / t["file"],
            t.get("first_frame_at") or 0.0,
        )
        for t in _tracks(directory, manifest, "video")
    ]
    audios = _tracks(directory, manifest, "audio")
    frames = max(1, round(composition.duration * FPS))
    written = 0
    with av.open(str(output), "w", format="webm") as container:
        # Video first: the stream order players expect.
        stream = container.add_stream("libvpx", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.codec_context.options = {"deadline": "realtime", "cpu-used": "8"}
        # The mixed audio is made first, then interleaved with the video by time.
        sound = _mix_audio(container, directory, audios) if audios else []
        pending = iter(sound)
        next_sound = next(pending, None)
        for index in range(frames):
            t = index / FPS
            pictures = []
            for participant_id, source in composition.items_at(t):
                track = next(
                    (v for v in videos if (v.participant_id, v.source) == (participant_id, source)),
                    None,
                )
                picture = track.frame_at(t) if track is not None else None
                if picture is not None:
                    pictures.append(picture)
            frame = _canvas(pictures)
            frame.pts = index
            frame.time_base = fractions.Fraction(1, FPS)
            while next_sound is not None and float(next_sound.pts * next_sound.time_base) <= t:
                container.mux(next_sound)
                next_sound = next(pending, None)
            container.mux(stream.encode(frame))
            written += 1
            if progress is not None and index % FPS == 0:
                progress(index / frames * (0.8 if audios else 1.0))
        container.mux(stream.encode(None))
        while next_sound is not None:
            container.mux(next_sound)
            next_sound = next(pending, None)
    for video in videos:
        video.close()
    if progress is not None:
        progress(1.0)
    return {"frames": written, "duration": frames / FPS, "audio_tracks": len(audios)}


def _mix_audio(container: Any, directory: Path, audios: list[dict[str, Any]]) -> list[Any]:
    """Every microphone mixed, each at its place in time, encoded as Opus packets.

    The tracks are read side by side in time order, so the mixer holds a little of
    each, never a whole lesson."""
    out = container.add_stream("libopus", rate=RATE)
    out.layout = "stereo"
    graph, sources, sink = _audio_graph(len(audios))
    opened = [av.open(str(directory / track["file"])) for track in audios]
    try:
        streams = [
            _resampled(source, round((track.get("first_frame_at") or 0.0) * RATE))
            for source, track in zip(opened, audios, strict=True)
        ]
        heads = [next(stream, None) for stream in streams]
        packets: list[Any] = []

        def drain() -> None:
            while True:
                try:
                    mixed = sink.pull()
                except (av.BlockingIOError, av.EOFError):
                    return
                packets.extend(out.encode(mixed))

        while any(head is not None for head in heads):
            index = min(
                (i for i, head in enumerate(heads) if head is not None),
                key=lambda i: heads[i].pts,  # type: ignore[union-attr]
            )
            sources[index].push(heads[index])
            heads[index] = next(streams[index], None)
            if heads[index] is None:
                sources[index].push(None)
            drain()
        drain()
        packets += out.encode(None)
        del graph  # kept alive until the mix is drained
        return packets
    finally:
        for source in opened:
            source.close()


def _resampled(source: Any, offset: int) -> Iterator[Any]:
    """A track's audio as 16-bit stereo 48 kHz frames, timed from the recording's start."""
    resampler = av.AudioResampler(format="s16", layout="stereo", rate=RATE)
    for frame in _decoded(source, source.streams.audio[0]):
        base = frame.time_base or fractions.Fraction(1, RATE)
        at = offset + round(float((frame.pts or 0) * base) * RATE)
        for part in resampler.resample(frame):
            part.pts = at
            part.time_base = fractions.Fraction(1, RATE)
            at += part.samples
            yield part


def _decoded(container: Any, stream: Any) -> Iterator[Any]:
    """A stream's frames; a frame the decoder refuses (damaged before it reached the
    server: the subscribers' decoders refuse it too) is left out."""
    for packet in container.demux(stream):
        try:
            frames = packet.decode()
        except av.error.InvalidDataError:
            continue
        yield from frames


def show_progress(fraction: float) -> None:
    """A one-line progress display on standard error."""
    sys.stderr.write(f"\rcomposing: {fraction * 100:5.1f} %")
    if fraction >= 1.0:
        sys.stderr.write("\n")
    sys.stderr.flush()

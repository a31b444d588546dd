"""``lco recording``: list a lesson's recordings, compose one into a single video."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from media.compose import compose, show_progress

from .config import DEFAULT_DATA_DIR
from .recordings import RECORDING_ID


def add_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``lco recording list|compose LESSON``."""
    recording = commands.add_parser(
        "recording", help="list a lesson's recordings, or compose one into a single video"
    )
    recording.add_argument("action", choices=["list", "compose"])
    recording.add_argument("lesson", help="lesson id")
    recording.add_argument("--recording", help="recording id (compose; default: the newest)")
    recording.add_argument("--output", type=Path, help="file to write (compose; .webm)")
    recording.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)


def run(args: argparse.Namespace) -> int:
    """Carry out ``lco recording``."""
    lesson_dir = args.data_dir / "recordings" / args.lesson
    found = (
        sorted((d.name for d in lesson_dir.iterdir() if RECORDING_ID.match(d.name)), reverse=True)
        if lesson_dir.is_dir()
        else []
    )
    if args.action == "list":
        for name in found:
            manifest = json.loads((lesson_dir / name / "manifest.json").read_text())
            files = [t["file"] for t in manifest.get("tracks", []) if t.get("file")]
            print(f"{name}  stopped: {manifest.get('stop_reason')}  files: {len(files)}")
        return 0
    chosen = args.recording or (found[0] if found else None)
    if chosen is None or chosen not in found:
        print(f"lco recording: lesson {args.lesson!r} has no such recording", file=sys.stderr)
        return 2
    output = args.output or Path(f"{args.lesson}-{chosen}.webm")
    result = compose(lesson_dir / chosen, output, show_progress)
    print(json.dumps({"output": str(output), **result}))
    return 0

"""Each class of viewer gets what it shows and what its link carries, with and without
simulcast.

One round of ``lco bench run --workload mix`` (``benchmarks/viewer_mix.py``): a teacher
and an expert publish three layers (then one), eight students watch them as the stage,
as thumbnails, on a 300 kbit/s link (shaped with ``tc`` in the test namespace) or with
audio only. What each class receives, over five rounds on a quiet machine, and what
simulcast costs the server per packet, is in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from benchmarks.downlink import Shaper
from benchmarks.runner import RunOptions
from benchmarks.viewer_mix import run_viewer_mix, summary_lines


@pytest.mark.timeout(300)
async def test_each_viewer_class_gets_its_layer_and_audio_only_gets_no_video(
    tmp_path: Path,
) -> None:
    why = Shaper.available()
    if why:
        pytest.skip(why)
    progress = io.StringIO()
    body = await run_viewer_mix(RunOptions(log_dir=tmp_path, progress=progress), 1)
    print(f"\n{progress.getvalue().strip()}")
    assert not body["errors"], body["errors"]
    runs = {r["variant"]: r for r in body["rounds"]}
    assert set(runs) == {"simulcast", "single"}
    for run in runs.values():
        classes = run["classes"]
        assert "640x360" in classes["stage"]["sizes"]
        # Audio only: not one video frame forwarded to it in the whole window.
        assert classes["audio_only"]["video_frames"] == 0
        assert classes["audio_only"]["kbit_s"] < classes["stage"]["kbit_s"] / 10
        assert classes["stage"]["video_frames"] > 0 and run["cpu_us_per_packet"] > 0
    # Thumbnails get the small layer when there is one, the only one otherwise.
    assert runs["simulcast"]["classes"]["thumbnails"]["sizes"] == ["160x90"]
    assert runs["single"]["classes"]["thumbnails"]["sizes"] == ["640x360"]
    assert (
        runs["simulcast"]["classes"]["thumbnails"]["kbit_s"]
        < runs["single"]["classes"]["thumbnails"]["kbit_s"] / 2
    )
    lines = summary_lines({"mix": body})
    assert lines[0] == "simulcast to a mix of viewers, against one layer: 2 runs"

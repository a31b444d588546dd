"""docs/benchmarks.md says what its committed results files say (issue 13, item 1).

Fast: no benchmark runs. The page's generated regions are rendered again from the
files they name; the status table's "met" is checked against the numbers and
thresholds printed next to it, parsed from the page's text (not from the code that
wrote it); measured figures may not appear in the prose outside the regions.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from benchmarks import docgen, downlink, results
from benchmarks.stats import excludes_one, paired_ratios
from media.client import ReceivedTrack

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "benchmarks.md"


def _regions() -> list[docgen.Region]:
    return docgen.regions(DOC.read_text())


def test_every_generated_region_matches_its_results_file() -> None:
    text = DOC.read_text()
    assert docgen.update(text, keep_sources=True) == text, (
        "docs/benchmarks.md differs from its results files: run `lco bench report`"
    )


def test_every_named_results_file_is_in_the_repository_and_can_feed_its_region() -> None:
    found = _regions()
    assert {r.kind for r in found} >= {"status", "table", "soak"}
    for region in found:
        names = (
            [region.attrs[k] for k in ("w2", "raw", "soak")]
            if region.kind == "status"
            else [region.source or "none"]
        )
        for name in names:
            if name == "none":
                continue
            path = REPO / name
            assert path.parent == results.RESULTS_DIR, f"{name}: not under benchmarks/results/"
            assert path.exists(), f"{name} is named by the page but not in the repository"
            if region.kind != "status":
                why = docgen.qualifies(results.load(path), region)
                assert why is None, f"{name} cannot feed {region.attrs}: {why}"


def test_the_status_table_feeds_on_the_headline_regions_only() -> None:
    found = _regions()
    (status,) = [r for r in found if r.kind == "status"]
    by_id = {r.attrs.get("id"): r for r in found}
    for key, region_id in (("w2", "w2"), ("raw", "raw"), ("soak", "soak-ours")):
        assert by_id[region_id].attrs.get("need") == "headline"
        assert status.attrs[key] == (by_id[region_id].source or "none")


# "label: 14.70 µs ≤ 20 µs", "loss: 0.00 % ≤ 0.1 %", "stalls: 0 ≤ 0", "p50: not measured"
CRITERION = re.compile(
    r"^(?P<label>[^:]+): (?P<value>-?[\d,.]+) ?[^≤≥<]*?(?P<op>[≤≥<]) (?P<limit>-?[\d,.]+)"
)


def _number(text: str) -> float:
    return float(text.replace(",", ""))


def _status_rows() -> list[tuple[str, str, list[str]]]:
    text = DOC.read_text()
    (status,) = [r for r in _regions() if r.kind == "status"]
    rows = []
    for line in text[status.body_start : status.end].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or cells[0] in ("target", "---"):
            continue
        rows.append((cells[0], cells[1].strip("*"), [c.strip() for c in cells[2].split(";")]))
    return rows


def test_every_status_agrees_with_the_numbers_printed_next_to_it() -> None:
    rows = _status_rows()
    assert len(rows) == len(docgen.TARGETS)
    for target, word, criteria in rows:
        verdicts = []
        for criterion in criteria:
            if criterion.endswith("not measured"):
                verdicts.append(None)
                continue
            match = CRITERION.match(criterion)
            assert match, f"{target}: cannot read {criterion!r}"
            value, limit = _number(match["value"]), _number(match["limit"])
            op = match["op"]
            verdicts.append(
                value < limit if op == "<" else value <= limit if op == "≤" else value >= limit
            )
        if word == "met":
            assert verdicts and all(v is True for v in verdicts), f"'met' but {criteria}"
        elif word == "not met":
            assert False in verdicts and None not in verdicts, f"'not met' but {criteria}"
        else:
            assert word == "not measured" and None in verdicts, f"{word!r}: {criteria}"


# Measured figures belong in generated regions: per-packet costs in µs, rates, memory.
FIGURE = re.compile(r"\d[\d,.]*\s*(?:µs|us/packet|MiB|packets/s)")
# ... except these, which are targets or definitions, not measurements.
NOT_MEASURED = {"40,000 forwarded packets/s", "40,000 packets/s"}


def test_no_measured_figure_is_quoted_outside_the_generated_regions() -> None:
    text = DOC.read_text()
    outside = []
    position = 0
    for region in _regions():
        outside.append(text[position : region.start])
        position = region.end
    outside.append(text[position:])
    prose = "".join(outside)
    found = [
        m.group(0)
        for m in FIGURE.finditer(prose)
        if not any(prose[max(0, m.start() - 20) : m.end()].endswith(n) for n in NOT_MEASURED)
    ]
    assert not found, f"figures outside generated regions (cite them from a results file): {found}"


# -- the generator, on made-up results ------------------------------------------------


def _document(
    *, quick: bool = False, rounds: int = 5, quiet: bool = True, load: str = "aiortc"
) -> dict[str, Any]:
    runs = []
    for number in range(rounds):
        for system, cost in (("ours", 12.0 + number * 0.1), ("janus", 15.0 - number * 0.1)):
            figures = {
                "cpu_us_per_packet": cost,
                "server_cpu_pct": cost,
                "forwarded_packets_per_s": 7000.0,
                "loss_pct": 0.0,
                "ttff_video_p50_s": 0.3,
                "rss_per_subscriber_mib": 0.7,
                "foreign_cpu_pct": 2.0 if quiet else 40.0,
            }
            runs.append({"system": system, "subscribers": 16, "round": number, "figures": figures})
    return {
        "kind": "workloads",
        "quick": quick,
        "options": {"systems": ["ours", "janus"], "load": load, "srtp_profile_offered": "x"},
        "noise": results.noise(runs),
        "environment": {
            "machine": {"nproc": 2, "cpu_model": "test CPU", "kernel": "6.x"},
            "python": "3.11",
            "packages": {"aiortc": "1.16.0", "pylibsrtp": "1.0.0", "uvloop": "0.2"},
            "janus": "1.1.2",
            "server_source": {"commit": "0123456789abcdef", "dirty": False},
            "srtp_profiles": {"ours": ["SRTP_AES128_CM_SHA1_80"]},
        },
        "workloads": {
            "w2": {
                "description": "W2",
                "duration_s": 10,
                "rounds": rounds,
                "runs": runs,
                "summary": results.summarise(runs, ["ours", "janus"]),
            }
        },
    }


def _region(**attrs: str) -> docgen.Region:
    return docgen.Region("table", {"workload": "w2", "need": "headline", **attrs}, 0, 0, 0)


def test_headline_regions_refuse_quick_short_busy_or_other_mode_runs() -> None:
    region = _region(systems="ours,janus")
    assert docgen.qualifies(_document(), region) is None
    assert docgen.qualifies(_document(quick=True), region) == "a --quick run"
    assert docgen.qualifies(_document(rounds=3), region) == "fewer than 5 rounds"
    assert docgen.qualifies(_document(quiet=False), region) == "the machine was busy"
    assert docgen.qualifies(_document(load="raw"), region) == "another load mode"
    assert docgen.qualifies(_document(), _region(systems="ours,pack")) is not None
    pinned = _region(need="pinned")
    assert docgen.qualifies(_document(quick=True, rounds=1, quiet=False), pinned) is None


def test_a_round_region_that_names_its_students_takes_only_runs_with_that_many() -> None:
    (region,) = docgen.regions(
        "<!-- bench:begin cascade id=c need=pinned students=32 source=none -->\n<!-- bench:end -->"
    )
    document: dict[str, Any] = {"kind": "cascade", "cascade": {"students": 8, "rounds": []}}
    assert docgen.qualifies(document, region) == "not 32 students"
    document["cascade"]["students"] = 32
    assert docgen.qualifies(document, region) is None


def test_a_table_shows_medians_ranges_and_bold_only_for_ratios_that_exclude_one() -> None:
    text = docgen.render_table(_document(), _region())
    # ours 12.0-12.4 against Janus 14.6-15.0: every round below 1, so bold.
    row = "| 16 | server CPU per forwarded packet, us | 12.2 [12.0-12.4] | 14.8 [14.6-15.0] |"
    assert row in text
    assert "**0.82 [0.80-0.85]**" in text
    straddling = paired_ratios([1.0, 1.1, 0.9], [1.0, 1.0, 1.0])
    assert not excludes_one(straddling)


def _downlink_document(stalls: list[float | None], quiet: bool = True) -> dict[str, Any]:
    rounds = [
        {
            "down_s": 2.0 + n / 10,
            "stall_s": stall,
            "other_stall_s": 0.2,
            "other_smallest": [640, 360],
            "up_s": 15.0,
            "foreign_cpu_pct": 2.0 if quiet else 40.0,
        }
        for n, stall in enumerate(stalls)
    ]
    document = _document()
    document.update(
        kind="downlink",
        noise=results.noise([{"figures": r} for r in rounds]),
        downlink={
            "shaped_kbit": 300,
            "small": [160, 90],
            "large": [640, 360],
            "rounds": rounds,
            "summary": downlink.summarise(rounds),
            "errors": [],
        },
    )
    return document


def test_a_downlink_target_is_met_only_when_its_worst_round_meets_it() -> None:
    region = docgen.Region("downlink", {"need": "headline"}, 0, 0, 0)
    good = _downlink_document([0.5, 0.6, 0.7, 0.8, 0.9])
    assert docgen.qualifies(good, region) is None
    assert docgen.qualifies(_downlink_document([0.5] * 3), region) == "fewer than 5 rounds"
    assert docgen.qualifies(_downlink_document([0.5] * 5, quiet=False), region) is not None
    text = docgen.render_downlink(good, region)
    row = "| longest time without a new frame, s | 0.70 [0.50-0.90] | ≤ 1 (worst: 0.90) | **met** |"
    assert row in text
    assert "| down to 160x90, s | 2.20 [2.00-2.40] | ≤ 5 (worst: 2.40) | **met** |" in text
    one_slow = docgen.render_downlink(_downlink_document([0.5, 0.6, 1.4, 0.8, 0.9]), region)
    assert "≤ 1 (worst: 1.40) | **not met** |" in one_slow
    # A round that never stepped down has no figure: the target is not met.
    summary = downlink.summarise([{"down_s": None, "stall_s": 0.5, "up_s": None}])
    assert not summary["targets"]["down_s"]["met"] and summary["targets"]["stall_s"]["met"]


def test_a_downlink_round_shows_the_longest_stall_while_it_stays_on_the_slow_link() -> None:
    region = docgen.Region("downlink", {"need": "headline"}, 0, 0, 0)
    document = _downlink_document([0.5] * 5)
    body = document["downlink"]
    for found, stayed in zip(body["rounds"], [0.3, 0.3, 1.2, 0.3, 0.4], strict=True):
        found.update(stay_s=30.0, stay_stall_s=stayed)
    body["summary"] = downlink.summarise(body["rounds"])
    text = docgen.render_downlink(document, region)
    assert (
        "| longest time without a new frame while it stays on the slow link (probes "
        "included), s | 0.30 [0.30-1.20] | ≤ 1 (worst: 1.20) | **not met** |"
    ) in text
    assert "| its smallest size | longest stall while staying, s | up, s |" in text
    assert "| 3 | 2.20 | 0.50 | 0.20 | 640x360 | 1.20 | 15.00 |" in text
    # Counted from the window's edges: a picture frozen all along is all of it.
    track = ReceivedTrack("t", "p", "video", "camera")
    assert downlink.window_stall(track, 10.0, 40.0) == 30.0
    track.arrivals.extend([9.0, 11.0, 12.0, 20.0, 39.5, 41.0])
    assert downlink.window_stall(track, 10.0, 40.0) == 19.5


def test_a_downlink_region_takes_the_results_of_its_own_viewer() -> None:
    aiortc_region = docgen.Region("downlink", {"need": "headline"}, 0, 0, 0)
    browser_region = docgen.Region("downlink", {"need": "headline", "viewer": "browser"}, 0, 0, 0)
    aiortc = _downlink_document([0.5] * 5)  # written before there was a choice: aiortc
    browser = _downlink_document([0.5] * 5)
    browser["downlink"]["viewer"] = "browser"
    for found in browser["downlink"]["rounds"]:
        found["decoded_stall_s"] = 0.55
    assert docgen.qualifies(aiortc, aiortc_region) is None
    assert docgen.qualifies(browser, aiortc_region) == "not the aiortc viewer"
    assert docgen.qualifies(aiortc, browser_region) == "not the browser viewer"
    assert docgen.qualifies(browser, browser_region) is None
    text = docgen.render_downlink(browser, browser_region)
    assert "a Chromium viewer's link drops to 300 kbit/s" in text
    assert "| round | down, s | longest stall, s | between frames decoded, s |" in text
    assert "| 1 | 2.00 | 0.50 | 0.55 | 0.20 | 640x360 | 15.00 |" in text
    assert "| 1 | 2.00 | 0.50 | 0.20 | 640x360 | 15.00 |" in docgen.render_downlink(
        aiortc, aiortc_region
    )


def test_status_criteria_print_what_they_are_judged_on() -> None:
    criteria = [
        docgen.Criterion("ours", 14.7, "≤", 20, "µs"),
        docgen.Criterion("loss", 0.0, "≤", 0.1, "%", 2),
    ]
    assert [c.text() for c in criteria] == ["ours: 14.7 µs ≤ 20 µs", "loss: 0.00 % ≤ 0.1 %"]
    assert docgen.status_word(criteria) == "met"
    assert docgen.status_word([docgen.Criterion("x", 21.0, "≤", 20, "µs")]) == "not met"
    # "below": equal to the threshold is not enough.
    assert docgen.status_word([docgen.Criterion("ratio", 1.0, "<", 1, "", 2)]) == "not met"
    assert docgen.Criterion("ratio", 0.99, "<", 1, "", 2).text() == "ratio: 0.99 < 1"
    assert docgen.status_word([*criteria, docgen.Criterion("p99", None, "≤", 15, "ms")]) == (
        "not measured"
    )
    table = docgen.render_status(
        {"w2": _document(), "raw": None, "soak": None},
        {"w2": "benchmarks/results/x.json", "raw": "none", "soak": "none"},
    )
    assert "| Server CPU ≤ 20 µs per forwarded packet on W2 (16 students) | **met** |" in table
    assert "ours/Janus at 16: 0.82 ≤ 1" in table


@pytest.mark.parametrize("marker", ["<!-- bench:begin table id=x source=none -->\nbody\n"])
def test_a_region_without_its_end_is_an_error(marker: str) -> None:
    with pytest.raises(ValueError, match="no bench:end"):
        docgen.regions(marker)


def test_report_points_headline_regions_at_the_newest_qualifying_file(tmp_path: Path) -> None:
    import json

    quick, full, busy = _document(quick=True), _document(), _document(quiet=False)
    for name, document in (("3-quick", quick), ("2-full", full), ("1-busy", busy)):
        (tmp_path / f"2026{name}.json").write_text(json.dumps(document))
    page = (
        "intro\n<!-- bench:begin status w2=none raw=none soak=none -->\nold\n<!-- bench:end -->\n"
        "<!-- bench:begin table id=w2 workload=w2 need=headline systems=ours,janus source=none "
        "-->\nold\n<!-- bench:end -->\nprose stays\n"
    )
    text = docgen.update(page, keep_sources=False, directory=tmp_path)
    chosen = str(tmp_path / "20262-full.json")
    (table,) = [r for r in docgen.regions(text) if r.kind == "table"]
    (status,) = [r for r in docgen.regions(text) if r.kind == "status"]
    assert table.source == chosen and status.attrs["w2"] == chosen
    assert text.startswith("intro\n") and "prose stays\n" in text and "old" not in text
    assert "| **met** | ours: 12.2 µs ≤ 20 µs |" in text
    assert "ours/Janus at 16: 0.82 ≤ 1; ours/Janus at 32: not measured" in text

"""Command-line argument types and flags shared by ``lco serve`` and the management commands."""

from __future__ import annotations

import argparse
import os

from .config import parse_duration


def duration(text: str) -> int:
    """``90``, ``90s``, ``30m``, ``4h`` or ``2d`` as seconds (an argparse type)."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_link_lifetime_arg(parser: argparse.ArgumentParser) -> None:
    """``--max-link-lifetime``: for ``lco serve`` and ``lco lesson links`` alike."""
    parser.add_argument(
        "--max-link-lifetime",
        type=duration,
        default=os.environ.get("LCO_MAX_LINK_LIFETIME", "7d"),
        help="no join link minted from a lesson lives longer, whatever its schedule says "
        "(env LCO_MAX_LINK_LIFETIME; default 7d)",
    )

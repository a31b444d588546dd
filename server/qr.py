"""QR codes of join links, drawn on the server as SVG (segno: pure Python, BSD licence).

A phone's camera opens a student's or a classroom's link from a printed sheet or a
screen. The code is an SVG ``data:`` URL, which pages show as an ``<img>``: no markup
of ours is ever inserted into a page, and no request line ever carries the link.
"""

from __future__ import annotations

import segno


def qr_svg_data_uri(text: str) -> str:
    """``text`` as a QR code (error correction M: survives a crease in a printed sheet)."""
    code = segno.make(text, error="m", micro=False)
    uri: str = code.svg_data_uri(scale=4, border=2, dark="#000", light="#fff")
    return uri

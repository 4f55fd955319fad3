"""The claim QR code as terminal text (segno, half-block characters, no colour codes)."""

import io

import segno


def render_qr(text: str) -> str:
    out = io.StringIO()
    segno.make(text, error="m").terminal(out=out, compact=True, border=2)
    return out.getvalue()

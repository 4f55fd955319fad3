"""The human side of the test server: a list of QR codes and a page per QR with its image and a
Pay button, so a person running the demo can "pay" what the kiosk shows."""

import io
from html import escape

import segno

from tools.razorpay_server.entities import QrCode, rupees

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #1d2330; }
table { border-collapse: collapse; }
td, th { padding: .35rem .8rem; border-bottom: 1px solid #ddd; }
.closed { color: #888; } button { font-size: 1rem; padding: .4rem 1.2rem; }
.note { color: #555; font-size: .9rem; } code { font-size: .85rem; }
"""


def qr_svg(qr: QrCode) -> bytes:
    out = io.BytesIO()
    segno.make(qr.image_content, error="m").save(out, kind="svg", scale=6, border=3)
    return out.getvalue()


def _amount(qr: QrCode) -> str:
    return f"₹{rupees(qr.payment_amount)}" if qr.payment_amount is not None else "any amount"


def _pay_form(qr: QrCode) -> str:
    if qr.status != "active":
        return f'<span class="closed">closed ({escape(str(qr.close_reason))})</span>'
    return (
        f'<form method="post" action="/_test/qr_codes/{escape(qr.id)}/pay">'
        f"<button>Pay {escape(_amount(qr))}</button></form>"
    )


def _page(title: str, body: str) -> str:
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body>{body}</body></html>"
    )


def index(qr_codes: list[QrCode]) -> str:
    rows = "".join(
        f"<tr class='{escape(q.status)}'><td><a href='/_test/qr_codes/{escape(q.id)}'>"
        f"{escape(q.id)}</a></td><td>{escape(_amount(q))}</td>"
        f"<td>{escape(str(q.notes.get('order_id', '')))}</td><td>{escape(q.status)}</td>"
        f"<td>{_pay_form(q)}</td></tr>"
        for q in reversed(qr_codes)
    )
    body = (
        "<h1>Razorpay test server</h1>"
        "<p class='note'>Local stand-in for Razorpay: no real money moves. Paying here sends the"
        " same signed webhooks Razorpay would.</p>"
        "<table><tr><th>QR code</th><th>Amount</th><th>Order</th><th>Status</th><th></th></tr>"
        f"{rows or '<tr><td colspan=5>No QR codes yet.</td></tr>'}</table>"
    )
    return _page("Razorpay test server", body)


def qr_page(qr: QrCode, message: str | None = None) -> str:
    notice = f"<p><strong>{escape(message)}</strong></p>" if message else ""
    body = (
        f"<p><a href='/_test/'>All QR codes</a></p><h1>{escape(qr.name or qr.id)}</h1>{notice}"
        f"<p>{escape(_amount(qr))} · {escape(qr.status)} · received"
        f" ₹{rupees(qr.payments_amount_received)} in {qr.payments_count_received} payment(s)</p>"
        f"<img src='/_test/qr_codes/{escape(qr.id)}/image.svg' alt='UPI QR code'>"
        f"<p><code>{escape(qr.image_content)}</code></p>{_pay_form(qr)}"
    )
    return _page(f"QR {qr.id}", body)

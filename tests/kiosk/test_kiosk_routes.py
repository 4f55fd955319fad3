"""The kiosk page's routes over plain HTTP: headers, assets, the QR route's errors."""

import re

import aiohttp

from edge.app import Gateway
from edge.http.kiosk_page import STATIC_DIR


async def test_page_and_assets_are_served_by_the_gateway(kiosk_gateway: Gateway) -> None:
    async with aiohttp.ClientSession(base_url=kiosk_gateway.http_url) as http:
        async with http.get("/?machine=M2", allow_redirects=False) as response:
            assert response.status == 302
            assert response.headers["Location"] == "/kiosk?machine=M2"
        async with http.get("/kiosk") as response:
            assert response.status == 200
            assert response.content_type == "text/html"
            csp = response.headers["Content-Security-Policy"]
            assert "default-src 'self'" in csp and "script-src 'self'" in csp
            html = await response.text()
        for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', html):
            async with http.get(asset) as response:
                assert response.status == 200, asset
        async with http.get("/static/kiosk.js") as response:
            assert response.content_type in {"text/javascript", "application/javascript"}
        async with http.get("/static/../http/app.py") as response:
            assert response.status in {403, 404}
            assert b"create_app" not in await response.read()


def test_page_loads_nothing_from_outside() -> None:
    """No CDN, no fonts or scripts from the internet: the kiosk works with the uplink down."""
    for path in STATIC_DIR.iterdir():
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"https?://", text.replace("http://www.w3.org/2000/svg", "")), path


async def test_qr_route_errors_use_the_envelope(kiosk_gateway: Gateway) -> None:
    async with aiohttp.ClientSession(base_url=kiosk_gateway.http_url) as http:
        async with http.get("/kiosk/orders/nope/qr.svg") as response:
            assert response.status == 404
            assert (await response.json())["error"]["code"] == "order_not_found"
        body = {
            "machine_id": "M1",
            "items": [{"id": "M1-A1", "quantity": 1}],
            "payment_method": "cash",
        }
        async with http.post("/api/v1/orders", json=body) as response:
            order_id = (await response.json())["data"]["id"]
        async with http.get(f"/kiosk/orders/{order_id}/qr.svg") as response:
            assert response.status == 404
            error = (await response.json())["error"]
            assert error["code"] == "no_qr_payload" and error["requestId"]

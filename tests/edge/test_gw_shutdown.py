"""Stopping the gateway is prompt even with kiosks still following orders over SSE."""

import asyncio
from pathlib import Path

import aiohttp
from gw_support import gateway_settings, load_site
from standalone_site import MachineCreds

from edge.app import Gateway


async def test_open_order_stream_does_not_hold_up_shutdown(
    tmp_path: Path, creds: dict[str, MachineCreds]
) -> None:
    gateway = Gateway(gateway_settings(tmp_path / "gw"))
    await gateway.__aenter__()
    stopped = False
    try:
        await load_site(gateway, creds)
        async with aiohttp.ClientSession(base_url=gateway.http_url) as http:
            body = {
                "machine_id": "M1",
                "items": [{"id": "M1-A1", "quantity": 1}],
                "payment_method": "cash",
            }
            async with http.post("/api/v1/orders", json=body) as response:
                order_id = (await response.json())["data"]["id"]
            async with http.get(f"/api/v1/orders/{order_id}/events") as stream:
                first = await stream.content.readuntil(b"\n\n")
                assert first.startswith(b"event: order")
                # The order waits for coins that never come. Stopping must end the stream,
                # not wait out the HTTP runner's shutdown timeout for it.
                async with asyncio.timeout(1.5):
                    await gateway.__aexit__(None, None, None)
                stopped = True
                assert await stream.content.read() == b""  # the server closed it
    finally:
        if not stopped:
            await gateway.__aexit__(None, None, None)

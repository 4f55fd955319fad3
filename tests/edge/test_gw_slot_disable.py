"""Slots that keep failing are switched off at the gateway (real gateway, device double): N
failed dispenses in a row (``ok`` starts the count again, ``unknown`` does not count), the kiosk
stops selling the slot, and an operator (a new ``enable_rev`` from the cloud) or a technician
(``vending-gateway slots enable``) switches it on again."""

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
from gw_device_double import DeviceDouble
from gw_money_support import (
    device,
    kiosk_get,
    kiosk_order,
    money_gateway,
    outbox,
    site_state,
    until_terminal,
)
from standalone_site import MachineCreds

from contracts.sync import MoneyPolicy
from edge.app import Gateway

REPO = Path(__file__).resolve().parents[2]


async def vend(gw: Gateway, dev: DeviceDouble, quantity: int = 1) -> str:
    """One cash order of ``quantity`` M1-A1, paid (machine credit first, then coins); its end."""
    order = await kiosk_order(gw, {"M1-A1": quantity}, "cash")
    due = order["total_amount"] - order["paid_amount"]
    if due:
        await dev.insert_coin(due)
    return await until_terminal(gw, order["id"])


async def a1(gw: Gateway) -> dict[str, Any]:
    status, body = await kiosk_get(gw, "/api/v1/machines/M1/catalog")
    assert status == 200
    return next(item for item in body["data"] if item["slot"] == "A1")  # type: ignore[no-any-return]


async def order_refused(gw: Gateway) -> dict[str, Any]:
    body = {"machine_id": "M1", "items": [{"id": "M1-A1", "quantity": 1}], "payment_method": "cash"}
    async with (
        aiohttp.ClientSession(base_url=gw.http_url) as http,
        http.post("/api/v1/orders", json=body) as response,
    ):
        assert response.status == 409, await response.text()
        return (await response.json())["error"]  # type: ignore[no-any-return]


async def slot_states(gw: Gateway) -> list[tuple[bool, str, int, int]]:
    return [
        (s["enabled"], s["reason"], s["consecutive_failures"], s["enable_rev"])
        for s in await outbox(gw, "slot.state")
        if s["slot"] == "A1"
    ]


async def test_three_failures_disable_the_slot_until_the_cloud_enables_it(
    tmp_path: Path, creds: dict[str, MachineCreds]
) -> None:
    async with money_gateway(tmp_path / "gw", creds) as gw, device(gw, creds["M1"]) as dev:
        dev.jammed.add("A1")
        assert await vend(gw, dev, quantity=3) == "failed"
        assert await slot_states(gw) == [(False, "jammed", 3, 0)]
        item = await a1(gw)
        assert (item["enabled"], item["quantity"]) == (False, 0)
        error = await order_refused(gw)
        assert error["code"] == "slot_disabled"
        assert await gw.store.stock("M1-A1") == (5, 0)  # the units are still in the slot
        # A pull that does not carry an operator's switch (same enable_rev) keeps it off.
        await gw.store.apply_state(site_state(creds, cursor=2, version=2))
        assert (await a1(gw))["enabled"] is False
        # The operator enables it in the cloud: enable_rev 1.
        await gw.store.apply_state(
            site_state(creds, cursor=3, version=3, slot_switches={"A1": (True, 1)})
        )
        assert (await a1(gw))["enabled"] is True
        assert (await slot_states(gw))[-1] == (True, "operator", 0, 1)
        dev.jammed.clear()
        assert await vend(gw, dev) == "completed"  # paid by the jammed order's credit
        # The operator switches it off from the cloud, and on again.
        await gw.store.apply_state(
            site_state(creds, cursor=4, version=4, slot_switches={"A1": (False, 2)})
        )
        assert (await a1(gw))["enabled"] is False
        assert (await slot_states(gw))[-1] == (False, "operator", 0, 2)


async def test_ok_starts_the_count_again_and_unknown_does_not_count(
    tmp_path: Path, creds: dict[str, MachineCreds]
) -> None:
    policy = MoneyPolicy(disable_slot_after_failures=2)
    async with (
        money_gateway(tmp_path / "gw", creds, policy=policy) as gw,
        device(gw, creds["M1"]) as dev,
    ):
        dev.jammed.add("A1")
        assert await vend(gw, dev) == "failed"  # 1 in a row
        dev.jammed.clear()
        assert await vend(gw, dev) == "completed"  # back to 0
        dev.jammed.add("A1")
        assert await vend(gw, dev) == "failed"  # 1
        dev.silent = True
        assert await vend(gw, dev) == "failed"  # unknown: still 1
        assert (await a1(gw))["enabled"] is True
        dev.silent = False
        assert await vend(gw, dev) == "failed"  # 2: off
        assert (await a1(gw))["enabled"] is False
        assert await slot_states(gw) == [(False, "jammed", 2, 0)]


def slots_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge", "slots", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )


async def test_technician_enables_the_slot_from_the_command_line(
    tmp_path: Path, creds: dict[str, MachineCreds]
) -> None:
    config = tmp_path / "gw.json"
    config.write_text(json.dumps({"data_dir": str(tmp_path / "gw")}))
    policy = MoneyPolicy(disable_slot_after_failures=1)
    async with (
        money_gateway(tmp_path / "gw", creds, policy=policy) as gw,
        device(gw, creds["M1"]) as dev,
    ):
        dev.jammed.add("A1")
        assert await vend(gw, dev) == "failed"
        listed = slots_cli(config, "list", "M1")
        assert listed.returncode == 0, listed.stderr
        assert "M1 A1 OFF (jammed)" in listed.stdout and "M1 A2 on" in listed.stdout
        as_json = [
            json.loads(line) for line in slots_cli(config, "list", "--json").stdout.splitlines()
        ]
        assert {(r["machine_id"], r["slot"]): r["enabled"] for r in as_json}[("M1", "A1")] is False

        dev.jammed.clear()  # the technician cleared the jam
        enabled = slots_cli(config, "enable", "M1", "A1")
        assert enabled.returncode == 0, enabled.stderr
        assert "enabled" in enabled.stdout
        assert (await a1(gw))["enabled"] is True
        assert (await slot_states(gw))[-1] == (True, "technician", 0, 0)
        again = slots_cli(config, "enable", "M1", "A1")
        assert again.returncode == 0 and "already enabled" in again.stdout
        assert len(await slot_states(gw)) == 2
        # The next pull (no operator switch) leaves the technician's decision alone.
        await gw.store.apply_state(site_state(creds, cursor=2, version=2, policy=policy))
        assert (await a1(gw))["enabled"] is True
        assert await vend(gw, dev) == "completed"

        missing = slots_cli(config, "enable", "M1", "Z9")
        assert missing.returncode == 1 and "no slot Z9" in missing.stderr

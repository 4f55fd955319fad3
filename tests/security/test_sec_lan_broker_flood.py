"""Anyone on the site LAN, with no credentials: a flood of CONNECTs with a real machine id and
wrong passwords. Each costs the broker a PBKDF2 check (wrong passwords are never cached), and
at most two run at once, so they queue. Before the fix one host holding a few hundred such
CONNECTs open made every uncached login (each device after a gateway restart, a new or
re-credentialed machine) wait behind the whole queue: 5-10 s against `make demo` with 300,
past the firmware's 10 s CONNACK timeout with more, so after a power cut no machine came back
while the flood lasted. Now each client address has at most two checks waiting or running;
more from the same address are refused at once, and a device on another address is served
next to the flood, not behind it. Real gateway, embedded amqtt broker, real PBKDF2 cost.
"""

import asyncio
import contextlib
import logging
import socket
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from amqtt.session import Session
from polling import wait_for
from sec_broker_support import ACCEPTED, NOT_AUTHORIZED, connect_packet, running_site
from standalone_site import MachineCreds

from contracts.credentials import hash_secret, verify_secret
from edge.broker import plugins
from edge.broker.plugins import PBKDF2_PER_ADDRESS, BrokerAuthority

ATTACKER_ADDRESS = "127.0.0.2"  # Linux answers on all of 127/8: a second host on the LAN
FLOODERS = 300


@pytest.fixture(scope="module")
def real_creds() -> dict[str, MachineCreds]:
    """Machines whose MQTT secrets are hashed with the production PBKDF2 cost (the shared test
    credentials use a cheap one)."""
    out = {}
    for machine_id in ("M1", "M2"):
        quick = MachineCreds.new(machine_id)
        out[machine_id] = MachineCreds(
            quick.id, quick.secret, quick.command_key, hash_secret(quick.secret)
        )
    return out


async def _connack(port: int, packet: bytes, source: str) -> int | None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    try:
        writer.write(packet)
        await writer.drain()
        answer = await reader.read(4)
        return answer[3] if len(answer) == 4 else None
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


@contextlib.asynccontextmanager
async def flood(port: int) -> AsyncIterator[list[int | None]]:
    answers: list[int | None] = []
    wrong = connect_packet("M2", "M2", "not-the-secret", clean=True)

    async def one_flooder() -> None:
        while True:
            try:
                answers.append(await _connack(port, wrong, ATTACKER_ADDRESS))
            except OSError:
                await asyncio.sleep(0.01)

    tasks = [asyncio.create_task(one_flooder()) for _ in range(FLOODERS)]
    try:
        yield answers
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_flooding_address_never_queues_more_than_its_share_of_password_checks(
    real_creds: dict[str, MachineCreds], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The guarantee itself, counted rather than timed: 50 wrong-password CONNECTs from one
    address and then a device's first login from another. Before the fix the device's check
    queued behind all 50 PBKDF2 runs; now the address gets at most two and the rest are refused
    at once, so the device's login is at most the third check to run."""
    checks = 0

    def counted(password: str, stored: str) -> bool:
        nonlocal checks
        checks += 1
        return verify_secret(password, stored)

    monkeypatch.setattr(plugins, "verify_secret", counted)

    async def lookup(machine_id: str) -> str | None:
        creds = real_creds.get(machine_id)
        return creds.secret_hash if creds else None

    authority = BrokerAuthority("gateway", "gateway-password", lookup)

    def session(machine_id: str, password: str, address: str) -> Session:
        s = Session()
        s.client_id = s.username = machine_id
        s.password = password
        s.remote_address = address
        return s

    flood = [
        asyncio.create_task(authority.authenticate(session("M2", "wrong", ATTACKER_ADDRESS)))
        for _ in range(50)
    ]
    await asyncio.sleep(0)  # every flood CONNECT is in before the device's
    device = session("M1", real_creds["M1"].secret, "127.0.0.1")
    assert await asyncio.wait_for(authority.authenticate(device), timeout=30)
    checks_when_device_was_in = checks
    assert not any(await asyncio.gather(*flood))
    assert checks_when_device_was_in <= PBKDF2_PER_ADDRESS + 1
    assert checks <= PBKDF2_PER_ADDRESS + 1


@pytest.mark.slow
async def test_a_wrong_password_flood_does_not_keep_devices_from_logging_in(
    tmp_path: Path, real_creds: dict[str, MachineCreds]
) -> None:
    async with running_site("amqtt", tmp_path, real_creds) as site, flood(site.port) as answers:

        async def flooding() -> bool:
            return len(answers) >= 2 * FLOODERS

        await wait_for(flooding, within=30)
        m1 = real_creds["M1"]
        started = time.perf_counter()
        code = await _connack(site.port, connect_packet("M1", "M1", m1.secret), "127.0.0.1")
        waited = time.perf_counter() - started
        assert code == ACCEPTED
        # M1 never logged in before: its login is a full PBKDF2 check, served next to the flood.
        # A load run (the flooders share the gateway's event loop), so it is behind `slow`.
        assert waited < 1.5, f"M1's first login waited {waited:.1f}s behind the flood"
    assert set(answers) == {NOT_AUTHORIZED}


async def _abandoned_connect(port: int, packet: bytes, source: str) -> None:
    """Send a CONNECT and reset the connection before the broker answers (SO_LINGER 0)."""
    _, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    writer.write(packet)
    await writer.drain()
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def test_a_refused_connect_flood_does_not_flood_the_log(
    tmp_path: Path, real_creds: dict[str, MachineCreds], caplog: pytest.LogCaptureFixture
) -> None:
    """Every refused CONNECT wrote two log lines (about 440 bytes with amqtt's), and one whose
    client had gone before the answer a 17-line traceback ("Unhandled exception in
    client_connected_cb": closing the reset socket raised). A host on the LAN with no
    credentials writes ~300 KB/s that way, tens of GB a day into the gateway's disk. Now
    refusals are counted in full and logged at most once a minute per reason and address."""
    caplog.set_level(logging.INFO)
    async with running_site("amqtt", tmp_path, real_creds) as site:
        wrong = connect_packet("M2", "M2", "not-the-secret", clean=True)
        for source in ("127.0.0.2", "127.0.0.3"):
            answers = await asyncio.gather(*(_connack(site.port, wrong, source) for _ in range(40)))
            assert set(answers) == {NOT_AUTHORIZED}
        await asyncio.gather(
            *(_abandoned_connect(site.port, wrong, "127.0.0.4") for _ in range(40))
        )

        async def all_counted() -> bool:
            refused = site.metric("gateway_mqtt_connects_refused_total", {"reason": "credentials"})
            return refused >= 80 + 30  # an abandoned CONNECT may be dropped before it is read

        await wait_for(all_counted)
        m1 = real_creds["M1"]
        assert await _connack(site.port, connect_packet("M1", "M1", m1.secret), "127.0.0.1") == 0
    # the gateway runs amqtt's own loggers at WARNING (edge.__main__): its INFO lines do not count
    noisy = [
        r
        for r in caplog.records
        if r.name.startswith(("edge.broker", "asyncio"))
        or (r.name.startswith("amqtt") and r.levelno >= logging.WARNING)
    ]
    assert not [r for r in noisy if r.levelno >= logging.ERROR], noisy[:3]
    assert len(noisy) <= 12, [r.getMessage() for r in noisy][:20]

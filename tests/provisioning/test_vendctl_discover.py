"""vendctl gateway discover finds a gateway announced the way the edge announces itself."""

import asyncio
import uuid

from edge.discovery import Announcement
from provisioning.cli import main


async def test_discover_finds_announced_gateway(capsys):
    name = f"gw-{uuid.uuid4().hex[:8]}"
    async with Announcement(
        name=name,
        site="site-1",
        host="127.0.0.1",
        http_port=8123,
        mqtt_port=1884,
        api_path="/api/v1",
    ) as announcement:
        assert announcement.active
        rc = await asyncio.to_thread(main, ["gateway", "discover", "--timeout", "1.5"])
    out = capsys.readouterr().out
    assert rc == 0
    (line,) = [line for line in out.splitlines() if line.startswith(name)]
    assert "127.0.0.1:8123" in line
    assert "site=site-1" in line and "mqtt_port=1884" in line and "api=/api/v1" in line


def test_discover_bad_timeout(capsys, one_line_error):
    assert main(["gateway", "discover", "--timeout", "0"]) == 2
    one_line_error(capsys.readouterr().err)

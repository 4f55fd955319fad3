"""The hardened broker overrides private methods of one amqtt release: on any other release
the gateway refuses to start instead of running connect handling nobody reviewed."""

from pathlib import Path

import pytest
from gw_support import gateway_settings
from sec_broker_support import creds
from standalone_site import MachineCreds

import edge.broker.hardened as hardened
from edge.app import Gateway
from edge.broker.hardened import AMQTT_VERSION, UnsupportedAmqttVersion, check_amqtt_version

__all__ = ["creds"]


def test_installed_amqtt_is_the_pinned_one() -> None:
    check_amqtt_version()
    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert f'"amqtt=={AMQTT_VERSION}"' in pyproject


async def test_gateway_refuses_to_start_on_another_amqtt(
    tmp_path: Path, creds: dict[str, MachineCreds], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Installing a second amqtt is not possible here; the version lookup is what changes.
    monkeypatch.setattr(hardened, "version", lambda name: "0.12.2")
    with pytest.raises(UnsupportedAmqttVersion, match=r"0\.12\.2"):
        async with Gateway(gateway_settings(tmp_path / "gw")):
            pass

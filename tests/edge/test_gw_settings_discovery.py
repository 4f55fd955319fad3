"""Settings sources (env, TOML, JSON) and the zeroconf announcement."""

import json
from pathlib import Path

import pytest
from gw_support import gateway_settings
from pydantic import ValidationError
from standalone_site import MachineCreds
from zeroconf.asyncio import AsyncZeroconf

from edge.app import Gateway
from edge.discovery import SERVICE_TYPE
from edge.settings import CONFIG_FILE_ENV, GatewaySettings


def test_env_and_file_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = tmp_path / "gateway.toml"
    toml.write_text('site_name = "Lobby"\nhttp_port = 9001\ndispense_resend_s = 2.5\n')
    monkeypatch.setenv("VENDING_GATEWAY_HTTP_PORT", "9002")
    settings = GatewaySettings.load(toml)
    assert (settings.site_name, settings.http_port, settings.dispense_resend_s) == (
        "Lobby",
        9002,  # the environment wins over the file
        2.5,
    )
    assert settings.mqtt_password  # generated when not configured
    as_json = tmp_path / "gateway.json"
    as_json.write_text(json.dumps({"gateway_name": "gw-7", "cloud_url": "http://c:8080"}))
    monkeypatch.setenv(CONFIG_FILE_ENV, str(as_json))
    loaded = GatewaySettings()
    assert (loaded.gateway_name, loaded.cloud_url) == ("gw-7", "http://c:8080")
    assert loaded.cloud_url is not None and loaded.enroll_token is None


def test_invalid_settings_refuse_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CONFIG_FILE_ENV, raising=False)
    with pytest.raises(ValidationError):
        GatewaySettings(http_port=70000)
    with pytest.raises(ValidationError):
        GatewaySettings(dispense_resend_s=10, dispense_give_up_s=5)
    with pytest.raises(ValidationError):
        GatewaySettings(no_such_setting=1)  # type: ignore[call-arg]
    # A command must expire on the device before the gateway gives up on it and records unknown.
    for ttl in (90, 120):
        with pytest.raises(ValidationError, match="dispense_command_ttl_s"):
            GatewaySettings(dispense_command_ttl_s=ttl, dispense_give_up_s=90)
    assert GatewaySettings(dispense_command_ttl_s=89, dispense_give_up_s=90).dispense_give_up_s
    defaults = GatewaySettings()
    assert defaults.dispense_give_up_s > defaults.dispense_command_ttl_s


async def test_zeroconf_announces_the_kiosk_api(
    tmp_path: Path, creds: dict[str, MachineCreds]
) -> None:
    settings = gateway_settings(tmp_path / "gw", zeroconf_enabled=True, gateway_name="gw-test")
    async with Gateway(settings) as gw:
        health = await gw.health()
        if not health["zeroconf"]:
            pytest.skip("no multicast-capable interface here")
        browser = AsyncZeroconf()
        try:
            info = await browser.async_get_service_info(
                SERVICE_TYPE, f"gw-test.{SERVICE_TYPE}", timeout=3000
            )
        finally:
            await browser.async_close()
        assert info is not None
        assert info.port == int(gw.http_url.rsplit(":", 1)[1])
        props = {k.decode(): (v or b"").decode() for k, v in info.properties.items()}
        assert props["api"] == "/api/v1" and props["mqtt_port"] == str(gw.mqtt_port)

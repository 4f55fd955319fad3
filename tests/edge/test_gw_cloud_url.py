"""Enrolment never travels in clear text beyond this machine."""

from pathlib import Path

import pytest
from gw_support import gateway_settings

from edge.app import Gateway
from edge.sync.client import InsecureCloudUrl


@pytest.mark.parametrize(
    "url", ["http://cloud.example.com", "http://10.1.2.3:8080", "ftp://127.0.0.1", "cloud"]
)
async def test_plain_http_to_another_host_is_refused_at_start(tmp_path: Path, url: str) -> None:
    settings = gateway_settings(tmp_path / "gw", cloud_url=url, enroll_token="t" * 20)
    with pytest.raises(InsecureCloudUrl):
        async with Gateway(settings):
            pass


@pytest.mark.parametrize(
    "url", ["https://127.0.0.1:1", "http://127.0.0.1:8080", "http://localhost:1"]
)
async def test_https_or_loopback_starts(tmp_path: Path, url: str) -> None:
    settings = gateway_settings(tmp_path / "gw", cloud_url=url, enroll_token="t" * 20)
    async with Gateway(settings) as gateway:
        assert gateway.cloud is not None

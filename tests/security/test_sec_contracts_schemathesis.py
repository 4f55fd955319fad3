"""Schemathesis against the live cloud API and the live kiosk API: every check, a fixed seed, a
bounded number of examples. It must find nothing: no server error, no undocumented status,
header or content type, no response outside its schema, no invalid request accepted, no valid
request refused, and a 405 with Allow for every method a path does not support."""

from pathlib import Path

from sec_contracts_support import (
    CLOUD_EXAMPLES,
    CLOUD_SETTINGS,
    KIOSK_EXAMPLES,
    KIOSK_SETTINGS,
    live_cloud,
    live_gateway,
    schemathesis_run,
)


async def test_cloud_api_matches_its_openapi_document(tmp_path: Path) -> None:
    async with live_cloud(tmp_path) as cloud:
        result = await schemathesis_run(
            f"{cloud.url}/api/v1/openapi.json",
            tmp_path,
            CLOUD_SETTINGS,
            token=cloud.token,
            max_examples=CLOUD_EXAMPLES,
        )
    assert result.code == 0, result.output


async def test_kiosk_api_matches_its_openapi_document(tmp_path: Path) -> None:
    async with live_gateway(tmp_path) as gateway:
        result = await schemathesis_run(
            f"{gateway.http_url}/api/v1/openapi.json",
            tmp_path,
            KIOSK_SETTINGS,
            max_examples=KIOSK_EXAMPLES,
        )
    assert result.code == 0, result.output

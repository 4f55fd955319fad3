"""The device config bundle: exactly the firmware's ``config.json`` (see docs/firmware.md) plus
two hints for people and tools (``gateway_service``, ``cloud_url``), which the firmware ignores.

It holds the device's MQTT secret and command key, so it is written with mode 0600.
"""

import json
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from provisioning.config_store import write_private
from provisioning.errors import BundleError

GATEWAY_SERVICE = "_vending-gw._tcp.local."
DEFAULT_MQTT_HOST = "127.0.0.1"
DEFAULT_MQTT_PORT = 1883
BUNDLE_KEYS = (
    "machine_id",
    "mqtt_host",
    "mqtt_port",
    "mqtt_user",
    "mqtt_password",
    "command_key",
    "wifi_ssid",
    "wifi_password",
    "gateway_service",
    "cloud_url",
)


class DeviceBundle(BaseModel):
    # Extra keys are firmware settings a technician may add by hand (pin map, motor timing);
    # they travel to the device unchanged.
    model_config = ConfigDict(extra="allow")

    machine_id: Annotated[StrictStr, Field(min_length=1, max_length=64, pattern=r"^[\w.-]+$")]
    mqtt_host: Annotated[StrictStr, Field(min_length=1, max_length=253)]
    mqtt_port: Annotated[StrictInt, Field(ge=1, le=65535)]
    mqtt_user: Annotated[StrictStr, Field(min_length=1, max_length=64)]
    mqtt_password: Annotated[StrictStr, Field(min_length=1, max_length=256)]
    command_key: Annotated[StrictStr, Field(pattern=r"^([0-9a-fA-F]{2}){16,64}$")]
    wifi_ssid: Annotated[StrictStr, Field(max_length=32)] = ""
    wifi_password: Annotated[StrictStr, Field(max_length=64)] = ""
    gateway_service: StrictStr = GATEWAY_SERVICE
    cloud_url: StrictStr = ""


def build_bundle(
    credentials: dict[str, Any],
    *,
    cloud_url: str,
    mqtt_host: str = DEFAULT_MQTT_HOST,
    mqtt_port: int = DEFAULT_MQTT_PORT,
    wifi_ssid: str = "",
    wifi_password: str = "",
) -> dict[str, Any]:
    """The bundle from the cloud's onboarding answer (``credentials`` as returned once)."""
    try:
        bundle = DeviceBundle(
            machine_id=credentials["machine_id"],
            mqtt_host=mqtt_host,
            mqtt_port=mqtt_port,
            mqtt_user=credentials["mqtt_username"],
            mqtt_password=credentials["mqtt_password"],
            command_key=credentials["command_key"],
            wifi_ssid=wifi_ssid,
            wifi_password=wifi_password,
            gateway_service=GATEWAY_SERVICE,
            cloud_url=cloud_url,
        )
    except (KeyError, ValidationError) as exc:
        raise BundleError(f"cannot build a device bundle: {_reason(exc)}") from exc
    return bundle.model_dump()


def validate_bundle(data: Any, source: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise BundleError(f"{source}: a device bundle is a JSON object")
    try:
        return DeviceBundle.model_validate(data).model_dump()
    except ValidationError as exc:
        raise BundleError(f"{source}: not a valid device bundle: {_reason(exc)}") from exc


def read_bundle(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise BundleError(f"bundle {path} does not exist") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError(f"cannot read bundle {path}: {exc}") from exc
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise BundleError(f"bundle {path} is not valid JSON ({exc})") from exc
    return validate_bundle(data, str(path))


def write_bundle(path: Path, bundle: dict[str, Any]) -> None:
    try:
        write_private(path, render_bundle(bundle))
    except OSError as exc:
        raise BundleError(f"cannot write bundle {path}: {exc.strerror or exc}") from exc


def render_bundle(bundle: dict[str, Any]) -> str:
    return json.dumps(bundle, indent=1, sort_keys=True) + "\n"


def _reason(exc: Exception) -> str:
    # Field names and messages only: the input holds secrets and must not be echoed.
    if isinstance(exc, ValidationError):
        parts = [
            f"{'.'.join(str(p) for p in err['loc']) or 'bundle'}: {err['msg']}"
            for err in exc.errors(include_input=False, include_url=False)
        ]
        return "; ".join(parts[:3]) + (" ..." if len(parts) > 3 else "")
    if isinstance(exc, KeyError):
        return f"missing {exc.args[0]!r}"
    return str(exc)

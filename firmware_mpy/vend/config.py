# Configuration: built-in defaults overlaid with the provisioned config.json on flash.
import json

from vend import hmac

CONFIG_FILE = "config.json"

DEFAULTS: dict = {
    "machine_id": None,
    "mqtt_host": "127.0.0.1",
    "mqtt_port": 1883,
    "mqtt_user": None,  # None -> machine_id
    "mqtt_password": "",
    "mqtt_keepalive_s": 30,
    "command_key": "",  # hex text of the per-device HMAC key
    "wifi_ssid": "",
    "wifi_password": "",
    "currency": "INR",
    "health_interval_s": 30,
    "resend_interval_s": 5,
    "hal": "auto",  # "auto" | "sim" | "esp32"
    "motor_ms": 800,
    "drop_timeout_ms": 3000,
    "journal_keep": 16,  # ids of acked dispenses remembered (older ones: counter refuses)
    "journal_keep_results": 2,  # of those, the newest kept with their signed result for replays
    "telemetry_queue": 16,
    "backoff_min_ms": 500,
    "backoff_max_ms": 30000,
    # ESP32 pin map
    "slot_pins": {},
    "drop_pin": None,
    "coin_pin": None,
    "coin_value": 100,  # paise per pulse
    "door_pin": None,
    "motor_duty": 65535,
    "slot_stock": {},  # ESP32: initial units per slot until the device has counted its own
    # simulator (unix port)
    "sim_slots": {},
    "sim_port": 0,
}


class ConfigError(Exception):
    pass


def load(path=CONFIG_FILE):
    cfg = dict(DEFAULTS)
    try:
        with open(path) as f:
            cfg.update(json.load(f))
    except OSError as exc:
        raise ConfigError("no " + path) from exc
    except ValueError as exc:
        raise ConfigError(path + " is not valid JSON") from exc
    mid = cfg["machine_id"]
    if not isinstance(mid, str) or not mid:
        raise ConfigError("machine_id missing")
    if not cfg["mqtt_user"]:
        cfg["mqtt_user"] = mid
    try:
        cfg["command_key"] = bytes.fromhex(cfg["command_key"])
    except (ValueError, TypeError) as exc:
        raise ConfigError("command_key is not hex") from exc
    if not cfg["command_key"]:
        raise ConfigError("command_key missing")
    # One key per direction, derived once here (contracts/signing.py): a signature made for
    # one direction is never valid in the other. The machine secret itself is not kept.
    secret = cfg.pop("command_key")
    cfg["down_key"] = hmac.digest(secret, b"vend/v1/gateway-to-device")
    cfg["up_key"] = hmac.digest(secret, b"vend/v1/device-to-gateway")
    return cfg

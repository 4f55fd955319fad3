"""MQTT topic names. Everything a device touches lives under ``devices/{machine_id}/``.

The names here are the protocol; docs/protocol.md describes each payload.
"""

ROOT = "devices"

# gateway -> device
DISPENSE_COMMAND = "commands/dispense"
CONFIG_UPDATE = "config/update"
ACKS = "acks"

# device -> gateway
PRESENCE = "status/presence"  # retained; last will {"online": false}
HEALTH = "status/health"
INVENTORY = "status/inventory"
DISPENSE_RESULT = "events/dispense"
CASH_CREDIT = "events/cash"
LOGS = "logs"

# A device may publish only these suffixes under its own root ...
DEVICE_PUBLISH_SUFFIXES = (PRESENCE, HEALTH, INVENTORY, DISPENSE_RESULT, CASH_CREDIT, LOGS)
# ... and subscribe only to these (wildcards below its root are allowed by the ACL).
DEVICE_SUBSCRIBE_PREFIXES = ("commands/", "config/", ACKS)


def topic(machine_id: str, suffix: str) -> str:
    return f"{ROOT}/{machine_id}/{suffix}"


def split(topic_name: str) -> tuple[str, str] | None:
    """``devices/M/a/b`` -> ``("M", "a/b")``; None for anything outside the device tree."""
    parts = topic_name.split("/", 2)
    if len(parts) != 3 or parts[0] != ROOT or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]

"""Who may do what on which topic. Pure functions so the rules are testable without a broker.

A device (client id = username = its machine id) may publish only the device-to-gateway suffixes
under its own root, and subscribe only to its own commands, config and acks. Nobody but the
gateway's client publishes under ``commands/``, ``config/`` or ``acks``.
"""

from contracts import topics


def _own_suffix(machine_id: str, topic_name: str) -> str | None:
    parts = topics.split(topic_name)
    if parts is None or parts[0] != machine_id:
        return None
    return parts[1]


def device_may_publish(machine_id: str, topic_name: str) -> bool:
    if "+" in topic_name or "#" in topic_name:
        return False
    suffix = _own_suffix(machine_id, topic_name)
    return suffix in topics.DEVICE_PUBLISH_SUFFIXES


def device_may_subscribe(machine_id: str, topic_filter: str) -> bool:
    suffix = _own_suffix(machine_id, topic_filter)
    if suffix is None:
        return False
    if suffix == topics.ACKS:
        return True
    return any(
        suffix.startswith(prefix) and len(suffix) > len(prefix)
        for prefix in topics.DEVICE_SUBSCRIBE_PREFIXES
        if prefix.endswith("/")
    )


def device_may_retain(machine_id: str, topic_name: str) -> bool:
    """Only presence is retained: a retained money event would be handed to every later
    subscriber, the gateway included at each restart, as if it were new."""
    return topic_name == topics.topic(machine_id, topics.PRESENCE)


def device_may_will(machine_id: str, topic_name: str) -> bool:
    """A device's last will is its own offline presence and nothing else: a will is published
    when the broker, not the device, decides the connection is gone."""
    return topic_name == topics.topic(machine_id, topics.PRESENCE)

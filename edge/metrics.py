"""Prometheus metrics of one gateway, in its own registry (several gateways may share a process)."""

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.mqtt_messages = Counter(
            "gateway_mqtt_messages",
            "Device messages accepted, by kind",
            ["kind"],
            registry=self.registry,
        )
        self.mqtt_rejected = Counter(
            "gateway_mqtt_rejected",
            "Device messages dropped: malformed, oversized, unexpected topic, handler error",
            ["reason"],
            registry=self.registry,
        )
        self.orders_created = Counter(
            "gateway_orders_created", "Orders created", ["payment_method"], registry=self.registry
        )
        self.dispense_results = Counter(
            "gateway_dispense_results",
            "Dispense outcomes recorded (including timeouts as unknown)",
            ["result"],
            registry=self.registry,
        )
        self.commands_sent = Counter(
            "gateway_dispense_commands_sent",
            "Dispense command publications (first sends and re-sends)",
            ["kind"],
            registry=self.registry,
        )
        self.outbox_backlog = Gauge(
            "gateway_outbox_backlog",
            "Outbox events not yet acknowledged by the cloud",
            registry=self.registry,
        )
        self.devices = Gauge(
            "gateway_devices", "Machines by presence", ["state"], registry=self.registry
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)

"""Prometheus metrics of one gateway, in its own registry (several gateways may share a process)."""

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

# ``gateway_breaker_state`` values: the larger, the less traffic goes through.
BREAKER_STATE_VALUES = {"closed": 0, "half_open": 1, "open": 2}


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
            "Device messages dropped: malformed, oversized, unexpected topic, handler error,"
            " log_rate (device log lines over the per-machine budget), qos2 (a QoS 2 publish:"
            " the connection is closed)",
            ["reason"],
            registry=self.registry,
        )
        # The broker (edge.broker.hardened): what it refused before it touched any session.
        self.mqtt_connects_refused = Counter(
            "gateway_mqtt_connects_refused",
            "MQTT CONNECTs refused: credentials, identity (session of another identity), will"
            " (last will topic or retain not allowed), malformed, timeout (no CONNECT in time)",
            ["reason"],
            registry=self.registry,
        )
        self.mqtt_oversized_packets = Counter(
            "gateway_mqtt_oversized_packets",
            "MQTT connections closed for a packet over the size limit, before it was read",
            registry=self.registry,
        )
        self.mqtt_wills_dropped = Counter(
            "gateway_mqtt_wills_dropped",
            "Last wills not published: the session lost the right to publish them",
            registry=self.registry,
        )
        self.mqtt_retain_refused = Counter(
            "gateway_mqtt_retain_refused",
            "Retained publishes delivered but not retained (only presence may be retained)",
            registry=self.registry,
        )
        # Signed device messages (edge.store.signed) refused before anything was applied.
        self.device_messages_refused = Counter(
            "gateway_device_messages_refused",
            "Cash, dispense and inventory messages refused: unsigned, bad_signature,"
            " wrong_machine, replay, malformed, unknown_machine, foreign_id",
            ["reason"],
            registry=self.registry,
        )
        # The kiosk API's order capability and per-client limits (edge.http.guard).
        self.kiosk_refused = Counter(
            "gateway_kiosk_refused",
            "Kiosk API requests refused: rate, open_orders, reserved_units, order_too_large"
            " (per-client limits, 429/409), machine_busy (another customer's cash order),"
            " order_token_required, order_token_invalid (cancel without the order's token)",
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
        # Sync dead letters (edge.store.dead_letters): events the cloud refused, set aside.
        self.dead_letters = Gauge(
            "gateway_dead_letters",
            "Outbox events the cloud refused, waiting in the dead letters for a retry",
            registry=self.registry,
        )
        self.events_dead_lettered = Counter(
            "gateway_events_dead_lettered",
            "Outbox events moved to the dead letters, by source (cloud: named rejected by the"
            " cloud; isolated: found by splitting a batch the cloud refused whole)",
            ["source"],
            registry=self.registry,
        )
        # Circuit breakers (contracts.breaker) around the gateway's payment calls to the cloud.
        self.breaker_state = Gauge(
            "gateway_breaker_state",
            "Circuit breaker state: 0 closed, 1 half_open (one probe may pass), 2 open",
            ["breaker"],
            registry=self.registry,
        )
        self.breaker_transitions = Counter(
            "gateway_breaker_transitions",
            "Circuit breaker state changes, by breaker and the state entered",
            ["breaker", "state"],
            registry=self.registry,
        )
        self.payments_refused_fast = Counter(
            "gateway_payments_refused_fast",
            "Electronic orders refused without asking the cloud: payment_service_unavailable"
            " (payments breaker open), offline (no cloud link), not_enabled (no UPI for the"
            " tenant)",
            ["reason"],
            registry=self.registry,
        )
        self.devices = Gauge(
            "gateway_devices", "Machines by presence", ["state"], registry=self.registry
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)

"""The gateway's settings: environment (``VENDING_GATEWAY_*``) plus an optional TOML/JSON file.

The file is named by ``VENDING_GATEWAY_CONFIG_FILE`` (or passed to ``GatewaySettings.load``);
environment variables win over the file, explicit keyword arguments win over both.
"""

import os
import secrets
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    JsonConfigSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from contracts.sealing import KeyRing, load_key_ring

CONFIG_FILE_ENV = "VENDING_GATEWAY_CONFIG_FILE"
_config_file: ContextVar[str | None] = ContextVar("gateway_config_file", default=None)


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VENDING_GATEWAY_", extra="forbid")

    data_dir: Path = Path("var/gateway")
    site_name: str = "site"
    gateway_name: str = "gateway"

    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8000, ge=0, le=65535)  # 0 = ephemeral

    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = Field(default=1883, ge=0, le=65535)  # 0 = ephemeral
    external_broker_url: str | None = None  # e.g. mqtt://127.0.0.1:1883; None = embedded amqtt
    gateway_client_id: str = "gateway"
    gateway_mqtt_password: SecretStr | None = None  # generated per start when unset
    session_expiry_s: int = Field(default=3600, gt=0)
    max_mqtt_payload: int = Field(default=4096, gt=0)
    # Largest MQTT packet (fixed header included) the embedded broker reads from a device; a
    # bigger one closes the connection before its body is read. It must hold max_mqtt_payload
    # plus the topic. The gateway's own client gets the second, larger limit.
    mqtt_max_packet_bytes: int = Field(default=8192, ge=1024, le=268_435_455)
    mqtt_gateway_max_packet_bytes: int = Field(default=65536, ge=1024, le=268_435_455)

    cloud_url: str | None = None  # None = standalone, cash only
    enroll_token: SecretStr | None = None
    sync_pull_interval_s: float = Field(default=15.0, gt=0)
    sync_push_batch: int = Field(default=200, gt=0, le=500)
    sync_backoff_max_s: float = Field(default=30.0, gt=0)

    dispense_command_ttl_s: int = Field(default=60, gt=0)
    dispense_resend_s: float = Field(default=10.0, gt=0)
    dispense_give_up_s: float = Field(default=90.0, gt=0)
    order_payment_timeout_s: float = Field(default=300.0, gt=0)
    engine_tick_s: float = Field(default=1.0, gt=0)  # how often housekeeping (expiry) runs
    # The breaker around payment calls to the cloud (contracts.breaker): failures or timeouts in
    # a row that open it, seconds it stays open before one probe, and the per-call timeout.
    payments_breaker_failures: int = Field(default=3, ge=1)
    payments_breaker_recovery_s: float = Field(default=15.0, gt=0)
    payments_call_timeout_s: float = Field(default=5.0, gt=0)

    # Per kiosk API client (its peer address; an IPv6 client counts as its /64): how many unpaid
    # orders it may hold, how many units they may reserve together, and how many orders it may
    # create per minute. One kiosk screen holds one open order at a time, so a real kiosk never
    # meets them; they stop one LAN host from holding a machine's whole stock or flooding the
    # cloud with sandbox payments.
    kiosk_max_open_orders_per_client: int = Field(default=2, gt=0)
    kiosk_max_reserved_units_per_client: int = Field(default=10, gt=0)
    kiosk_orders_per_minute_per_client: int = Field(default=30, gt=0)

    zeroconf_enabled: bool = True

    # Master keys sealing command keys and customer phone numbers in the database
    # (contracts.sealing): "kid:hexkey" entries, the first one active. Inline or a file (a
    # mounted secret); when neither is set, one is generated in data_dir/master_keys (0600).
    master_keys: SecretStr | None = None
    master_keys_file: Path | None = None

    @model_validator(mode="after")
    def _fill_generated(self) -> "GatewaySettings":
        if self.gateway_mqtt_password is None:
            # Only the gateway's own client uses it, and only for this process's lifetime.
            self.gateway_mqtt_password = SecretStr(secrets.token_urlsafe(24))
        if self.dispense_give_up_s < self.dispense_resend_s:
            raise ValueError("dispense_give_up_s must be >= dispense_resend_s")
        if self.dispense_give_up_s <= self.dispense_command_ttl_s:
            # The gateway records "unknown" at give-up and never retries the unit; a command
            # still valid on the device then could run after that and contradict the record.
            raise ValueError("dispense_give_up_s must be > dispense_command_ttl_s")
        return self

    @model_validator(mode="after")
    def _packet_limit_holds_a_payload(self) -> "GatewaySettings":
        # Topic, fixed and variable headers of a device message fit in 512 bytes.
        if self.mqtt_max_packet_bytes < self.max_mqtt_payload + 512:
            raise ValueError("mqtt_max_packet_bytes must be >= max_mqtt_payload + 512")
        return self

    @property
    def mqtt_password(self) -> str:
        assert self.gateway_mqtt_password is not None  # set by the validator
        return self.gateway_mqtt_password.get_secret_value()

    @property
    def db_path(self) -> Path:
        return self.data_dir / "gateway.sqlite3"

    def key_ring(self) -> KeyRing:
        """Raises ``contracts.sealing.KeyConfigError`` when the setting is malformed."""
        inline = self.master_keys.get_secret_value() if self.master_keys else None
        return load_key_ring(
            inline, self.master_keys_file, self.data_dir / "master_keys", allow_generate=True
        )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = _config_file.get() or os.environ.get(CONFIG_FILE_ENV)
        if config_file:
            path = Path(config_file)
            if path.suffix == ".json":
                sources.append(JsonConfigSettingsSource(settings_cls, json_file=path))
            else:
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    @classmethod
    def load(cls, config_file: Path | None = None, **overrides: Any) -> "GatewaySettings":
        """Settings from ``config_file`` (TOML or JSON) and the environment; raises
        ``pydantic.ValidationError`` when invalid, so the process refuses to start."""
        token = _config_file.set(str(config_file) if config_file is not None else None)
        try:
            return cls(**overrides)
        finally:
            _config_file.reset(token)

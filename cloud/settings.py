"""Settings of the cloud process (env prefix ``VENDING_CLOUD_``, optional ``.env``-style file)."""

import ipaddress
import os
import secrets
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from contracts.sealing import KeyRing, load_key_ring

_JWT_SECRET_FILE = "jwt_secret"
_MASTER_KEYS_FILE = "master_keys"


class CloudSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="VENDING_CLOUD_", env_file=None, extra="ignore", validate_default=True
    )

    environment: Literal["development", "production"] = "development"
    database_url: str = "sqlite+aiosqlite:///var/cloud/cloud.db"
    data_dir: Path = Path("var/cloud")

    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)
    sync_host: str = "127.0.0.1"
    sync_port: int = Field(default=8443, ge=0, le=65535)
    # What enrolment hands to gateways; derived from the bound sync address when unset.
    sync_public_url: str | None = None
    server_hostnames: list[str] = Field(default_factory=lambda: ["localhost", "127.0.0.1"])
    # Reverse proxies in front of the API (addresses or networks, e.g. ["10.0.0.0/8"]): from
    # them the client address for login throttling and the audit is read from X-Forwarded-For.
    # Empty: the TCP peer, and the header is ignored (anyone can send it).
    trusted_proxies: list[str] = Field(default_factory=list)

    jwt_secret: SecretStr | None = None
    # Rotating signing keys (``vending-cloud rotate-jwt-key``); defaults to DATA_DIR/jwt_keys.json.
    # Once the file exists it is the key source; ``jwt_secret`` only verifies until it retires.
    jwt_keys_file: Path | None = None
    access_token_ttl_s: int = Field(default=900, gt=0)
    refresh_token_ttl_s: int = Field(default=30 * 24 * 3600, gt=0)
    enrollment_token_ttl_s: int = Field(default=3600, gt=0)
    gateway_cert_ttl_days: int = Field(default=825, gt=0)

    # argon2id cost; tests lower these, production keeps the defaults.
    password_hash_time_cost: int = Field(default=3, ge=1)
    password_hash_memory_cost: int = Field(default=65536, ge=8)  # KiB
    password_hash_parallelism: int = Field(default=4, ge=1)
    # At most this many hashes run at once (threads off the event loop); a caller waits for a
    # slot at most ``password_hash_wait_s`` and then gets 503, so a guessing burst cannot
    # starve everyone else.
    # One hash (itself 4 lanes wide) per process is measured best on 2 cores
    # (docs/benchmarks.md); raise it on bigger machines.
    password_hash_concurrency: int = Field(default=1, ge=1)
    password_hash_wait_s: float = Field(default=10.0, gt=0)

    # Login throttling (docs/cloud-api.md "Login throttling"). After ``*_free_failures`` a key
    # is locked for base * 2^(extra failures) seconds, capped; failures older than the window
    # are forgotten. The account-wide lock is short so nobody can lock the real user out.
    login_failure_window_s: int = Field(default=900, gt=0)
    login_lockout_base_s: float = Field(default=1.0, gt=0)
    login_pair_free_failures: int = Field(default=5, ge=1)
    login_pair_lockout_max_s: int = Field(default=900, gt=0)
    login_address_free_failures: int = Field(default=20, ge=1)
    login_address_lockout_max_s: int = Field(default=900, gt=0)
    login_account_free_failures: int = Field(default=10, ge=1)
    login_account_lockout_max_s: int = Field(default=30, gt=0)
    # A successful login from an address within this many days exempts it from the
    # account-wide lock.
    login_trusted_address_days: int = Field(default=30, ge=0)
    # Every login checks at least this many password hashes (dummies fill up), so a login does
    # not take longer when its address also has an account in another tenant (docs/security.md).
    login_password_checks: int = Field(default=2, ge=1, le=10)

    sandbox_approve_delay_s: float = Field(default=1.0, ge=0)
    # The sandbox provider captures every payment by itself: anyone at a kiosk choosing it gets
    # the goods for nothing. Off unless a test or trial turns it on; when off, sandbox payments
    # are refused (409 provider_not_configured) and gateways stop offering the method.
    sandbox_payments: bool = False
    payment_expiry_s: int = Field(default=900, gt=0)
    # Razorpay (cloud/payments/razorpay.py). The API base is the cloud's, never a tenant's: a
    # tenant-set URL would let anyone with admin rights make the cloud call any address (SSRF).
    # Tests and the demo point it at tools/razorpay_server.
    razorpay_api_url: str = "https://api.razorpay.com"
    razorpay_timeout_s: float = Field(default=10.0, gt=0, le=120)
    # A QR payment still unpaid after this long is polled at the provider (webhooks may be late
    # or lost), at most every ``razorpay_poll_interval_s``, until its close_by plus the grace.
    razorpay_poll_after_s: float = Field(default=20.0, ge=0)
    razorpay_poll_interval_s: float = Field(default=15.0, gt=0)
    razorpay_poll_grace_s: float = Field(default=600.0, ge=0)
    # Closing a QR code of an order that ended unpaid: tries before close_state 'failed'.
    provider_close_attempts: int = Field(default=8, ge=1)
    provider_close_backoff_base_s: float = Field(default=2.0, gt=0)
    provider_close_backoff_max_s: float = Field(default=300.0, gt=0)
    # Each tenant's provider sits behind a circuit breaker (contracts.breaker): after this many
    # failures or timeouts in a row payment creation answers 503 provider_unavailable at once,
    # and after ``provider_breaker_recovery_s`` one probe call is let through.
    provider_breaker_threshold: int = Field(default=3, ge=1)
    provider_breaker_recovery_s: float = Field(default=15.0, gt=0)
    # Where Razorpay reaches this cloud's public listener (webhook URL shown to admins), e.g.
    # https://pay.example.com. Unset: derived from the request that asks for it.
    public_url: str | None = None
    # Refunds (cloud/payments/refunds.py): a provider error is retried with a capped, jittered
    # backoff; after ``refund_max_attempts`` tries the refund waits for an operator
    # (manual_review). A refund the provider accepted is checked again after
    # ``refund_check_interval_s``, then less often (up to ``refund_check_max_s``) until processed.
    refund_max_attempts: int = Field(default=6, ge=1, le=100)
    refund_backoff_base_s: float = Field(default=30.0, gt=0)
    refund_backoff_max_s: float = Field(default=3600.0, gt=0)
    refund_check_interval_s: float = Field(default=60.0, gt=0)
    refund_check_max_s: float = Field(default=3600.0, gt=0)
    # How long a worker holds a refund it is sending before another process may send it again
    # (same idempotency key, so never twice at the provider).
    refund_lease_s: float = Field(default=120.0, gt=0)
    # Background workers wake on in-process notifications and also poll the database, so
    # several cloud processes sharing one database still see each other's work.
    worker_poll_interval_s: float = Field(default=0.5, gt=0)
    channel_poll_interval_s: float = Field(default=1.0, gt=0)
    channel_heartbeat_s: float = Field(default=20.0, gt=0)

    # Master keys sealing command keys and customer phone numbers in the database
    # (contracts.sealing): "kid:hexkey" entries, comma or newline separated, the first one
    # active. Inline, or a file (a mounted Kubernetes secret). In development a key is
    # generated in data_dir/master_keys when neither is set; production requires one.
    master_keys: SecretStr | None = None
    master_keys_file: Path | None = None

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for cidr in value:
            ipaddress.ip_network(cidr.strip(), strict=False)  # ValueError names the bad one
        return value

    @field_validator("razorpay_api_url", "public_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parsed = urlsplit(value)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"{value!r} is not an http(s) URL")
        if parsed.query or parsed.fragment:
            raise ValueError(f"{value!r}: a base URL has no query or fragment")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _production_needs_secret(self) -> "CloudSettings":
        if self.environment == "production" and self.jwt_secret is None and not self.jwt_keys_file:
            raise ValueError(
                "VENDING_CLOUD_JWT_SECRET or VENDING_CLOUD_JWT_KEYS_FILE is required in production"
            )
        # HS256 with a short secret can be brute-forced offline from a single token, and then
        # any tenantId could be forged.
        if self.jwt_secret is not None and len(self.jwt_secret.get_secret_value()) < 32:
            raise ValueError("VENDING_CLOUD_JWT_SECRET must be at least 32 characters")
        return self

    @model_validator(mode="after")
    def _production_needs_master_keys(self) -> "CloudSettings":
        # A generated key would sit in data_dir beside the database it protects.
        if self.environment == "production" and not (self.master_keys or self.master_keys_file):
            raise ValueError(
                "VENDING_CLOUD_MASTER_KEYS or VENDING_CLOUD_MASTER_KEYS_FILE is required in "
                "production"
            )
        return self

    @model_validator(mode="after")
    def _production_razorpay_over_tls(self) -> "CloudSettings":
        # Basic auth carries the tenant's key secret on every call.
        if self.environment == "production" and not self.razorpay_api_url.startswith("https://"):
            raise ValueError("VENDING_CLOUD_RAZORPAY_API_URL must be https in production")
        return self

    @classmethod
    def from_file(cls, path: Path | None) -> "CloudSettings":
        if path is None:
            return cls()
        return cls(_env_file=path)  # type: ignore[call-arg]

    def resolve_jwt_keys_file(self) -> Path:
        return self.jwt_keys_file or self.data_dir / "jwt_keys.json"

    def resolve_jwt_secret(self) -> str:
        """The configured secret, or one generated once and kept in ``data_dir``."""
        if self.jwt_secret is not None:
            return self.jwt_secret.get_secret_value()
        path = self.data_dir / _JWT_SECRET_FILE
        if path.exists():
            kept = path.read_text().strip()
            if len(kept) >= 32:
                return kept
            # Empty or cut short (a crash while it was written): make a new one. Tokens signed
            # with the old one stop working, which is the safe way round.
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        value = secrets.token_urlsafe(48)
        tmp = path.with_suffix(".tmp")
        with open(_open_private(tmp), "w") as fh:
            fh.write(value)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        return value

    def key_ring(self) -> KeyRing:
        """Raises ``contracts.sealing.KeyConfigError`` when missing (production) or malformed."""
        inline = self.master_keys.get_secret_value() if self.master_keys else None
        return load_key_ring(
            inline,
            self.master_keys_file,
            self.data_dir / _MASTER_KEYS_FILE,
            allow_generate=self.environment != "production",
        )


def _open_private(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)

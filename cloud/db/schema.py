"""The cloud's tables (SQLAlchemy Core). Alembic migrations in ``cloud/migrations`` create them;
a test checks that the migrations and this module agree."""

import sqlalchemy as sa

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_name)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

Id = sa.String(36)
Ts = sa.DateTime(timezone=True)

counters = sa.Table(
    "counters",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.BigInteger, nullable=False),
)

tenants = sa.Table(
    "tenants",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("name", sa.String(200), nullable=False, unique=True),
    sa.Column("created_at", Ts, nullable=False),
)

users = sa.Table(
    "users",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("tenant_id", Id, sa.ForeignKey("tenants.id"), nullable=False, index=True),
    # Unique per tenant, not globally: a global constraint told another tenant's admin which
    # addresses exist (409 on create). Login finds the account by e-mail and password.
    sa.Column("email", sa.String(320), nullable=False, index=True),
    sa.Column("password_hash", sa.String(255), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("active", sa.Boolean, nullable=False),
    sa.Column("created_at", Ts, nullable=False),
    # Bumped when every access token of the user must die (disable, delete, password reset).
    sa.Column("token_version", sa.Integer, nullable=False, server_default="0"),
    # Set by an admin password reset: the temporary password only opens change-password.
    sa.Column("must_change_password", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("password_expires_at", Ts, nullable=True),
    sa.UniqueConstraint("tenant_id", "email", name="uq_users_tenant_email"),
)

refresh_tokens = sa.Table(
    "refresh_tokens",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("user_id", Id, sa.ForeignKey("users.id"), nullable=False, index=True),
    sa.Column("family_id", Id, nullable=False, index=True),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("expires_at", Ts, nullable=False),
    sa.Column("revoked_at", Ts, nullable=True),
    sa.Column("replaced_by", Id, nullable=True),
    sa.Column("created_at", Ts, nullable=False),
)

# One row per login session (a refresh-token family). Access tokens carry its id, and every
# authenticated request checks it: logout or a password change ends the access token too.
user_sessions = sa.Table(
    "user_sessions",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("user_id", Id, sa.ForeignKey("users.id"), nullable=False, index=True),
    sa.Column("created_at", Ts, nullable=False),
    sa.Column("revoked_at", Ts, nullable=True),
)

# Login throttling state, shared by every API process: one row per key (account+address,
# address, account).
login_throttle = sa.Table(
    "login_throttle",
    metadata,
    sa.Column("key", sa.String(400), primary_key=True),
    sa.Column("failures", sa.Integer, nullable=False),
    sa.Column("window_started_at", Ts, nullable=False),
    sa.Column("locked_until", Ts, nullable=True),
    sa.Column("updated_at", Ts, nullable=False, index=True),
)

# Every login attempt, successful or not (never the password).
login_audit = sa.Table(
    "login_audit",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("tenant_id", Id, nullable=True),
    sa.Column("user_id", Id, nullable=True),
    sa.Column("email", sa.String(320), nullable=False),
    sa.Column("client_address", sa.String(64), nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("reason", sa.String(64), nullable=False),
    sa.Column("created_at", Ts, nullable=False),
    sa.Index("ix_login_audit_tenant_created", "tenant_id", "created_at"),
    sa.Index("ix_login_audit_email_address", "email", "client_address", "outcome"),
    sa.Index("ix_login_audit_address_created", "client_address", "created_at"),
)

sites = sa.Table(
    "sites",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("tenant_id", Id, sa.ForeignKey("tenants.id"), nullable=False, index=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("address", sa.String(500), nullable=True),
    sa.Column("created_at", Ts, nullable=False),
    sa.UniqueConstraint("tenant_id", "name", name="uq_sites_tenant_name"),
)

enrollment_tokens = sa.Table(
    "enrollment_tokens",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("tenant_id", Id, sa.ForeignKey("tenants.id"), nullable=False),
    sa.Column("site_id", Id, sa.ForeignKey("sites.id"), nullable=False, index=True),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("expires_at", Ts, nullable=False),
    sa.Column("used_at", Ts, nullable=True),
    sa.Column("gateway_id", Id, nullable=True),
    sa.Column("created_by", Id, nullable=True),
    sa.Column("created_at", Ts, nullable=False),
)

gateways = sa.Table(
    "gateways",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("tenant_id", Id, sa.ForeignKey("tenants.id"), nullable=False, index=True),
    sa.Column("site_id", Id, sa.ForeignKey("sites.id"), nullable=False, index=True),
    sa.Column("name", sa.String(200), nullable=True),
    sa.Column("cert_serial", sa.String(64), nullable=False, unique=True),
    sa.Column("cert_not_after", Ts, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("last_seen_at", Ts, nullable=True),
    sa.Column("created_at", Ts, nullable=False),
)

machines = sa.Table(
    "machines",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("tenant_id", Id, sa.ForeignKey("tenants.id"), nullable=False, index=True),
    sa.Column("site_id", Id, sa.ForeignKey("sites.id"), nullable=False, index=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("location", sa.String(500), nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("mqtt_secret_hash", sa.String(255), nullable=False),
    # A sealed value (cloud.db.sealed), not the key itself.
    sa.Column("command_key", sa.String(255), nullable=False),
    sa.Column("config", sa.JSON, nullable=False),
    sa.Column("version", sa.BigInteger, nullable=False, index=True),
    sa.Column("created_at", Ts, nullable=False),
    sa.Column("updated_at", Ts, nullable=False),
    sa.UniqueConstraint("site_id", "name", name="uq_machines_site_name"),
)

catalog_items = sa.Table(
    "catalog_items",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("machine_id", Id, sa.ForeignKey("machines.id"), nullable=False, index=True),
    sa.Column("slot", sa.String(8), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("category", sa.String(100), nullable=True),
    sa.Column("price", sa.BigInteger, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("quantity", sa.Integer, nullable=False),
    sa.Column("capacity", sa.Integer, nullable=True),
    sa.Column("stock_rev", sa.Integer, nullable=False),
    sa.Column("image_url", sa.String(1000), nullable=True),
    sa.Column("active", sa.Boolean, nullable=False),
    sa.Column("updated_at", Ts, nullable=False),
    # The operator's switch (bumping enable_rev makes the gateway adopt ``enabled``) and the
    # gateway's last reported slot state (slot.state events).
    sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("enable_rev", sa.Integer, nullable=False, server_default="0"),
    sa.Column("disabled_reason", sa.String(32), nullable=True),
    sa.Column("disabled_at", Ts, nullable=True),
    sa.Column("consecutive_failures", sa.Integer, nullable=False, server_default="0"),
    sa.UniqueConstraint("machine_id", "slot", name="uq_catalog_items_machine_slot"),
)

orders = sa.Table(
    "orders",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("tenant_id", Id, sa.ForeignKey("tenants.id"), nullable=False, index=True),
    sa.Column("site_id", Id, sa.ForeignKey("sites.id"), nullable=False),
    sa.Column("machine_id", Id, sa.ForeignKey("machines.id"), nullable=False, index=True),
    sa.Column("gateway_id", Id, nullable=False),
    sa.Column("status", sa.String(32), nullable=False, index=True),
    sa.Column("payment_method", sa.String(16), nullable=False),
    sa.Column("total_amount", sa.BigInteger, nullable=False),
    sa.Column("paid_amount", sa.BigInteger, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("payment_id", sa.String(64), nullable=True),
    sa.Column("customer_name", sa.String(200), nullable=True),
    sa.Column("customer_phone", sa.String(255), nullable=True),  # sealed (cloud.db.sealed)
    sa.Column("refund_amount", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("credit_amount", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("created_at", Ts, nullable=False),
    sa.Column("updated_at", Ts, nullable=False),
    sa.Column("synced_at", Ts, nullable=False),
)

order_items = sa.Table(
    "order_items",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("order_id", sa.String(64), sa.ForeignKey("orders.id"), nullable=False, index=True),
    sa.Column("catalog_item_id", sa.String(64), nullable=False),
    sa.Column("slot", sa.String(8), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("unit_price", sa.BigInteger, nullable=False),
    sa.Column("quantity", sa.Integer, nullable=False),
    sa.Column("dispensed", sa.Integer, nullable=False),
    sa.Column("failed", sa.Integer, nullable=False),
    sa.Column("unknown", sa.Integer, nullable=False),
    sa.Column("dispense_status", sa.String(16), nullable=False),
)

payments = sa.Table(
    "payments",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("tenant_id", Id, sa.ForeignKey("tenants.id"), nullable=False, index=True),
    sa.Column("site_id", Id, sa.ForeignKey("sites.id"), nullable=False),
    sa.Column("machine_id", Id, sa.ForeignKey("machines.id"), nullable=False),
    sa.Column("gateway_id", Id, nullable=False),
    sa.Column("order_id", sa.String(64), nullable=False, index=True),
    sa.Column("provider", sa.String(32), nullable=False),
    sa.Column("provider_ref", sa.String(128), nullable=True),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("idempotency_key", sa.String(128), nullable=False, unique=True),
    sa.Column("qr_payload", sa.String(1000), nullable=True),
    sa.Column("approve_at", Ts, nullable=True, index=True),
    sa.Column("expires_at", Ts, nullable=True),
    sa.Column("captured_at", Ts, nullable=True),
    sa.Column("created_at", Ts, nullable=False),
    sa.Column("updated_at", Ts, nullable=False),
    # The provider's payment (Razorpay pay_...) that paid it, once one did.
    sa.Column("provider_payment_id", sa.String(64), nullable=True, index=True),
    # Closing the provider's QR code when the order ends unpaid: pending -> closed | failed.
    sa.Column("close_state", sa.String(16), nullable=True, index=True),
    sa.Column("closed_at", Ts, nullable=True),
    # Last time the cloud asked the provider for this payment (webhooks late or lost).
    sa.Column("polled_at", Ts, nullable=True),
    sa.Column("failure_reason", sa.String(200), nullable=True),
)

sync_events = sa.Table(
    "sync_events",
    metadata,
    sa.Column("event_id", sa.String(64), primary_key=True),
    sa.Column("gateway_id", Id, sa.ForeignKey("gateways.id"), nullable=False, index=True),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("type", sa.String(32), nullable=False),
    sa.Column("occurred_at", Ts, nullable=False),
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Column("received_at", Ts, nullable=False),
)

gateway_sync_state = sa.Table(
    "gateway_sync_state",
    metadata,
    sa.Column("gateway_id", Id, sa.ForeignKey("gateways.id"), primary_key=True),
    sa.Column("ack_seq", sa.BigInteger, nullable=False),
    sa.Column("updated_at", Ts, nullable=False),
)

dispense_records = sa.Table(
    "dispense_records",
    metadata,
    sa.Column("cmd_id", sa.String(64), primary_key=True),
    sa.Column("tenant_id", Id, sa.ForeignKey("tenants.id"), nullable=False),
    sa.Column("machine_id", Id, sa.ForeignKey("machines.id"), nullable=False),
    sa.Column("order_id", sa.String(64), nullable=False, index=True),
    sa.Column("item_id", sa.String(64), nullable=False),
    sa.Column("slot", sa.String(8), nullable=False),
    sa.Column("result", sa.String(16), nullable=False),
    sa.Column("reason", sa.String(500), nullable=True),
    sa.Column("device_ts", sa.BigInteger, nullable=True),
    sa.Column("received_at", Ts, nullable=False),
)

cash_credits = sa.Table(
    "cash_credits",
    metadata,
    sa.Column("credit_id", sa.String(64), primary_key=True),
    sa.Column("tenant_id", Id, sa.ForeignKey("tenants.id"), nullable=False),
    sa.Column("machine_id", Id, sa.ForeignKey("machines.id"), nullable=False, index=True),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("order_id", sa.String(64), nullable=True),
    sa.Column("received_at", Ts, nullable=False),
)

channel_messages = sa.Table(
    "channel_messages",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("gateway_id", Id, sa.ForeignKey("gateways.id"), nullable=False),
    sa.Column("type", sa.String(32), nullable=False),
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Column("created_at", Ts, nullable=False),
    sa.Column("acked_at", Ts, nullable=True),
    sa.Index("ix_channel_messages_pending", "gateway_id", "acked_at"),
)

# One row per master key id that has sealed values in this database: a known text sealed under
# that key, opened at every start so a missing or wrong master key stops the cloud at once
# (cloud.db.sealed).
sealing_keys = sa.Table(
    "sealing_keys",
    metadata,
    sa.Column("kid", sa.String(32), primary_key=True),
    sa.Column("canary", sa.String(255), nullable=False),
    sa.Column("created_at", Ts, nullable=False),
)

# One-time claim codes: the technician's tool encrypts the device bundle with a key derived from
# a code the cloud never sees; the cloud keeps the ciphertext and the code's SHA-256 until the
# claim is redeemed once or expires.
machine_claims = sa.Table(
    "machine_claims",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("tenant_id", Id, sa.ForeignKey("tenants.id"), nullable=False, index=True),
    sa.Column("machine_id", Id, sa.ForeignKey("machines.id"), nullable=False, index=True),
    sa.Column("code_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("ciphertext", sa.Text, nullable=True),
    sa.Column("nonce", sa.String(32), nullable=False),
    sa.Column("expires_at", Ts, nullable=False),
    sa.Column("redeemed_at", Ts, nullable=True),
    sa.Column("created_by", Id, nullable=True),
    sa.Column("created_at", Ts, nullable=False),
)

# Pushed events the cloud could not accept (contract violation) or apply (database refused a
# value, a bug). Kept aside so the rest of the gateway's batch flows on; listed and retried by
# the tenant's operators. ``payload`` is the event as received (JSON text, clipped to
# ``cloud.sync.dead_letters.MAX_RAW``), ``state`` open or resolved.
sync_dead_letters = sa.Table(
    "sync_dead_letters",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("tenant_id", Id, sa.ForeignKey("tenants.id"), nullable=False),
    sa.Column("site_id", Id, sa.ForeignKey("sites.id"), nullable=False),
    sa.Column("gateway_id", Id, sa.ForeignKey("gateways.id"), nullable=False),
    sa.Column("event_id", sa.String(64), nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("payload_truncated", sa.Boolean, nullable=False),
    sa.Column("error_code", sa.String(64), nullable=False),
    sa.Column("error_message", sa.String(1000), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("first_seen_at", Ts, nullable=False),
    sa.Column("last_seen_at", Ts, nullable=False),
    sa.Column("resolved_at", Ts, nullable=True),
    sa.UniqueConstraint("gateway_id", "event_id", name="uq_sync_dead_letters_gateway_event"),
    sa.Index("ix_sync_dead_letters_tenant_state", "tenant_id", "state", "last_seen_at"),
)


# --- money: providers, webhooks, refunds, machine credit (migration 0006) ---------------------

# The tenant's rules for money decided at the gateway (contracts.sync.MoneyPolicy).
tenant_money_policies = sa.Table(
    "tenant_money_policies",
    metadata,
    sa.Column("tenant_id", Id, sa.ForeignKey("tenants.id"), primary_key=True),
    sa.Column("unknown_outcome", sa.String(16), nullable=False),
    sa.Column("disable_slot_after_failures", sa.Integer, nullable=False),
    sa.Column("updated_at", Ts, nullable=False),
)

# One electronic payment provider per tenant. The secrets are sealed (cloud.db.sealed) and
# never returned by the API.
payment_providers = sa.Table(
    "payment_providers",
    metadata,
    sa.Column("tenant_id", Id, sa.ForeignKey("tenants.id"), primary_key=True),
    sa.Column("provider", sa.String(32), nullable=False),
    sa.Column("key_id", sa.String(64), nullable=False),
    sa.Column("key_secret", sa.String(512), nullable=False),
    sa.Column("webhook_secret", sa.String(512), nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("created_at", Ts, nullable=False),
    sa.Column("updated_at", Ts, nullable=False),
    sa.Column("updated_by", Id, nullable=True),
)

# Every verified provider webhook, once (the provider's event id), recorded in the transaction
# that applies it: the 2xx goes out only after this row is committed.
provider_events = sa.Table(
    "provider_events",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("tenant_id", Id, sa.ForeignKey("tenants.id"), nullable=False, index=True),
    sa.Column("provider", sa.String(32), nullable=False),
    sa.Column("event_type", sa.String(64), nullable=False),
    sa.Column("entity_id", sa.String(64), nullable=True, index=True),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("outcome", sa.String(32), nullable=False),
    sa.Column("note", sa.String(500), nullable=True),
    sa.Column("received_at", Ts, nullable=False),
)

# What the provider says it captured (from webhooks and polls): reconciliation matches each
# row to exactly one order.
provider_payments = sa.Table(
    "provider_payments",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),  # Razorpay pay_...
    sa.Column("tenant_id", Id, sa.ForeignKey("tenants.id"), nullable=False, index=True),
    sa.Column("provider", sa.String(32), nullable=False),
    sa.Column("payment_id", Id, nullable=True, index=True),  # ours, when it matched one
    sa.Column("qr_code_id", sa.String(64), nullable=True, index=True),
    sa.Column("order_id", sa.String(64), nullable=True, index=True),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("method", sa.String(32), nullable=True),
    sa.Column("amount_refunded", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("source", sa.String(16), nullable=False),  # webhook | poll
    sa.Column("captured_at", Ts, nullable=True),
    sa.Column("first_seen_at", Ts, nullable=False),
    sa.Column("updated_at", Ts, nullable=False),
)

# Refunds of electronic money (contracts.orders.RefundStatus). ``id`` is the deterministic
# refund id (contracts.sync.RefundRequest) and the provider's idempotency key.
refunds = sa.Table(
    "refunds",
    metadata,
    sa.Column("id", sa.String(100), primary_key=True),
    sa.Column("tenant_id", Id, sa.ForeignKey("tenants.id"), nullable=False, index=True),
    sa.Column("site_id", Id, sa.ForeignKey("sites.id"), nullable=True),
    sa.Column("machine_id", Id, sa.ForeignKey("machines.id"), nullable=True),
    sa.Column("order_id", sa.String(64), nullable=True, index=True),
    sa.Column("payment_id", Id, nullable=True, index=True),
    sa.Column("provider", sa.String(32), nullable=False),
    sa.Column("provider_payment_id", sa.String(64), nullable=True),
    sa.Column("provider_refund_id", sa.String(64), nullable=True),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("reason", sa.String(16), nullable=False),
    sa.Column("source", sa.String(16), nullable=False),  # gateway | cloud
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("next_attempt_at", Ts, nullable=True, index=True),
    sa.Column("last_error", sa.String(500), nullable=True),
    sa.Column("note", sa.String(1000), nullable=True),
    sa.Column("resolved_by", Id, nullable=True),
    sa.Column("created_at", Ts, nullable=False),
    sa.Column("updated_at", Ts, nullable=False),
    sa.Column("refunded_at", Ts, nullable=True),
    sa.Index("ix_refunds_tenant_status", "tenant_id", "status", "created_at"),
)

# Moves of each machine's free cash credit, as the gateway made them (contracts.sync.CreditEntry).
credit_entries = sa.Table(
    "credit_entries",
    metadata,
    sa.Column("entry_id", sa.String(64), primary_key=True),
    sa.Column("tenant_id", Id, sa.ForeignKey("tenants.id"), nullable=False, index=True),
    sa.Column("machine_id", Id, sa.ForeignKey("machines.id"), nullable=False, index=True),
    sa.Column("order_id", sa.String(64), nullable=True),
    sa.Column("credit_id", sa.String(64), nullable=True),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("delta", sa.BigInteger, nullable=False),
    sa.Column("balance", sa.BigInteger, nullable=False),
    sa.Column("reason", sa.String(32), nullable=False),
    sa.Column("occurred_at", Ts, nullable=False),
    sa.Column("received_at", Ts, nullable=False),
)

# What operators did to money and machines by hand (refund retried or resolved, slot enabled,
# provider credentials changed), with who and why.
operator_audit = sa.Table(
    "operator_audit",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("tenant_id", Id, sa.ForeignKey("tenants.id"), nullable=False),
    sa.Column("user_id", Id, nullable=True),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("target_type", sa.String(32), nullable=False),
    sa.Column("target_id", sa.String(100), nullable=False),
    sa.Column("note", sa.String(1000), nullable=True),
    sa.Column("created_at", Ts, nullable=False),
    sa.Index("ix_operator_audit_tenant_created", "tenant_id", "created_at"),
)

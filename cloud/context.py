"""What every handler and worker shares: settings, the database engine and the services."""

import weakref
from dataclasses import dataclass

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from cloud.auth.passwords import Passwords
from cloud.auth.tokens import AccessTokens
from cloud.payments.provider import PaymentProvider
from cloud.payments.registry import ProviderRegistry
from cloud.pki import CertificateAuthority
from cloud.settings import CloudSettings
from cloud.sync.hub import ChannelHub


@dataclass
class CloudContext:
    settings: CloudSettings
    engine: AsyncEngine
    passwords: Passwords
    access_tokens: AccessTokens
    ca: CertificateAuthority
    hub: ChannelHub
    # The sandbox provider (payment method "sandbox").
    payments: PaymentProvider
    # Each tenant's provider for payment method "upi", behind its circuit breaker
    # (cloud.payments.registry.provider_for).
    providers: ProviderRegistry
    # Set once the sync listener is bound (see CloudServer); enrolment hands it to gateways.
    sync_url: str


CONTEXT = web.AppKey("cloud_context", CloudContext)
SETTINGS = web.AppKey("cloud_settings", CloudSettings)
# Open push-channel sockets of a sync app, closed at shutdown.
CHANNELS: web.AppKey[weakref.WeakSet[web.WebSocketResponse]] = web.AppKey("channels")

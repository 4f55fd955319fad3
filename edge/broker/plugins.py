"""amqtt plugins: device authentication against the store, and the topic ACL.

amqtt builds plugins itself from their dotted names; the broker wrapper then hands each one the
``BrokerAuthority`` (``bind``) before the broker starts listening, and until then they refuse.
"""

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from amqtt.contexts import Action, BaseContext
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session

from contracts.credentials import CredentialFormatError, verify_secret
from edge.broker import acl

log = logging.getLogger(__name__)

SecretLookup = Callable[[str], Awaitable[str | None]]
PBKDF2_CONCURRENCY = 2
# A refusal of each kind is logged at most this often per client address (or machine); the
# metrics count every one. Anyone on the LAN can cause refusals as fast as they can connect.
REFUSAL_LOG_INTERVAL_S = 60.0
_REFUSAL_LOG_MAX = 4096
# PBKDF2 checks one client address may have waiting or running at once. A device has one
# connection; a host flooding wrong passwords would otherwise queue hundreds of checks, and
# every uncached login (each device after a gateway restart) would wait behind all of them,
# past the firmware's 10 s CONNACK timeout.
PBKDF2_PER_ADDRESS = 2


class RefusalLog:
    """Logs a refusal at most once per ``REFUSAL_LOG_INTERVAL_S`` per key. Unthrottled, a host
    with no credentials wrote a few hundred bytes of log per refused CONNECT (tens of GB a day
    at the rate one host reaches), enough to fill the gateway's disk."""

    def __init__(self, interval_s: float = REFUSAL_LOG_INTERVAL_S) -> None:
        self._interval_s = interval_s
        self._last: dict[tuple[str, ...], float] = {}

    def __call__(self, key: tuple[str, ...], level: int, message: str, *args: object) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._interval_s:
            return
        if len(self._last) >= _REFUSAL_LOG_MAX:
            self._last.clear()
        self._last[key] = now
        log.log(level, message + " (such refusals logged at most every %.0fs)",
                *args, self._interval_s)  # fmt: skip


@dataclass
class BrokerAuthority:
    gateway_client_id: str
    gateway_password: str
    secret_hash: SecretLookup  # machine id -> stored hash of an ACTIVE machine, or None

    def __post_init__(self) -> None:
        # A successful PBKDF2 check is remembered (by a digest of the password and the stored
        # hash) so that reconnect storms do not cost a PBKDF2 run each.
        self._verified: set[tuple[str, bytes, str]] = set()
        # The stored hash each machine's current session logged in against: a session outlives
        # neither a decommission nor a credential rotation.
        self._session_hash: dict[str, str] = {}
        # Wrong passwords are never cached, so a storm of refused CONNECTs costs a PBKDF2 run
        # each: at most this many run at once, leaving the rest of the gateway its CPU and
        # the default thread pool.
        self._pbkdf2_slots = asyncio.Semaphore(PBKDF2_CONCURRENCY)
        self._pbkdf2_by_address: dict[str, int] = {}
        # A check under way, by the same key as ``_verified``: a device that gave up waiting
        # for its CONNACK and connects again (a reconnect storm queues checks for longer than
        # the firmware's 10 s timeout) waits for the same check instead of queueing a second
        # PBKDF2 run, which had made the queue grow faster than it drained.
        self._checking: dict[tuple[str, bytes, str], asyncio.Task[bool]] = {}
        self.refusal_log = RefusalLog()

    def is_gateway(self, session: Session) -> bool:
        return session.client_id == self.gateway_client_id and (
            session.username == self.gateway_client_id
        )

    async def authenticate(self, session: Session) -> bool:
        username, password = session.username, session.password or ""
        if not username or not session.client_id:
            return False
        if username == self.gateway_client_id:
            return session.client_id == username and hmac.compare_digest(
                password.encode(), self.gateway_password.encode()
            )
        address = session.remote_address or ""
        if session.client_id != username:
            self.refusal_log(("client_id", address), logging.INFO,
                             "refused %s from %s: client id must equal the machine id",
                             username, address)  # fmt: skip
            return False
        stored = await self.secret_hash(username)
        if stored is None:
            self.refusal_log(("unknown", address), logging.INFO,
                             "refused %s from %s: unknown or inactive machine",
                             username, address)  # fmt: skip
            return False
        key = (username, hashlib.sha256(password.encode()).digest(), stored)
        if key in self._verified:
            self._session_hash[username] = stored
            return True
        checking = self._checking.get(key)
        if checking is None:
            pending = self._pbkdf2_by_address.get(address, 0)
            if pending >= PBKDF2_PER_ADDRESS:
                self.refusal_log(("busy", address), logging.INFO,
                                 "refused %s: %s has too many logins being checked",
                                 username, address)  # fmt: skip
                return False
            self._pbkdf2_by_address[address] = pending + 1
            checking = asyncio.create_task(self._check(key, password, address))
            self._checking[key] = checking
        # Shielded: the connection that started the check may go away; others may wait on it.
        ok = await asyncio.shield(checking)
        if ok:
            self._session_hash[username] = stored
        else:
            self.refusal_log(("password", address), logging.INFO,
                             "refused %s from %s: wrong password", username, address)  # fmt: skip
        return ok

    async def _check(self, key: tuple[str, bytes, str], password: str, address: str) -> bool:
        username, _, stored = key
        try:
            async with self._pbkdf2_slots:
                ok = await asyncio.to_thread(verify_secret, password, stored)
        except CredentialFormatError:
            log.warning("machine %s has a malformed secret hash", username)
            return False
        finally:
            del self._checking[key]
            left = self._pbkdf2_by_address[address] - 1
            if left:
                self._pbkdf2_by_address[address] = left
            else:
                del self._pbkdf2_by_address[address]
        if ok:
            self._verified.add(key)
        return ok

    async def still_authorised(self, session: Session) -> bool:
        """False once the machine behind a device session was decommissioned or got new
        credentials after that session logged in."""
        if self.is_gateway(session):
            return True
        machine_id = session.username or ""
        login_hash = self._session_hash.get(machine_id)
        return login_hash is not None and await self.secret_hash(machine_id) == login_hash

    def will_allowed(self, session: Session) -> bool:
        """The CONNECT's last will, checked by ``HardenedBroker`` after authentication and again
        before the will is published (amqtt itself publishes wills unchecked)."""
        if not session.will_flag:
            return True
        topic_name = session.will_topic or ""
        if self.is_gateway(session):
            return True
        machine_id = session.username
        if not machine_id or session.client_id != machine_id:
            return False
        if not acl.device_may_will(machine_id, topic_name):
            return False
        return not session.will_retain or acl.device_may_retain(machine_id, topic_name)

    def may_retain(self, session: Session, topic_name: str) -> bool:
        if self.is_gateway(session):
            return True
        machine_id = session.username
        if not machine_id or session.client_id != machine_id:
            return False
        return acl.device_may_retain(machine_id, topic_name)

    def allowed(self, session: Session, topic_name: str, action: Action) -> bool:
        if self.is_gateway(session):
            return True
        machine_id = session.username
        if not machine_id or session.client_id != machine_id:
            return False
        if action == Action.PUBLISH:
            return acl.device_may_publish(machine_id, topic_name)
        return acl.device_may_subscribe(machine_id, topic_name)


class DeviceAuthPlugin(BaseAuthPlugin):
    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)
        self.authority: BrokerAuthority | None = None

    def bind(self, authority: BrokerAuthority) -> None:
        self.authority = authority

    async def authenticate(self, *, session: Session) -> bool | None:
        if self.authority is None:
            return False
        try:
            return await self.authority.authenticate(session)
        except Exception:
            log.exception("authentication failed unexpectedly")
            return False


class DeviceTopicPlugin(BaseTopicPlugin):
    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)
        self.authority: BrokerAuthority | None = None

    def bind(self, authority: BrokerAuthority) -> None:
        self.authority = authority

    async def topic_filtering(
        self,
        *,
        session: Session | None = None,
        topic: str | None = None,
        action: Action | None = None,
    ) -> bool | None:
        if self.authority is None or session is None or topic is None or action is None:
            return False
        allowed = self.authority.allowed(session, topic, action)
        if allowed and action != Action.RECEIVE:
            allowed = await self.authority.still_authorised(session)
            if not allowed:
                log.warning("refused %s: its machine is no longer active with these credentials",
                            session.client_id)  # fmt: skip
        if not allowed and action != Action.RECEIVE:
            self.authority.refusal_log(
                ("acl", session.client_id or "", action.value), logging.INFO,
                "ACL refused %s %s on %r", session.client_id, action.value, topic,
            )  # fmt: skip
        return allowed

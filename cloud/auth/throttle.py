"""Login throttling and the login audit log, both in the database so every API replica shares
them (SQLite and PostgreSQL alike).

Three keys count failures inside a sliding window:

- ``pair``: one account from one client address. The main brake: a guesser at one address gets
  a few free tries, then waits 1 s, 2 s, 4 s ... up to 15 minutes between tries.
- ``addr``: one client address across all accounts (password spraying).
- ``acct``: one account across all addresses (a guesser with many addresses). Its lock is short
  (30 s at most), and while it holds, an address that logged in successfully before may still
  log in to the accounts it logged in to (only their passwords are checked), so an attacker
  elsewhere cannot keep the real user out.

An attempt is counted as a failure *before* the password is checked, and a success takes back
only its own count, so a burst of concurrent guesses cannot all slip past the check.

Accounts are per tenant, so one e-mail may name accounts in several tenants, and the ``pair``
and ``acct`` keys are the e-mail's. Whoever holds one of those accounts (e.g. another tenant's
admin who created it) must not be able to lift the brake on the others: their successes neither
clear the e-mail's counts nor make an address trusted for any account but their own.
"""

import ipaddress
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from math import ceil

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from cloud.db import schema as t
from cloud.db.times import as_utc, utcnow
from cloud.errors import TooManyRequests
from cloud.settings import CloudSettings


def source(address: str) -> str:
    """Who an address's failures count against: the address, or for IPv6 its /64, since one
    client (a home line, a server) holds a whole /64 and could otherwise take fresh free tries
    from each of its 2**64 addresses. The audit keeps the full address."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is None:
        return str(ipaddress.IPv6Network((parsed, 64), strict=False))
    return address


@dataclass(frozen=True)
class Limit:
    key: str
    free: int
    cap_s: int


@dataclass(frozen=True)
class Reservation:
    """A counted attempt. ``only``: the account-wide lock holds, but the address logged in to
    these accounts before, so only their passwords may be checked; anything else is refused
    like the lock (``refusal``)."""

    only: frozenset[str] | None = None
    retry_after_s: int = 1

    def admits(self, user_id: str) -> bool:
        return self.only is None or user_id in self.only

    def refusal(self) -> TooManyRequests:
        return TooManyRequests(
            "too many failed logins; try again later", retry_after_s=self.retry_after_s
        )


@dataclass(frozen=True)
class Throttle:
    window_s: int
    base_s: float
    pair_free: int
    pair_cap_s: int
    address_free: int
    address_cap_s: int
    account_free: int
    account_cap_s: int
    trusted_days: int

    @classmethod
    def from_settings(cls, s: CloudSettings) -> "Throttle":
        return cls(
            window_s=s.login_failure_window_s,
            base_s=s.login_lockout_base_s,
            pair_free=s.login_pair_free_failures,
            pair_cap_s=s.login_pair_lockout_max_s,
            address_free=s.login_address_free_failures,
            address_cap_s=s.login_address_lockout_max_s,
            account_free=s.login_account_free_failures,
            account_cap_s=s.login_account_lockout_max_s,
            trusted_days=s.login_trusted_address_days,
        )

    def limits(self, email: str, address: str) -> list[Limit]:
        return [
            Limit(f"pair:{source(address)}:{email}", self.pair_free, self.pair_cap_s),
            Limit(f"addr:{source(address)}", self.address_free, self.address_cap_s),
            Limit(f"acct:{email}", self.account_free, self.account_cap_s),
        ]

    def lock_for(self, failures: int, limit: Limit) -> float | None:
        if failures < limit.free:
            return None
        # Bounded exponent: 2**40 s is already far past any cap.
        return min(self.base_s * 2 ** min(failures - limit.free, 40), limit.cap_s)

    async def trusted(self, conn: AsyncConnection, email: str, address: str) -> frozenset[str]:
        """The accounts (user ids) with this e-mail that logged in from this address lately:
        per account, since another tenant's account with the same e-mail is someone else's."""
        if self.trusted_days <= 0:
            return frozenset()
        since = utcnow() - timedelta(days=self.trusted_days)
        rows = await conn.execute(
            sa.select(t.login_audit.c.user_id)
            .where(
                t.login_audit.c.email == email,
                t.login_audit.c.client_address == address[:64],
                t.login_audit.c.outcome == "success",
                t.login_audit.c.user_id.is_not(None),
                t.login_audit.c.created_at >= since,
            )
            .distinct()
            .limit(10)
        )
        return frozenset(str(row.user_id) for row in rows)

    async def reserve(self, conn: AsyncConnection, email: str, address: str) -> Reservation:
        """Refuses with 429 while a key is locked (but see ``Reservation.only``); otherwise
        counts this attempt as a failure on every key (``forgive`` takes it back on success).
        Call inside a transaction."""
        now = utcnow()
        limits = self.limits(email, address)
        keys = [limit.key for limit in limits]
        await _ensure_rows(conn, keys, now)
        rows = {
            row.key: row
            for row in await conn.execute(
                sa.select(t.login_throttle)
                .where(t.login_throttle.c.key.in_(keys))
                .order_by(t.login_throttle.c.key)
                .with_for_update()
            )
        }
        waits = {
            key: (as_utc(row.locked_until) - now).total_seconds()
            for key, row in rows.items()
            if row.locked_until is not None and as_utc(row.locked_until) > now
        }
        reservation = Reservation()
        if waits:
            reservation = Reservation(frozenset(), retry_after_s=max(1, ceil(max(waits.values()))))
            if all(key.startswith("acct:") for key in waits):
                # Only the account-wide lock: the real user's own address still gets in.
                reservation = replace(reservation, only=await self.trusted(conn, email, address))
            if not reservation.only:
                raise reservation.refusal()
        window = timedelta(seconds=self.window_s)
        for limit in limits:
            row = rows[limit.key]
            fresh = as_utc(row.updated_at) < now - window or row.failures == 0
            failures = 1 if fresh else row.failures + 1
            lock = self.lock_for(failures, limit)
            await conn.execute(
                t.login_throttle.update()
                .where(t.login_throttle.c.key == limit.key)
                .values(
                    failures=failures,
                    window_started_at=now if fresh else row.window_started_at,
                    locked_until=now + timedelta(seconds=lock) if lock is not None else None,
                    updated_at=now,
                )
            )
        return reservation

    async def forgive(self, conn: AsyncConnection, email: str, address: str) -> None:
        """A successful login takes back this attempt's count on every key, and only that: the
        e-mail may name other tenants' accounts too, and one of them logging in says nothing
        about guesses at the others (nor does one account guessed right say anything about the
        others an address tried); many users behind one NAT logging in never lock it."""
        failures = t.login_throttle.c.failures
        # In key order, as ``reserve`` locks them, so the two cannot deadlock.
        for key, free in (
            (f"acct:{email}", self.account_free),
            (f"addr:{source(address)}", self.address_free),
            (f"pair:{source(address)}:{email}", self.pair_free),
        ):
            await conn.execute(
                t.login_throttle.update()
                .where(t.login_throttle.c.key == key, failures > 0)
                .values(
                    failures=failures - 1,
                    locked_until=sa.case(
                        (failures - 1 < free, None), else_=t.login_throttle.c.locked_until
                    ),
                )
            )
        await delete_stale_rows(conn, self.window_s, utcnow())


async def delete_stale_rows(conn: AsyncConnection, window_s: int, now: datetime) -> int:
    """Drops keys whose failures have left the window and that hold no lock; returns how many."""
    result = await conn.execute(
        t.login_throttle.delete().where(
            t.login_throttle.c.updated_at < now - timedelta(seconds=window_s),
            sa.or_(
                t.login_throttle.c.locked_until.is_(None),
                t.login_throttle.c.locked_until < now,
            ),
        )
    )
    return result.rowcount


async def _ensure_rows(conn: AsyncConnection, keys: list[str], now: datetime) -> None:
    values = [
        {"key": k, "failures": 0, "window_started_at": now, "locked_until": None, "updated_at": now}
        for k in keys
    ]
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    await conn.execute(insert(t.login_throttle).values(values).on_conflict_do_nothing())


# Refusals while locked are logged at most once per address in this time, so a flood of
# requests answered 429 does not become a flood of audit rows.
REFUSAL_LOG_EVERY = timedelta(seconds=60)


async def record_refusal(conn: AsyncConnection, *, email: str, address: str) -> None:
    # The address's throttle row (there is one: a lock needs earlier failures) serializes
    # concurrent refusals, so only one of a burst writes the row. The row names the source (an
    # IPv6 client's /64), so a client cycling through its addresses writes no more rows.
    address = source(address)
    await conn.execute(
        sa.select(t.login_throttle.c.key)
        .where(t.login_throttle.c.key == f"addr:{address}")
        .with_for_update()
    )
    recent = await conn.scalar(
        sa.select(t.login_audit.c.id)
        .where(
            t.login_audit.c.client_address == address[:64],
            t.login_audit.c.created_at >= utcnow() - REFUSAL_LOG_EVERY,
            t.login_audit.c.reason == "throttled",
        )
        .limit(1)
    )
    if recent is not None:
        return
    # Attributed to every account with this address, so their tenants' admins see the attack.
    accounts: list[tuple[str | None, str | None]] = [
        (row.id, row.tenant_id)
        for row in await conn.execute(
            sa.select(t.users.c.id, t.users.c.tenant_id).where(t.users.c.email == email).limit(10)
        )
    ]
    for user_id, tenant_id in accounts or [(None, None)]:
        await record_login(
            conn,
            email=email,
            address=address,
            outcome="refused",
            reason="throttled",
            tenant_id=tenant_id,
            user_id=user_id,
        )


async def record_login(
    conn: AsyncConnection,
    *,
    email: str,
    address: str,
    outcome: str,
    reason: str,
    tenant_id: str | None = None,
    user_id: str | None = None,
) -> None:
    await conn.execute(
        t.login_audit.insert().values(
            id=str(uuid.uuid4()),
            tenant_id=tenant_id,
            user_id=user_id,
            email=email[:320],
            client_address=address[:64],
            outcome=outcome,
            reason=reason,
            created_at=utcnow(),
        )
    )

"""Roles and what each may do. The only place that maps a role to permissions."""

from enum import StrEnum


class Role(StrEnum):
    ADMIN = "admin"
    OPERATOR = "operator"
    VIEWER = "viewer"


class Permission(StrEnum):
    USERS_READ = "users:read"
    USERS_WRITE = "users:write"
    SITES_READ = "sites:read"
    SITES_WRITE = "sites:write"
    GATEWAYS_READ = "gateways:read"
    GATEWAYS_ENROLL = "gateways:enroll"
    GATEWAYS_REVOKE = "gateways:revoke"
    MACHINES_READ = "machines:read"
    MACHINES_WRITE = "machines:write"
    ORDERS_READ = "orders:read"
    PAYMENTS_READ = "payments:read"
    # The tenant's payment provider credentials and money policy: admins only.
    PAYMENTS_SETTINGS = "payments:settings"
    # The login audit holds e-mails and client addresses: admins only.
    LOGINS_AUDIT = "audit:logins"
    # Dead letters hold raw events (customer names, phone numbers): not for viewers.
    SYNC_DEAD_LETTERS = "sync:dead-letters"
    # Retrying a refund or settling it by hand (audit-logged): operators and admins.
    REFUNDS_WRITE = "refunds:write"


_READ = frozenset(p for p in Permission if p.value.endswith(":read"))

ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.ADMIN: frozenset(Permission),
    Role.OPERATOR: _READ
    | {Permission.MACHINES_WRITE, Permission.SYNC_DEAD_LETTERS, Permission.REFUNDS_WRITE},
    Role.VIEWER: _READ,
}


def permissions_for(role: Role) -> list[str]:
    return sorted(p.value for p in ROLE_PERMISSIONS[role])

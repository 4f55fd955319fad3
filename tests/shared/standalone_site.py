"""Machines for a gateway running without a cloud: credentials and the state a pull would bring,
loaded straight into the store with ``store.apply_state``."""

from dataclasses import dataclass
from typing import Literal

from contracts.credentials import hash_secret, new_command_key, new_mqtt_secret
from contracts.sync import CatalogItemState, MachineState

# slot -> (name, category, price in paise, quantity)
Catalog = dict[str, tuple[str, str, int, int]]


@dataclass
class MachineCreds:
    id: str
    secret: str
    command_key: str
    secret_hash: str

    @classmethod
    def new(cls, machine_id: str) -> "MachineCreds":
        secret = new_mqtt_secret()
        # Few PBKDF2 rounds: the hash format is what the broker checks, not its cost.
        return cls(machine_id, secret, new_command_key(), hash_secret(secret, iterations=1000))


def machine_state(
    machine_id: str,
    creds: MachineCreds,
    catalog: Catalog,
    *,
    name: str,
    location: str,
    version: int = 1,
    stock_rev: int = 0,
    status: Literal["active", "decommissioned"] = "active",
) -> MachineState:
    return MachineState(
        id=machine_id,
        tenant_id="t1",
        site_id="s1",
        name=name,
        location=location,
        status=status,
        mqtt_secret_hash=creds.secret_hash,
        command_key=creds.command_key,
        currency="INR",
        catalog=[
            CatalogItemState(
                id=f"{machine_id}-{slot}",
                slot=slot,
                name=item_name,
                category=category,
                price=price,
                currency="INR",
                quantity=quantity,
                stock_rev=stock_rev,
            )
            for slot, (item_name, category, price, quantity) in catalog.items()
        ],
        version=version,
    )

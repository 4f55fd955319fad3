"""A machine's starting catalog from the command line: ``A1:Water:2000:10,A2:Chips:3000:5``
(slot:name:price in paise[:quantity]) or a JSON file holding a list of catalog items (or
``{"items": [...]}``) in the cloud's ``CatalogItemIn`` shape."""

import json
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError

from contracts.device_messages import SlotCode
from contracts.money import Amount
from provisioning.errors import InvalidInput

_PRICE = re.compile(r"^\d{1,10}$")


class SlotItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    slot: SlotCode
    name: Annotated[str, Field(min_length=1, max_length=200)]
    price: Amount
    quantity: Annotated[StrictInt, Field(ge=0, le=1000)] | None = None
    category: Annotated[str, Field(max_length=100)] | None = None
    capacity: Annotated[StrictInt, Field(ge=1, le=1000)] | None = None
    image_url: Annotated[str, Field(max_length=1000)] | None = None
    active: StrictBool = True


def parse_slots(text: str) -> list[dict[str, Any]]:
    """The template as catalog items for ``POST /machines/onboard``."""
    text = text.strip()
    if not text:
        raise InvalidInput("empty slots template")
    path = Path(text)
    if text.endswith(".json") or path.is_file():
        return _from_file(path)
    return _validated([_parse_entry(entry) for entry in text.split(",")], "slots template")


def _parse_entry(entry: str) -> dict[str, Any]:
    parts = [p.strip() for p in entry.split(":")]
    if len(parts) not in (3, 4) or not all(parts):
        raise InvalidInput(
            f"bad slot {entry.strip()!r}: expected SLOT:NAME:PRICE_PAISE[:QUANTITY], "
            "e.g. A1:Water:2000:10"
        )
    slot, name, price = parts[0].upper(), parts[1], parts[2]
    if not _PRICE.match(price):
        raise InvalidInput(
            f"bad price {price!r} for slot {slot}: a whole number of paise (2000 = Rs 20.00)"
        )
    item: dict[str, Any] = {"slot": slot, "name": name, "price": int(price)}
    if len(parts) == 4:
        if not parts[3].isdigit():
            raise InvalidInput(f"bad quantity {parts[3]!r} for slot {slot}: a whole number")
        item["quantity"] = int(parts[3])
    return item


def _from_file(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise InvalidInput(f"slots file {path} does not exist") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read slots file {path}: {exc}") from exc
    except ValueError as exc:
        raise InvalidInput(f"slots file {path} is not valid JSON ({exc})") from exc
    if isinstance(data, dict) and "items" in data:
        data = data["items"]
    if not isinstance(data, list):
        raise InvalidInput(f"slots file {path}: expected a list of items")
    return _validated(data, str(path))


def _validated(items: list[Any], source: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = []
    seen: set[str] = set()
    for index, raw in enumerate(items):
        try:
            item = SlotItem.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors(include_input=False, include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"]) or "item"
            raise InvalidInput(f"{source}: item {index + 1}: {where}: {first['msg']}") from exc
        if item.slot in seen:
            raise InvalidInput(f"{source}: slot {item.slot} appears twice")
        seen.add(item.slot)
        result.append(item.model_dump(exclude_none=True))
    if not result:
        raise InvalidInput(f"{source}: no slots")
    return result

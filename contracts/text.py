"""Text every hop accepts the same way: the kiosk API, the gateway's outbox, the cloud's sync
intake and the cloud API validate strings with these types, so a value one of them refuses
never gets past another and stalls sync later.

The rule ("printable text"): no C0 control character (U+0000-U+001F, NUL included), no DEL or C1
control (U+007F-U+009F), no lone surrogate (a ``\\ud800``-``\\udfff`` JSON escape that is not half
of a pair; neither UTF-8 nor PostgreSQL text can hold one). Format characters such as a
zero-width joiner stay allowed: names in several scripts need them. Lengths count code points.

The JSON Schema of these types carries the control-character rule as a ``pattern``; lone
surrogates cannot be written in a pattern that still admits astral characters, so the schema's
description states that part.
"""

import re
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

# ECMA-262, Rust regex and Python re all read these patterns the same way.
PRINTABLE_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]*$"
# Printable with at least one character that is not white space.
NOT_BLANK_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
_FORBIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_RULE = "control characters (U+0000-U+001F, U+007F-U+009F) and lone surrogates are refused"

MAX_PERSON_NAME = 100
MAX_REF = 64
MAX_DEVICE_REASON = 64


def _printable(value: str) -> str:
    if _FORBIDDEN.search(value):
        # The message names the rule, never the value: inputs may carry personal data.
        raise ValueError(f"text must be printable: {_RULE}")
    return value


def is_printable(value: str) -> bool:
    return _FORBIDDEN.search(value) is None


def clean_device_text(value: object, max_length: int) -> object:
    """A device's free text (a dispense reason) is cleaned, never refused: refusing it would
    lose the money event it rides on. Control characters become U+FFFD and the text is cut."""
    if not isinstance(value, str):
        return value
    return _FORBIDDEN.sub("\ufffd", value[:max_length])


def _clean_reason(value: object) -> object:
    return clean_device_text(value, MAX_DEVICE_REASON)


def _clean_state_text(value: object) -> object:
    return _FORBIDDEN.sub("\ufffd", value) if isinstance(value, str) else value


def _not_blank(value: str) -> str:
    value = _printable(value)
    if not value.strip():
        raise ValueError("text must not be blank")
    return value


@dataclass(frozen=True)
class Printable:
    """Annotated marker: the value must be printable text (the module's rule); with
    ``not_blank``, also hold a character that is not white space. Put it after any ``Field``
    bounds so that length errors stay pydantic's usual ones.

    Values are stored as sent, never stripped: stripping would make the lengths the documents
    state differ from the lengths the servers check."""

    not_blank: bool = False

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        check = _not_blank if self.not_blank else _printable
        return core_schema.no_info_after_validator_function(check, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(schema)
        rule = f"{_RULE}; not blank" if self.not_blank else _RULE
        json_schema.update(
            pattern=NOT_BLANK_PATTERN if self.not_blank else PRINTABLE_PATTERN,
            description=f"Printable text: {rule}.",
        )
        return json_schema


PRINTABLE = Printable()
NOT_BLANK = Printable(not_blank=True)
PrintableText = Annotated[str, PRINTABLE]

# A reference to something that already exists (machine, catalog item, order, slot): looked up
# afterwards, so its shape only needs to be safe to look up, store and log.
Ref = Annotated[str, Field(min_length=1, max_length=MAX_REF), PRINTABLE]

PersonName = Annotated[str, Field(min_length=1, max_length=MAX_PERSON_NAME), NOT_BLANK]

# E.164: a plus, a country code that does not start with 0, at most 15 digits. [0-9], not \d,
# because \d also matches other scripts' digits in Python and Rust.
PHONE_PATTERN = r"^\+[1-9][0-9]{7,14}$"
PhoneNumber = Annotated[str, Field(pattern=PHONE_PATTERN, min_length=9, max_length=16)]

# A name in the cloud's state, as the gateway stores it: a name saved before the cloud refused
# control characters is cleaned on the way in (never refused: the whole pull would fail), so
# the order snapshots that copy it still pass the sync contract.
StateName = Annotated[str, BeforeValidator(_clean_state_text)]

# Cleaned rather than refused (see ``clean_device_text``), so any string validates.
DeviceReason = Annotated[str, BeforeValidator(_clean_reason), Field(max_length=MAX_DEVICE_REASON)]

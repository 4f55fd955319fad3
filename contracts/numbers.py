"""Integers: one rule on every hop (kiosk API, device link, sync, cloud API).

In JSON, an integer is what JSON Schema calls one: a number with no fractional part. ``5`` and
``5.0`` are the same value and both are accepted as the integer 5; ``5.5``, ``"5"``, ``true``,
``NaN`` and ``Infinity`` are refused with a 400, never rounded or coerced. Accepting ``5.0`` is
what makes ``"type": "integer"`` in both OpenAPI documents exactly true; no money is ever
rounded, because a value with a fraction is refused.

In a query string an integer is ASCII decimal digits with an optional leading minus: ``1.0``,
``+1``, `` 1``, ``1_000`` and ``1e3`` are refused, where pydantic's lax parsing takes some.

Put the markers after any ``Field`` bounds, so the bounds stay in the JSON Schema:
``Annotated[StrictInt, Field(ge=0), WHOLE_NUMBER]``.
"""

import re

from pydantic import BeforeValidator

_DECIMAL = re.compile(r"-?[0-9]+")

INTEGER_RULE = (
    "Integers are JSON numbers without a fractional part (5 and 5.0 are the integer 5; 5.5, "
    '"5" and true are refused). Integer query parameters are ASCII decimal digits with an '
    "optional leading minus."
)


def _whole(value: object) -> object:
    # bool is an int subclass in Python but never a JSON number; StrictInt refuses it after this.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _query_int(value: object) -> object:
    if isinstance(value, str):
        if not _DECIMAL.fullmatch(value):
            raise ValueError("must be a whole number written in decimal digits")
        return int(value)
    return value


WHOLE_NUMBER = BeforeValidator(_whole)
QUERY_INTEGER = BeforeValidator(_query_int)

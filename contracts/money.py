"""Money on the wire: integer minor units (paise) and an ISO 4217 currency code, never floats."""

from typing import Annotated

from pydantic import Field, StrictInt

DEFAULT_CURRENCY = "INR"

# A strict int refuses 12.5 and "12", so a float never becomes money by accident.
Amount = Annotated[StrictInt, Field(ge=0, le=10_000_000_00)]
PositiveAmount = Annotated[StrictInt, Field(gt=0, le=10_000_000_00)]
Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$")]

"""Money on the wire: integer minor units (paise) and an ISO 4217 currency code, never floats."""

from typing import Annotated

from pydantic import Field, StrictInt

from contracts.numbers import WHOLE_NUMBER

DEFAULT_CURRENCY = "INR"

# 12.5, "12" and true are refused (12.0 is the integer 12, see contracts.numbers), so a fraction
# never becomes money by accident.
Amount = Annotated[StrictInt, Field(ge=0, le=10_000_000_00), WHOLE_NUMBER]
PositiveAmount = Annotated[StrictInt, Field(gt=0, le=10_000_000_00), WHOLE_NUMBER]
Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$")]

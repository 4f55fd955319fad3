"""Report days: calendar days in UTC (tenants have no time zone setting yet), as half-open
``[start, end)`` ranges of aware datetimes, and the query parameter that carries one."""

import re
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated

from pydantic import BeforeValidator, Field, WithJsonSchema

_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
# The last instant a report can reach: date.max plus one day does not exist.
_END_OF_TIME = datetime.max.replace(tzinfo=UTC)


def _query_day(value: object) -> object:
    # pydantic's lax date parsing also takes unix timestamps and datetimes; a report day is only
    # ever written YYYY-MM-DD, so anything else is a 400 rather than a guess.
    if isinstance(value, str) and not _DAY.fullmatch(value):
        raise ValueError("must be a day written YYYY-MM-DD")
    return value


QueryDay = Annotated[
    date,
    BeforeValidator(_query_day),
    WithJsonSchema({"type": "string", "format": "date", "pattern": r"^\d{4}-\d{2}-\d{2}$"}),
    Field(description="A calendar day in UTC, YYYY-MM-DD"),
]


def day_start(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def day_range(first: date, last: date) -> tuple[datetime, datetime]:
    """``[start of first, start of the day after last)`` in UTC."""
    end = _END_OF_TIME if last == date.max else day_start(last + timedelta(days=1))
    return day_start(first), end


def day_of(moment: datetime) -> date:
    """The UTC day of a stored timestamp (SQLite hands back naive values, which are UTC)."""
    aware = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return aware.date()

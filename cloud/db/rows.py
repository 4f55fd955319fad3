"""Turning result rows into plain dicts for the API models (timestamps as aware UTC)."""

from datetime import datetime
from typing import Any

import sqlalchemy as sa

from cloud.db.times import as_utc


def row_dict(row: sa.Row[Any]) -> dict[str, Any]:
    return {
        key: as_utc(value) if isinstance(value, datetime) else value
        for key, value in row._mapping.items()
    }

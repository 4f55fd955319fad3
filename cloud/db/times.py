"""Timestamps: always timezone-aware UTC in Python. SQLite hands back naive values, which are UTC
because only UTC is ever written."""

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

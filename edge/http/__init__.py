"""The gateway's HTTP side: kiosk API under /api/v1, /health and /metrics."""

from edge.http.app import create_app

__all__ = ["create_app"]

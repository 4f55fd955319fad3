"""The gateway properties use the machines' credentials (hashed once per session)."""

from gw_support import creds

__all__ = ["creds"]

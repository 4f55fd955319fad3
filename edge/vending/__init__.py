"""Orders and the vend flow."""

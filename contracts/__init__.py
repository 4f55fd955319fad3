"""Wire contracts shared by the gateway, the cloud and the technician tools.

Firmware never imports this package; contract tests check that what the firmware sends validates
against these models.
"""

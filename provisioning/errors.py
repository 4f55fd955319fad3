"""The technician tools' exception tree: one root, caught once by the CLI (one line, exit code)."""


class ProvisioningError(Exception):
    """Root of every error the technician tools raise on purpose."""

    exit_code = 1


class CloudApiError(ProvisioningError):
    """The cloud answered with an error envelope (or not at all)."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code


class CloudUnreachable(CloudApiError):
    """No answer from the cloud: wrong URL, network down, TLS failure."""

    exit_code = 3


class NotLoggedIn(CloudApiError):
    """No stored login, or it has expired and could not be refreshed."""

    exit_code = 4


class InvalidInput(ProvisioningError):
    """A command-line value that parses but makes no sense: a bad slots template, claim code,
    cloud URL or option combination. Exit code 2, like argparse's own usage errors."""

    exit_code = 2


class ConfigStoreError(ProvisioningError):
    """The stored login cannot be read or written (permissions, corrupt file)."""

    exit_code = 4


class BundleError(ProvisioningError):
    """A device config bundle that cannot be read, parsed or validated."""

    exit_code = 5


class ClaimError(ProvisioningError):
    """A claim code that is unknown, used, expired, or does not decrypt its bundle."""

    exit_code = 6


class PortError(ProvisioningError):
    """A serial port that does not exist or cannot be opened."""

    exit_code = 7


class FlashError(ProvisioningError):
    """esptool, mpy-cross or mpremote failed, or what landed on the device is not what was
    sent."""

    exit_code = 8


class ToolMissing(FlashError):
    """A program the flash path needs (esptool, mpremote) is not installed."""


class DiscoveryError(ProvisioningError):
    """zeroconf could not browse the LAN (no multicast-capable interface)."""

    exit_code = 9

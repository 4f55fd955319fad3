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

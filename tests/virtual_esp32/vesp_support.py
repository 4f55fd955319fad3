"""Types shared by the virtual board tests (test modules must not import ``conftest``: every
test folder has one, and only the first imported would be found)."""

from collections.abc import Awaitable, Callable

# mpremote(serial_path, *args) -> stdout; fails the test on a non-zero exit
Mpremote = Callable[..., Awaitable[str]]

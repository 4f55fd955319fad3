"""Pseudo-terminal pairs of a virtual board: the host's serial port and the interpreter's console.

Both are driven from the asyncio loop through their master side. The supervisor also keeps the
slave side open, so the master never reads EIO while nobody else has the slave open (between
two mpremote runs, between two boots) and the slave's path stays valid for the board's lifetime.
"""

import asyncio
import contextlib
import fcntl
import os
import termios
from collections.abc import Callable
from typing import Any

_READ_CHUNK = 4096
_IFLAG, _OFLAG, _CFLAG, _LFLAG, _CC = 0, 1, 2, 3, 6


def _make_raw(mode: list[Any]) -> None:
    """cfmakeraw (tty.cfmakeraw is 3.12+)."""
    mode[_IFLAG] &= ~(
        termios.IGNBRK
        | termios.BRKINT
        | termios.PARMRK
        | termios.ISTRIP
        | termios.INLCR
        | termios.IGNCR
        | termios.ICRNL
        | termios.IXON
        | termios.IXOFF
    )
    mode[_OFLAG] &= ~termios.OPOST
    mode[_LFLAG] &= ~(
        termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN
    )
    mode[_CFLAG] &= ~(termios.CSIZE | termios.PARENB)
    mode[_CFLAG] |= termios.CS8


def _raw(fd: int) -> None:
    """Plain byte pipe: no echo, no signals, no newline translation (what pyserial sets too)."""
    mode = termios.tcgetattr(fd)
    _make_raw(mode)
    mode[_CC][termios.VMIN] = 1
    mode[_CC][termios.VTIME] = 0
    termios.tcsetattr(fd, termios.TCSANOW, mode)


def console_mode(fd: int) -> None:
    """The interpreter's "original" terminal mode, restored by it whenever code runs.

    Like a board's UART: no echo, no line editing, no newline translation (so the REPL's own
    ``\\r\\n`` reaches mpremote unchanged), but Ctrl-C raises SIGINT, which the unix port turns
    into KeyboardInterrupt in running code. Quit and suspend are disabled: their bytes must not
    kill or stop the interpreter. TCSANOW keeps input already queued for the next boot.
    """
    mode = termios.tcgetattr(fd)
    _make_raw(mode)
    mode[_LFLAG] |= termios.ISIG
    cc = mode[_CC]
    cc[termios.VINTR] = b"\x03"
    cc[termios.VQUIT] = b"\x00"
    cc[termios.VSUSP] = b"\x00"
    cc[termios.VMIN] = 1
    cc[termios.VTIME] = 0
    termios.tcsetattr(fd, termios.TCSANOW, mode)


def take_controlling_tty() -> None:
    """Run in the child after setsid: make its stdin (the console slave) its controlling tty,
    so the line discipline delivers SIGINT to it on Ctrl-C."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class PtyLink:
    """One pty pair: ``on_read`` gets what the slave side wrote; ``write`` feeds the slave side.

    Writes that do not fit are kept in a bounded buffer and sent when the slave has room; past
    ``max_pending`` the oldest bytes are dropped, as a UART nobody listens to loses them.
    """

    def __init__(self, on_read: Callable[[bytes], None], *, max_pending: int) -> None:
        self._on_read = on_read
        self._max_pending = max_pending
        self._pending = bytearray()
        self._loop = asyncio.get_running_loop()
        self.master, self.slave = os.openpty()
        self.path = os.ttyname(self.slave)
        os.set_blocking(self.master, False)
        self._writing = False
        self._closed = False
        self._loop.add_reader(self.master, self._readable)

    def _readable(self) -> None:
        self.drain()

    def drain(self) -> int:
        """Read and hand over everything the slave side has written so far; bytes read."""
        total = 0
        while not self._closed:
            try:
                data = os.read(self.master, _READ_CHUNK)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # EIO: cannot happen while we hold the slave, but never spin on it
                break
            if not data:
                break
            total += len(data)
            self._on_read(data)
        return total

    def write(self, data: bytes) -> None:
        if self._closed or not data:
            return
        self._pending += data
        if len(self._pending) > self._max_pending:
            del self._pending[: len(self._pending) - self._max_pending]
        self._flush()

    def discard_pending(self) -> None:
        self._pending.clear()

    def _flush(self) -> None:
        while self._pending and not self._closed:
            try:
                sent = os.write(self.master, self._pending)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._pending.clear()
                break
            if sent == 0:
                break
            del self._pending[:sent]
        want = bool(self._pending) and not self._closed
        if want and not self._writing:
            self._loop.add_writer(self.master, self._flush)
        elif not want and self._writing:
            self._loop.remove_writer(self.master)
        self._writing = want

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self.master)
        if self._writing:
            self._loop.remove_writer(self.master)
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)


def open_host_port(on_input: Callable[[bytes], None]) -> PtyLink:
    """The board's serial port as the host sees it: ``path`` is what mpremote connects to."""
    link = PtyLink(on_input, max_pending=8192)
    _raw(link.slave)
    return link


def open_console(on_output: Callable[[bytes], None]) -> PtyLink:
    """The interpreter's terminal: its slave is stdin/stdout/stderr of every boot."""
    link = PtyLink(on_output, max_pending=65536)
    console_mode(link.slave)
    return link

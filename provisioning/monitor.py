"""A device's serial console: bytes from the port go to the terminal as they come; a port that
disappears (board unplugged, reset through native USB) is reopened with capped, jittered
backoff. Ctrl-C ends it."""

import os
import random
import sys
import threading
from typing import BinaryIO, TextIO

import serial

from provisioning.errors import PortError

READ_TIMEOUT_S = 0.2
BACKOFF_MIN_S = 0.25
BACKOFF_MAX_S = 5.0


def _open(port: str, baud: int) -> serial.Serial:
    conn = serial.Serial()
    conn.port, conn.baudrate, conn.timeout = port, baud, READ_TIMEOUT_S
    # ESP32 boards wire DTR/RTS to EN/IO0 (auto-reset): both released keeps the chip running
    # instead of holding it in reset or in the bootloader while we watch.
    conn.dtr = False
    conn.rts = False
    conn.open()
    return conn


def open_port(port: str, baud: int) -> serial.Serial:
    try:
        return _open(port, baud)
    except (serial.SerialException, OSError, ValueError) as exc:
        raise PortError(f"cannot open {port}: {_reason(exc)}") from exc


def _reason(exc: BaseException) -> str:
    text = str(exc)
    return text.split(": ", 1)[-1] if text.startswith("[Errno") else text


def run_monitor(
    port: str,
    baud: int,
    *,
    out: BinaryIO | None = None,
    status: TextIO | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Copy the port to ``out`` until ``stop`` is set (or forever; Ctrl-C raises
    KeyboardInterrupt to the caller). The first open must work; later losses are retried."""
    out = out or sys.stdout.buffer
    status = status or sys.stderr
    stop = stop or threading.Event()
    conn: serial.Serial | None = open_port(port, baud)
    status.write(f"--- monitoring {port} at {baud} baud, Ctrl-C to quit ---\n")
    status.flush()
    delay = BACKOFF_MIN_S
    try:
        while not stop.is_set():
            if conn is None:
                try:
                    conn = _open(port, baud)
                except (serial.SerialException, OSError):
                    # Each wait is uniformly between half and all of the current step.
                    stop.wait(delay * random.uniform(0.5, 1.0))
                    delay = min(delay * 2, BACKOFF_MAX_S)
                    continue
                status.write(f"--- {port} back ---\n")
                status.flush()
                delay = BACKOFF_MIN_S
            try:
                data = conn.read(conn.in_waiting or 1)
            except (serial.SerialException, OSError) as exc:
                status.write(f"--- {port} lost ({_reason(exc)}), reconnecting ---\n")
                status.flush()
                _close(conn)
                conn = None
                continue
            if data:
                out.write(data)
                out.flush()
            elif not _still_there(port):
                status.write(f"--- {port} gone, reconnecting ---\n")
                status.flush()
                _close(conn)
                conn = None
    finally:
        if conn is not None:
            _close(conn)


def _still_there(port: str) -> bool:
    # An unplugged USB bridge may read as empty instead of failing; its device node is gone.
    # (Opening the port to probe it would toggle DTR and reset the board.)
    return not port.startswith("/") or os.path.exists(port)


def _close(conn: serial.Serial) -> None:
    try:
        conn.close()
    except (serial.SerialException, OSError):
        pass

"""vendctl device flash for real: mpy-cross, then mpremote over a pseudo-terminal to the
MicroPython unix port (resume, fs cp, sha256 read-back), then the flashed firmware boots."""

import asyncio
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from vendctl_pty_device import MICROPYTHON, pty_repl

from provisioning.cli import main
from provisioning.config_store import config_dir
from provisioning.flash import FIRMWARE_DIR

BUNDLE = {
    "machine_id": "m-flash-1",
    "mqtt_host": "127.0.0.1",
    "mqtt_port": 9,
    "mqtt_user": "m-flash-1",
    "mqtt_password": "s3cret-mqtt",
    "command_key": "cd" * 32,
    "wifi_ssid": "",
    "wifi_password": "",
    "gateway_service": "_vending-gw._tcp.local.",
    "cloud_url": "http://127.0.0.1:1",
}


@pytest.fixture
def bundle_file(tmp_path):
    path = tmp_path / "b.bundle.json"
    path.write_text(json.dumps(BUNDLE))
    return path


def _boots(flash_dir, machine_id):
    """Run the flashed files as the board would (boot.py, then main.py) until it says BOOT."""
    proc = subprocess.Popen(
        [MICROPYTHON, "-X", "heapsize=96K", "-c", "import boot\nimport main"],
        cwd=flash_dir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if line.startswith(("BOOT ", "FATAL", "Traceback")):
                break
        return "".join(seen)
    finally:
        proc.kill()
        proc.wait(10)


def test_flash_bundle_onto_pty_device(tmp_path, bundle_file, capsys):
    flash = tmp_path / "flash"
    flash.mkdir()
    (flash / "vend").mkdir()
    (flash / "vend" / "app.py").write_text("raise ImportError('stale source twin')\n")
    (flash / "journal.json").write_text('{"v": 1, "ctr": 5, "boot": 2, "e": [], "a": []}')
    with pty_repl(flash) as port:
        rc = main(["device", "flash", "--port", port, "--bundle", str(bundle_file)])
        captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "verified" in captured.err and "not reset" in captured.err
    assert json.loads((flash / "config.json").read_text()) == BUNDLE
    assert not (flash / "vend" / "app.py").exists()  # the stale twin would shadow app.mpy
    assert (flash / "journal.json").exists()  # device state survives a reflash
    sources = [p.relative_to(FIRMWARE_DIR) for p in FIRMWARE_DIR.rglob("*.py")]
    for rel in sources:
        target = rel if rel.name in ("boot.py", "main.py") else rel.with_suffix(".mpy")
        assert (flash / target).is_file(), target
    assert (flash / "main.py").read_bytes() == (FIRMWARE_DIR / "main.py").read_bytes()
    boot = _boots(flash, BUNDLE["machine_id"])
    assert re.search(r"^BOOT m-flash-1 ", boot, re.M), boot


def test_flash_no_compile_copies_sources(tmp_path, bundle_file, capsys):
    flash = tmp_path / "flash"
    with pty_repl(flash) as port:
        rc = main(["device", "flash", "--port", port, "--bundle", str(bundle_file), "--no-compile"])
    assert rc == 0, capsys.readouterr().err
    app = flash / "vend" / "app.py"
    assert (
        hashlib.sha256(app.read_bytes()).digest()
        == hashlib.sha256((FIRMWARE_DIR / "vend" / "app.py").read_bytes()).digest()
    )
    assert not list(flash.rglob("*.mpy"))


def test_what_did_not_land_fails_verification(tmp_path, bundle_file, capsys):
    flash = tmp_path / "flash"
    flash.mkdir()
    # A directory in the way: mpremote copies into it, so config.json never lands as a file.
    (flash / "config.json").mkdir()
    with pty_repl(flash) as port:
        rc = main(["device", "flash", "--port", port, "--bundle", str(bundle_file)])
    err = capsys.readouterr().err
    assert rc == 8
    assert err.splitlines()[-1] == (
        "vendctl: error: verification failed: 1 file(s) differ on the device: config.json"
    )
    assert "Traceback" not in err


def test_flash_by_claim(logged_in, tmp_path, capsys):
    rc = main(
        [
            "machine",
            "onboard",
            "--name",
            "Claimed",
            "--site",
            logged_in.site_id,
            "--slots",
            "A1:Water:2000:3",
            "--out",
            str(tmp_path / "orig.json"),
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    code = re.search(r"claim code: (\S+)", out).group(1)
    original = json.loads((tmp_path / "orig.json").read_text())
    flash = tmp_path / "flash"
    with pty_repl(flash) as port:
        rc = main(["device", "flash", "--port", port, "--claim", code])
        err = capsys.readouterr().err
    assert rc == 0, err
    assert json.loads((flash / "config.json").read_text()) == original
    # The claimed bundle (device secrets) was kept privately only until the flash verified.
    assert not list(Path(".").glob("*.bundle.json"))
    assert not list((config_dir() / "claimed").glob("*"))
    assert (config_dir() / "claimed").stat().st_mode & 0o777 == 0o700
    # Spent: a second technician gets a clear refusal.
    with pty_repl(tmp_path / "flash2") as port:
        rc = main(["device", "flash", "--port", port, "--claim", code])
    assert rc == 6
    assert "already used" in capsys.readouterr().err


async def test_flash_as_subprocess_with_progress(tmp_path, bundle_file):
    flash = tmp_path / "flash"
    with pty_repl(flash) as port:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "provisioning",
            "device",
            "flash",
            "--port",
            port,
            "--bundle",
            str(bundle_file),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(60):
            out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert b"flashed machine m-flash-1" in out
    assert b"copying to" in err and b"verified" in err


def test_silent_device_times_out_cleanly(tmp_path, bundle_file, capsys, monkeypatch):
    import os
    import tty

    from provisioning import flash

    monkeypatch.setattr(flash, "CONNECT_TIMEOUT_S", 1.5)
    master, slave = os.openpty()  # a port where nothing answers
    tty.setraw(slave)
    try:
        rc = main(["device", "flash", "--port", os.ttyname(slave), "--bundle", str(bundle_file)])
    finally:
        os.close(slave)
        os.close(master)
    err = capsys.readouterr().err
    assert rc == 8
    assert err.splitlines()[-1].startswith("vendctl: error: no MicroPython REPL answered on")

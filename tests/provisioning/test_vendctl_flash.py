"""vendctl device flash: the exact commands (dry run) and every bad-input path."""

import json
import os
import shlex

import pytest

from provisioning.cli import main
from provisioning.flash import FIRMWARE_DIR

BUNDLE = {
    "machine_id": "m-1",
    "mqtt_host": "127.0.0.1",
    "mqtt_port": 1883,
    "mqtt_user": "m-1",
    "mqtt_password": "s3cret-mqtt",
    "command_key": "ab" * 32,
    "wifi_ssid": "",
    "wifi_password": "",
    "gateway_service": "_vending-gw._tcp.local.",
    "cloud_url": "http://127.0.0.1:8080",
}


@pytest.fixture
def bundle_file(tmp_path):
    path = tmp_path / "m-1.bundle.json"
    path.write_text(json.dumps(BUNDLE))
    path.chmod(0o600)
    return path


def _commands(out):
    """Each ``$ `` line plus its continuation lines (the exec scripts span several)."""
    texts: list[str] = []
    for line in out.splitlines():
        if line.startswith("$ "):
            texts.append(line[2:])
        elif texts and not line.startswith("#"):
            texts[-1] += "\n" + line
    return [shlex.split(text) for text in texts]


@pytest.mark.parametrize(
    ("chip", "offset"), [("esp32", "0x1000"), ("esp32s3", "0x0"), ("esp32c3", "0x0")]
)
def test_dry_run_esptool_offset_per_chip(bundle_file, tmp_path, chip, offset, capsys):
    image = tmp_path / "micropython.bin"
    rc = main(
        [
            "device",
            "flash",
            "--port",
            "/dev/ttyUSB7",
            "--bundle",
            str(bundle_file),
            "--micropython-image",
            str(image),
            "--chip",
            chip,
            "--baud",
            "921600",
            "--dry-run",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    commands = _commands(out)
    erase, write = commands[0], commands[1]
    assert erase[1:3] == ["-m", "esptool"]
    assert erase[3:9] == ["--chip", chip, "--port", "/dev/ttyUSB7", "--baud", "921600"]
    assert erase[9] in ("erase-flash", "erase_flash")
    assert write[9] in ("write-flash", "write_flash")
    assert write[10:] == ["-z", offset, str(image)]
    # Then the mpremote steps, the first one on a board without resume, the reset last.
    mpremote = [c for c in commands if c[1:3] == ["-m", "mpremote"]]
    assert [c[3:5] for c in mpremote] == [["connect", "/dev/ttyUSB7"]] * 4
    assert mpremote[0][5] == "exec" and "resume" not in mpremote[0]
    assert all(c[5] == "resume" for c in mpremote[1:])
    assert mpremote[-1][6:] == ["reset"]
    assert "s3cret-mqtt" not in out


def test_dry_run_virtual_device_resumes_and_copies_everything(bundle_file, capsys):
    rc = main(
        ["device", "flash", "--port", "/dev/pts/77", "--bundle", str(bundle_file), "--dry-run"]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    commands = _commands(out)
    assert not any(c[1:3] == ["-m", "esptool"] for c in commands)
    mpremote = [c for c in commands if c[1:3] == ["-m", "mpremote"]]
    assert len(mpremote) == 3  # prepare, copy, verify: no reset for a virtual device
    assert all(c[3:6] == ["connect", "/dev/pts/77", "resume"] for c in mpremote)
    copy = mpremote[1]
    targets = [copy[i + 1] for i, word in enumerate(copy) if word == "cp"]
    destinations = [copy[i + 2] for i, word in enumerate(copy) if word == "cp"]
    assert [t.split("/", 1)[1] for t in targets] == [d[1:] for d in destinations]
    remote = {d[1:] for d in destinations}
    assert {"boot.py", "main.py", "config.json", "vend/app.mpy", "vend/hal/sim.mpy"} <= remote
    sources = {p.relative_to(FIRMWARE_DIR).as_posix() for p in FIRMWARE_DIR.rglob("*.py")}
    assert len(remote) == len(sources) + 1
    # The verify script hashes exactly what was copied.
    verify = mpremote[2][-1]
    assert all(f'"{r}"' in verify for r in remote)
    mpy_cross = [c for c in commands if os.path.basename(c[0]) == "mpy-cross"]
    assert len(mpy_cross) == len(sources) - 2  # boot.py and main.py stay source


def test_dry_run_no_compile_copies_sources(bundle_file, capsys):
    rc = main(
        [
            "device",
            "flash",
            "--port",
            "/dev/ttyUSB0",
            "--bundle",
            str(bundle_file),
            "--dry-run",
            "--no-compile",
            "--virtual",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "vend/app.py" in out and "vend/app.mpy" not in out.split("fs cp", 1)[1]
    assert "reset" not in _commands(out)[-1]


def test_dry_run_claim_does_not_redeem(capsys):
    rc = main(
        ["device", "flash", "--port", "/dev/pts/5", "--claim", "ABCD-EFGH-2345-6789", "--dry-run"]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "not redeemed" in out


def test_unknown_port(bundle_file, capsys, one_line_error):
    rc = main(["device", "flash", "--port", "/dev/ttyUSB-nope", "--bundle", str(bundle_file)])
    assert rc == 7
    assert "does not exist" in one_line_error(capsys.readouterr().err)
    rc = main(["device", "flash", "--port", "COM-nope", "--bundle", str(bundle_file)])
    assert rc == 7
    one_line_error(capsys.readouterr().err)
    rc = main(["device", "flash", "--port", str(bundle_file), "--bundle", str(bundle_file)])
    assert rc == 7
    assert "not a serial device" in one_line_error(capsys.readouterr().err)
    rc = main(["device", "monitor", "--port", "/dev/ttyUSB-nope"])
    assert rc == 7
    one_line_error(capsys.readouterr().err)


def test_unknown_port_does_not_spend_a_claim(capsys, one_line_error):
    rc = main(
        [
            "device",
            "flash",
            "--port",
            "/dev/ttyUSB-nope",
            "--claim",
            "ABCD-EFGH-2345-6789",
            "--cloud",
            "http://127.0.0.1:9",
        ]
    )
    assert rc == 7  # the port is checked before the cloud is asked
    one_line_error(capsys.readouterr().err)


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (None, "does not exist"),
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        (json.dumps({k: v for k, v in BUNDLE.items() if k != "command_key"}), "command_key"),
        (json.dumps(BUNDLE | {"mqtt_port": "1883"}), "mqtt_port"),
        (json.dumps(BUNDLE | {"command_key": "xyz"}), "command_key"),
    ],
)
def test_bad_bundle(tmp_path, content, needle, capsys, one_line_error):
    path = tmp_path / "bad.json"
    if content is not None:
        path.write_text(content)
    rc = main(["device", "flash", "--port", "/dev/pts/1", "--bundle", str(path), "--dry-run"])
    assert rc == 5
    line = one_line_error(capsys.readouterr().err)
    assert needle in line
    assert "s3cret-mqtt" not in line


def test_usage_errors_exit_2(bundle_file, capsys):
    assert main(["device", "flash", "--port", "/dev/pts/1"]) == 2  # neither bundle nor claim
    assert main(["device", "flash", "--port", "/dev/pts/1", "--bundle", "x", "--claim", "y"]) == 2
    assert (
        main(
            [
                "device",
                "flash",
                "--port",
                "/dev/pts/1",
                "--bundle",
                str(bundle_file),
                "--chip",
                "esp8266",
            ]
        )
        == 2
    )
    assert main(["device", "flash", "--port", "/dev/pts/1", "--claim", "nope", "--dry-run"]) == 2
    assert (
        main(
            [
                "device",
                "flash",
                "--port",
                "/dev/pts/1",
                "--bundle",
                str(bundle_file),
                "--micropython-image",
                "x.bin",
            ]
        )
        == 2
    )  # an image for a virtual device
    assert main(["device"]) == 2
    assert "Traceback" not in capsys.readouterr().err

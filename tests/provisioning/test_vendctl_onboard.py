"""vendctl machine onboard: a 0600 bundle with the firmware's keys, a QR that carries only the
claim code, and claims that redeem once."""

import base64
import json
import re
import stat
from pathlib import Path

import pytest

from provisioning import claims
from provisioning.bundle import BUNDLE_KEYS, GATEWAY_SERVICE
from provisioning.cli import main

CODE_RE = re.compile(r"claim code: ((?:[0-9A-Z]{4}-){3}[0-9A-Z]{4})")


def _onboard(account, *extra):
    return main(
        [
            "machine",
            "onboard",
            "--name",
            "Lobby",
            "--site",
            account.site_id,
            "--location",
            "Ground floor",
            "--slots",
            "A1:Water:2000:10,A2:Chips:3000:5",
            "--wifi-ssid",
            "site-wifi",
            "--wifi-password",
            "wifi-secret-1",
            *extra,
        ]
    )


def test_onboard_writes_private_bundle_and_secret_free_qr(logged_in, tmp_path, capsys):
    out_file = tmp_path / "m1.bundle.json"
    rc = _onboard(logged_in, "--out", str(out_file), "--mqtt-host", "10.0.0.5")
    out = capsys.readouterr().out
    assert rc == 0, out
    assert stat.S_IMODE(out_file.stat().st_mode) == 0o600
    bundle = json.loads(out_file.read_text())
    assert tuple(sorted(bundle)) == tuple(sorted(BUNDLE_KEYS))
    assert bundle["mqtt_user"] == bundle["machine_id"]
    assert bundle["mqtt_host"] == "10.0.0.5" and bundle["mqtt_port"] == 1883
    assert re.fullmatch(r"[0-9a-f]{64}", bundle["command_key"])
    assert bundle["wifi_ssid"] == "site-wifi" and bundle["wifi_password"] == "wifi-secret-1"
    assert bundle["gateway_service"] == GATEWAY_SERVICE
    assert bundle["cloud_url"] == logged_in.cloud.url

    # The terminal shows the code, its URI and a QR of that URI; never a device secret.
    for secret in (bundle["mqtt_password"], bundle["command_key"], bundle["wifi_password"]):
        assert secret not in out
    code = CODE_RE.search(out).group(1)
    uri = claims.claim_uri(logged_in.cloud.url, code)
    assert uri in out
    assert "▀" in out or "▄" in out  # the QR block
    assert uri.startswith("vending-claim:?cloud=")

    machine = logged_in.api(lambda api: api.machines())[0]
    assert machine["id"] == bundle["machine_id"] and machine["location"] == "Ground floor"
    catalog = logged_in.api(lambda api: api.catalog(bundle["machine_id"]))
    assert [(c["slot"], c["name"], c["price"], c["quantity"]) for c in catalog] == [
        ("A1", "Water", 2000, 10),
        ("A2", "Chips", 3000, 5),
    ]

    # Claim: once through the URI form, then never again.
    claimed = tmp_path / "claimed.json"
    assert main(["claim", uri, "--out", str(claimed)]) == 0
    assert json.loads(claimed.read_text()) == bundle
    assert stat.S_IMODE(claimed.stat().st_mode) == 0o600
    capsys.readouterr()
    rc = main(["claim", code.lower(), "--cloud", logged_in.cloud.url, "--out", str(claimed)])
    err = capsys.readouterr().err
    assert rc == 6
    assert "already used" in err and len(err.strip().splitlines()) == 1


def test_default_bundle_path_and_slots_file(logged_in, tmp_path, capsys):
    slots = tmp_path / "slots.json"
    slots.write_text(json.dumps({"items": [{"slot": "B1", "name": "Tea", "price": 1500}]}))
    rc = main(
        [
            "machine",
            "onboard",
            "--name",
            "Cafe",
            "--site",
            logged_in.site_id,
            "--slots",
            str(slots),
            "--no-claim",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "claim code" not in out
    assert "--mqtt-host" in out  # the note about the loopback default
    (path,) = list(Path(".").glob("*.bundle.json"))
    bundle = json.loads(path.read_text())
    assert path.name == f"{bundle['machine_id']}.bundle.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert bundle["mqtt_host"] == "127.0.0.1"


def test_extra_device_settings(logged_in, tmp_path, capsys, one_line_error):
    out_file = tmp_path / "sim.json"
    rc = main(
        [
            "machine",
            "onboard",
            "--name",
            "Sim",
            "--site",
            logged_in.site_id,
            "--no-claim",
            "--out",
            str(out_file),
            "--set",
            'sim_slots={"A1": 10}',
            "--set",
            "hal=sim",
            "--set",
            "drop_pin=34",
        ]
    )
    assert rc == 0, capsys.readouterr()
    bundle = json.loads(out_file.read_text())
    assert bundle["sim_slots"] == {"A1": 10} and bundle["hal"] == "sim"
    assert bundle["drop_pin"] == 34
    for bad in ("machine_id=x", "command_key=00", "no-equals", "=1"):
        rc = main(["machine", "onboard", "--name", "Y", "--site", logged_in.site_id, "--set", bad])
        assert rc == 2
        one_line_error(capsys.readouterr().err)


def _sealed_claim(account, bundle, code, *, tamper=False):
    machine_id = bundle["machine_id"]
    sealed = claims.seal(bundle, code, machine_id)
    ciphertext = sealed.ciphertext
    if tamper:
        raw = bytearray(base64.b64decode(ciphertext))
        raw[5] ^= 0x01
        ciphertext = base64.b64encode(bytes(raw)).decode()
    account.api(
        lambda api: api.create_claim(
            machine_id,
            ciphertext=ciphertext,
            nonce=sealed.nonce,
            code_hash=claims.code_hash(code),
            ttl_s=300,
        )
    )


def test_tampered_or_wrong_code_fails_cleanly(logged_in, tmp_path, capsys, one_line_error):
    out_file = tmp_path / "b.json"
    assert _onboard(logged_in, "--out", str(out_file), "--no-claim") == 0
    bundle = json.loads(out_file.read_text())
    capsys.readouterr()

    code = claims.new_code()
    _sealed_claim(logged_in, bundle, code, tamper=True)
    rc = main(["claim", code, "--cloud", logged_in.cloud.url])
    assert rc == 6
    assert "does not decrypt" in one_line_error(capsys.readouterr().err)

    rc = main(["claim", claims.new_code(), "--cloud", logged_in.cloud.url])
    assert rc == 6
    assert "unknown claim code" in one_line_error(capsys.readouterr().err)

    rc = main(["claim", "ABC", "--cloud", logged_in.cloud.url])
    assert rc == 2
    assert "not a claim code" in one_line_error(capsys.readouterr().err)


def test_claim_crypto_binds_code_and_machine():
    bundle = {"machine_id": "m-1", "command_key": "00" * 32}
    code = claims.new_code()
    sealed = claims.seal(bundle, code, "m-1")
    assert claims.unseal(sealed, code.replace("-", " ").lower(), "m-1") == bundle
    with pytest.raises(claims.ClaimError):
        claims.unseal(sealed, claims.new_code(), "m-1")
    with pytest.raises(claims.ClaimError):
        claims.unseal(sealed, code, "m-2")
    assert claims.normalise_code("abcd-e1o1-il23-4567") == "ABCDE10111234567"
    assert claims.code_hash("ABCD-E101-1123-4567") == claims.code_hash("abcde 1o1il 234567")


@pytest.mark.parametrize(
    "template",
    [
        "A1:Water",
        "A1:Water:20.5:1",
        "A1:Water:2000:x",
        "a-1:Water:2000",
        "A1:Water:2000,A1:Cola:100",
        "",
        "missing.json",
        "A1::2000",
    ],
)
def test_bad_slots_template(logged_in, template, capsys, one_line_error):
    rc = main(
        ["machine", "onboard", "--name", "X", "--site", logged_in.site_id, "--slots", template]
    )
    assert rc == 2, capsys.readouterr()
    one_line_error(capsys.readouterr().err)
    assert logged_in.api(lambda api: api.machines()) == []


def test_unknown_site(logged_in, capsys, one_line_error):
    rc = main(["machine", "onboard", "--name", "X", "--site", "no-such-site"])
    assert rc == 1
    assert "404" in one_line_error(capsys.readouterr().err)

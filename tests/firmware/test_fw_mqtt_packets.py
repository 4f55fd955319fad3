"""vend/mqtt.py packet encoding under MicroPython, checked against an independent encoder."""

import struct
from pathlib import Path

from fw_support import run_micropython

SCRIPT = """
import json
from vend import mqtt
out = {}
out["lengths"] = [mqtt.encode_length(n).hex() for n in DATA]
out["decoded"] = [mqtt.decode_length(mqtt.encode_length(n))[0] for n in DATA]
try:
    mqtt.encode_length(268435456)
    out["too_big"] = "no error"
except mqtt.MQTTError:
    out["too_big"] = "refused"
try:
    mqtt.decode_length(b"\\xff\\xff\\xff\\xff\\x01")
    out["five_bytes"] = "no error"
except mqtt.MQTTError:
    out["five_bytes"] = "refused"
will = ("devices/M1/status/presence", '{"online": false}', 1, True)
out["connect"] = mqtt.connect_packet("M1", "M1", "s3cret", 30, False, will).hex()
out["connect_plain"] = mqtt.connect_packet("M1", None, None, 60, True).hex()
out["publish0"] = mqtt.publish_packet("a/b", b"hi").hex()
out["publish1"] = mqtt.publish_packet("a/b", b"x" * 200, 1, True, 513, True).hex()
out["subscribe"] = mqtt.subscribe_packet(7, [("devices/M1/commands/#", 1), ("x", 0)]).hex()
out["puback"] = mqtt.puback_packet(258).hex()
pkt = mqtt.publish_packet("devices/M1/acks", b'{"ids": []}', 1, False, 9)
n, pos = mqtt.decode_length(pkt, 1)
out["parsed"] = list(mqtt.parse_publish(pkt[0], pkt[pos:]))
out["parsed"][1] = out["parsed"][1].decode()
print(json.dumps(out))
"""

LENGTHS = [0, 1, 127, 128, 16383, 16384, 2097151, 2097152, 268435455]


def _length(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _s(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("!H", len(raw)) + raw


def _packet(first: int, body: bytes) -> str:
    return (bytes([first]) + _length(len(body)) + body).hex()


def test_packets_match_the_mqtt_3_1_1_layout(tmp_path: Path) -> None:
    got = run_micropython(SCRIPT, tmp_path, LENGTHS)
    assert isinstance(got, dict)
    assert got["lengths"] == [_length(n).hex() for n in LENGTHS]
    assert got["lengths"][:4] == ["00", "01", "7f", "8001"]
    assert got["decoded"] == LENGTHS
    assert got["too_big"] == "refused" and got["five_bytes"] == "refused"

    # clean_session 0, will QoS 1 retained, username and password
    flags = 0x04 | (1 << 3) | 0x20 | 0x80 | 0x40
    head = b"\x00\x04MQTT\x04" + bytes([flags]) + struct.pack("!H", 30)
    payload = (
        _s("M1") + _s("devices/M1/status/presence") + _s('{"online": false}') + _s("M1")
    ) + _s("s3cret")
    assert got["connect"] == _packet(0x10, head + payload)
    head = b"\x00\x04MQTT\x04" + bytes([0x02]) + struct.pack("!H", 60)
    assert got["connect_plain"] == _packet(0x10, head + _s("M1"))

    assert got["publish0"] == _packet(0x30, _s("a/b") + b"hi")
    body = _s("a/b") + struct.pack("!H", 513) + b"x" * 200
    assert got["publish1"] == _packet(0x30 | 0x08 | 0x02 | 0x01, body)
    body = struct.pack("!H", 7) + _s("devices/M1/commands/#") + b"\x01" + _s("x") + b"\x00"
    assert got["subscribe"] == _packet(0x82, body)
    assert got["puback"] == "40020102"
    assert got["parsed"] == ["devices/M1/acks", '{"ids": []}', 1, 9]

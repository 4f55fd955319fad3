"""vend/hmac.py under MicroPython agrees with CPython's hmac (and RFC 4231)."""

import hashlib
import hmac
from pathlib import Path

from fw_support import run_micropython

SCRIPT = """
import json
from binascii import unhexlify
from vend import hmac
cases = DATA
out = [hmac.hexdigest(unhexlify(k), unhexlify(m)) for k, m in cases]
checks = [
    hmac.compare("abc", "abc"), hmac.compare("abc", "abd"), hmac.compare("abc", "ab"),
    hmac.compare(b"\\x00\\x01", b"\\x00\\x01"), hmac.compare("", ""),
]
print(json.dumps({"digests": out, "compare": checks}))
"""

CASES = [
    (b"\x0b" * 20, b"Hi There"),  # RFC 4231 test case 1
    (b"Jefe", b"what do ya want for nothing?"),  # case 2
    (b"\xaa" * 131, b"Test Using Larger Than Block-Size Key - Hash Key First"),  # case 6
    (b"", b""),
    (b"k" * 64, b"exactly one block of key"),
    (bytes(range(32)), b'{"cmd_id":"x","ctr":1}' * 50),
]
RFC4231_CASE1 = "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"


def test_hmac_matches_cpython(tmp_path: Path) -> None:
    cases = [(k.hex(), m.hex()) for k, m in CASES]
    got = run_micropython(SCRIPT, tmp_path, cases)
    assert isinstance(got, dict)
    expected = [hmac.new(k, m, hashlib.sha256).hexdigest() for k, m in CASES]
    assert got["digests"] == expected
    assert got["digests"][0] == RFC4231_CASE1
    assert got["compare"] == [True, False, False, True, True]

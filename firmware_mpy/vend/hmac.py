# HMAC-SHA256 (RFC 2104) on top of hashlib.sha256; MicroPython has no hmac module.
import hashlib
from binascii import hexlify

from micropython import const

_BLOCK = const(64)


def _pad(key, byte):
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    out = bytearray(_BLOCK)
    for i in range(len(key)):
        out[i] = key[i]
    for i in range(_BLOCK):
        out[i] ^= byte
    return out


def digest(key, msg):
    inner = hashlib.sha256(_pad(key, 0x36))
    inner.update(msg)
    outer = hashlib.sha256(_pad(key, 0x5C))
    outer.update(inner.digest())
    return outer.digest()


def hexdigest(key, msg):
    # msg may be a str (its UTF-8 bytes are hashed): no encoded copy of a message is made
    return hexlify(digest(key, msg)).decode()


def compare(a, b):
    # Constant time for equal lengths: the loop never exits early on a mismatch.
    if isinstance(a, str):
        a = a.encode()
    if isinstance(b, str):
        b = b.encode()
    if len(a) != len(b):
        return False
    diff = 0
    for i in range(len(a)):
        diff |= a[i] ^ b[i]
    return diff == 0

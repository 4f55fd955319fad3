# Payloads the device publishes (see contracts/device_messages.py on the host side), the signer
# for those that move money or stock, and the bounded telemetry queue. Money events do not go
# through this queue: they live in the journal.
import asyncio
import json

from vend import hmac

# topic suffixes under devices/{machine_id}/
PRESENCE = "status/presence"
HEALTH = "status/health"
INVENTORY = "status/inventory"
DISPENSE_RESULT = "events/dispense"
CASH_CREDIT = "events/cash"
LOGS = "logs"
DISPENSE_COMMAND = "commands/dispense"
ACKS = "acks"

OFFLINE = '{"online": false}'


def presence(fw, boot, ts):
    return json.dumps({"online": True, "fw": fw, "boot": boot, "ts": ts})


def health(fw, uptime_s, heap_free, temp_c, door_open, rssi, dropped, acks_refused, ts):
    return json.dumps(
        {
            "fw": fw,
            "uptime_s": uptime_s,
            "heap_free": heap_free,
            "temp_c": temp_c,
            "door_open": door_open,
            "rssi": rssi,
            "dropped": dropped,
            "acks_refused": acks_refused,
            "ts": ts,
        }
    )


def inventory(slots, ts):
    return {"slots": slots, "ts": ts}


def log(level, msg, ts):
    return json.dumps({"level": level, "msg": msg[:1024], "ts": ts})


def cash(event_id, amount, currency, ts):
    return {"id": event_id, "amount": amount, "currency": currency, "ts": ts}


class Signer:
    """Signs what moves money or stock (cash, dispense results, inventory) for the gateway:
    {"v":1,"body":"<JSON with mid and seq>","sig":"<HMAC-SHA256 hex of the body, key k_up>"}
    (contracts/signing.py). The seq comes from the journal, so it never repeats."""

    def __init__(self, key, mid, journal, clock):
        self._key = key
        self._mid = mid
        self._journal = journal
        self._clock = clock

    def seal(self, fields):
        """dict -> envelope text. Raises JournalError if no seq can be reserved."""
        fields["mid"] = self._mid
        fields["seq"] = self._journal.next_seq(self._clock.ts())
        body = json.dumps(fields, separators=(",", ":"))
        sig = hmac.hexdigest(self._key, body)
        # join sizes the envelope once (no growing buffer): the heap is the scarce resource
        return "".join(('{"v":1,"body":', json.dumps(body), ',"sig":"', sig, '"}'))


class Telemetry:
    """Bounded FIFO of (topic suffix, JSON text); when full the oldest is dropped and counted."""

    def __init__(self, size):
        self.size = size
        self.items = []
        self.dropped = 0
        self.ready = asyncio.Event()

    def put(self, suffix, text):
        if len(self.items) >= self.size:
            self.items.pop(0)
            self.dropped += 1
        self.items.append((suffix, text))
        self.ready.set()

    def take(self):
        item = self.items.pop(0)
        if not self.items:
            self.ready.clear()
        return item

    def put_back(self, item):
        # A send failed: keep the item first in line unless newer telemetry filled the queue.
        if len(self.items) < self.size:
            self.items.insert(0, item)
            self.ready.set()
        else:
            self.dropped += 1

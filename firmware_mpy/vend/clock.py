# Wall clock in unix seconds. The unix port's clock is real. An ESP32 is set by NTP once
# Wi-Fi is up; until then the clock is estimated from the `ts` of the newest verified command
# (the gateway's time at signing) plus the ticks elapsed since it arrived. With neither, the
# time is unknown: expiry is not checked and messages carry ts 0.
import time

# Ports whose epoch is 2000-01-01 (the ESP32) need this added to get unix time.
_EPOCH_OFFSET = 946684800 if time.gmtime(0)[0] == 2000 else 0


class Clock:
    def __init__(self, synced):
        self.synced = synced
        self._base = None
        self._at = 0

    def now(self):
        if self.synced:
            return int(time.time()) + _EPOCH_OFFSET
        if self._base is None:
            return None
        return self._base + time.ticks_diff(time.ticks_ms(), self._at) // 1000

    def ts(self):
        n = self.now()
        return 0 if n is None else n

    def observe(self, ts):
        """A verified command says the gateway's time was `ts` when it signed it."""
        if self.synced:
            return
        now = self.now()
        if now is None or ts > now:
            self._base = ts
            self._at = time.ticks_ms()

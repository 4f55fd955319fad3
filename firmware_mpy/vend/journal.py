# The journal on flash: the last accepted command counter, the boot counter, the reservation of
# the signed-message counter, and every money event (dispense results, cash credits) until the
# gateway has acknowledged it.
#
# The whole journal is one small JSON file, rewritten atomically (temp file, then rename) at
# every change, so after a power cut it is either the old or the new version, never half.
#
# Entry: [id, kind, state, acked, payload]
#   kind    "d" dispense (id == cmd_id) | "c" cash credit
#   state   "started": the motor may have run, no outcome yet (only dispenses)
#           "done":    payload is the exact signed envelope to publish, so every resend is
#                      byte-identical (same seq) and the gateway can tell it from a replay
#   payload for "started": the result without outcome (id, cmd_id, order_id, item_id, slot)
#
# Acked dispenses keep their full entry (to answer a replay with the recorded result) for the
# newest `keep_results`; older ones shrink to their id in `acked` (the newest `keep` ids), and
# anything older still is refused by the counter. A full entry (its signed envelope) costs ~610
# bytes of heap on the 64-bit unix port, an id ~70, hence the two limits.
#
# Signed-message counter (seq, docs/protocol.md): every signed message carries a seq above all
# earlier ones. Writing flash for every inventory report would wear it out, so the journal
# persists a reservation `s` and hands out seqs up to it from RAM; when the block is used up it
# reserves the next one (one flash write per SEQ_BLOCK messages). After a reboot it starts
# from the reservation: the seqs skipped are never used, which the gateway does not mind.
import json
import os

DISPENSE = "d"
CASH = "c"
STARTED = "started"
DONE = "done"
SEQ_BLOCK = 64


class JournalError(Exception):
    pass


class Journal:
    def __init__(self, path="journal.json", keep=64, keep_results=5):
        self.path = path
        self._tmp = path + ".tmp"
        self.keep = keep
        self.keep_results = keep_results
        self.ctr = 0
        self.boot = 0
        self.entries = []
        self.acked = []  # ids of older acked dispenses, oldest first
        self.seq = 0  # last seq handed out (RAM)
        self.seq_reserved = 0  # on flash: no seq above it was ever handed out
        # A journal that cannot be read must not be replaced by an empty one: that would
        # forget which commands already ran. Dispensing stays refused until someone looks.
        self.broken = None
        self._load()

    def _load(self):
        try:
            f = open(self.path)
        except OSError:
            return  # first boot
        try:
            with f:
                data = json.load(f)
            self.ctr = int(data["ctr"])
            self.boot = int(data["boot"])
            self.entries = list(data["e"])
            self.acked = list(data.get("a", ()))
            self.seq_reserved = int(data.get("s", 0))
            self.seq = self.seq_reserved
        except (ValueError, KeyError, TypeError) as exc:
            self.broken = "journal unreadable: %r" % exc

    def save(self):
        try:
            with open(self._tmp, "w") as f:
                json.dump(
                    {
                        "v": 1,
                        "ctr": self.ctr,
                        "boot": self.boot,
                        "e": self.entries,
                        "a": self.acked,
                        "s": self.seq_reserved,
                    },
                    f,
                )
            os.rename(self._tmp, self.path)
        except OSError as exc:
            raise JournalError("journal write failed: %r" % exc) from exc

    def find(self, entry_id):
        for e in self.entries:
            if e[0] == entry_id:
                return e
        return None

    def was_acked(self, entry_id):
        return entry_id in self.acked

    def unacked(self):
        return [e for e in self.entries if e[2] == DONE and not e[3]]

    def next_seq(self, ts=0):
        """The next signed-message counter. Raises JournalError when a new block cannot be
        reserved on flash (then nothing may be signed: a reboot could hand out the seq again).

        With no reservation yet (new or wiped flash) counting starts above the clock `ts` in
        seconds, so a re-flashed device carrying the same key is not taken for a replay of its
        old self. Taken at the first signing, not at boot: an ESP32 has its NTP time by then."""
        if self.seq_reserved == 0 and self.seq < ts:
            self.seq = ts
        if self.seq >= self.seq_reserved:
            old = self.seq_reserved
            self.seq_reserved = self.seq + SEQ_BLOCK
            # A broken journal is never overwritten (see __init__); its seqs stay in RAM.
            if self.broken is None:
                try:
                    self.save()
                except JournalError:
                    self.seq_reserved = old
                    raise
        self.seq += 1
        return self.seq

    def start_boot(self, ts, seal):
        """Count this power-up and turn every interrupted dispense into an 'unknown' result,
        signed with `seal` (dict -> envelope text). Un-acked events journalled unsigned by
        firmware from before signing are signed now, or the gateway would refuse them forever.

        Returns the ids of the interrupted dispenses. Never re-runs them."""
        self.boot += 1
        if self.seq_reserved == 0 and ts:
            # The clock is known: reserve the first block now, with this boot's write.
            self.seq = ts
            self.seq_reserved = ts + SEQ_BLOCK
        lost = []
        for e in self.entries:
            if e[2] == STARTED:
                result = json.loads(e[4])
                result["result"] = "unknown"
                result["reason"] = "power_loss"
                result["ts"] = ts
                e[4] = seal(result)
                e[2] = DONE
                lost.append(e[0])
            elif not e[3] and not e[4].startswith('{"v":1,"body":'):
                e[4] = seal(json.loads(e[4]))
        if self.broken is None:
            self.save()
        return lost

    def start(self, cmd_id, ctr, template):
        """Persist 'started' before the motor runs. Raises JournalError (nothing changed)."""
        old_ctr = self.ctr
        self.ctr = ctr
        self.entries.append([cmd_id, DISPENSE, STARTED, False, template])
        self._compact()
        try:
            self.save()
        except JournalError:
            self.entries.pop()
            self.ctr = old_ctr
            raise

    def finish(self, cmd_id, payload):
        e = self.find(cmd_id)
        e[2] = DONE
        e[4] = payload
        self.save()

    def record(self, entry_id, kind, payload, ctr=None):
        """A finished event that never had a 'started' step (cash, expired commands)."""
        old_ctr = self.ctr
        if ctr is not None:
            self.ctr = ctr
        self.entries.append([entry_id, kind, DONE, False, payload])
        try:
            self.save()
        except JournalError:
            self.entries.pop()
            self.ctr = old_ctr
            raise

    def ack(self, ids):
        """Mark acknowledged events; -> number newly acknowledged."""
        n = 0
        for e in self.entries:
            if not e[3] and e[2] == DONE and e[0] in ids:
                e[3] = True
                n += 1
        if n:
            self._compact()
            self.save()
        return n

    def _compact(self):
        # Acked cash credits are no longer needed; acked dispenses shrink as described at the
        # top. Un-acked and started entries are never dropped.
        full = 0
        for e in self.entries:
            if e[1] == DISPENSE and e[3]:
                full += 1
        excess = full - self.keep_results
        kept = []
        for e in self.entries:
            if e[3]:
                if e[1] == CASH:
                    continue
                if excess > 0:
                    excess -= 1
                    self.acked.append(e[0])
                    continue
            kept.append(e)
        self.entries = kept
        if len(self.acked) > self.keep:
            self.acked = self.acked[-self.keep :]

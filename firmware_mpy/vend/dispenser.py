# Running verified dispense commands, one at a time, at most once per cmd_id.
#
# The order of steps is the at-most-once argument (docs/firmware.md):
#   1. a cmd_id already in the journal is answered from the journal, never run again (ids
#      the gateway acked long ago are remembered without their result and just ignored);
#   2. a counter not above the last accepted one is refused (covers ids compacted away);
#   3. "started" is on flash BEFORE the motor turns, so a power cut leaves a "started" entry,
#      which the next boot reports as "unknown" instead of running it again.
import asyncio
import json

from vend import commands
from vend.journal import DISPENSE, DONE, JournalError
from vend.reports import DISPENSE_RESULT


class Dispenser:
    def __init__(self, dev, cfg, hal, journal, clock):
        self._dev = dev
        self._key = cfg["down_key"]
        self._mid = cfg["machine_id"]
        self._motor_ms = cfg["motor_ms"]
        self._drop_ms = cfg["drop_timeout_ms"]
        self._hal = hal
        self._journal = journal
        self._clock = clock
        # Highest counter answered without a journal entry (flash write failed): copies of that
        # command still queued must not run once the flash works again.
        self._ram_ctr = 0
        self.lock = asyncio.Lock()

    async def handle(self, payload):
        try:
            body = commands.verify(payload, self._key, self._mid)
        except commands.Refused as refused:
            self._dev.log("warning", "refused command: " + refused.args[0])
            return
        async with self.lock:
            await self._run(body)

    async def _run(self, body):
        journal = self._journal
        cmd_id = body["cmd_id"]
        entry = journal.find(cmd_id)
        if entry is not None and entry[2] == DONE:
            self._dev.log("info", "replayed command %s: recorded result re-sent" % cmd_id)
            await self._dev.publish_event(DISPENSE_RESULT, entry[4])
            return
        if journal.was_acked(cmd_id):
            self._dev.log("info", "replayed command %s: already done and acknowledged" % cmd_id)
            return
        if journal.broken:
            self._dev.log("error", "refused command %s: %s" % (cmd_id, journal.broken))
            return
        if body["ctr"] <= journal.ctr or body["ctr"] <= self._ram_ctr:
            self._dev.log("warning", "refused command %s: stale_counter" % cmd_id)
            return
        now = self._clock.now()
        result = {
            "id": cmd_id,
            "cmd_id": cmd_id,
            "order_id": body["order_id"],
            "item_id": body["item_id"],
            "slot": body["slot"],
        }
        if now is not None and body["exp"] < now:
            self._finish_unrun(result, body["ctr"], "expired")
            return
        self._clock.observe(body["ts"])
        slot = body["slot"]
        if not self._hal.has_slot(slot):
            self._finish_unrun(result, body["ctr"], "unknown_slot")
            return
        if self._hal.stock(slot) == 0:
            self._finish_unrun(result, body["ctr"], "empty")
            return
        try:
            journal.start(cmd_id, body["ctr"], json.dumps(result))
        except JournalError as exc:
            # Money before motor: no record, no vend. The motor did not run, so say so.
            self._dev.log("error", "refused command %s: %r" % (cmd_id, exc))
            self._ram_ctr = max(self._ram_ctr, body["ctr"])
            result.update(result="failed", reason="storage", ts=self._clock.ts())
            try:
                text = self._dev.signer.seal(result)
            except JournalError as exc:
                # No seq without flash: the gateway's timeout reports it unknown instead.
                self._dev.log("error", "result of %s not signed: %r" % (cmd_id, exc))
                return
            await self._dev.publish_event(DISPENSE_RESULT, text)
            return
        await self._hal.run_motor(slot, cmd_id, self._motor_ms)
        dropped = await self._hal.wait_drop(slot, self._drop_ms)
        if dropped:
            result.update(result="ok", reason=None)
        else:
            result.update(result="failed", reason="jam")
        result["ts"] = self._clock.ts()
        try:
            journal.finish(cmd_id, self._dev.signer.seal(result))
        except JournalError as exc:
            # The entry stays "started" on flash (reported unknown after a reboot); the result
            # is in memory and is still sent until acked.
            self._dev.log("error", "result of %s not persisted: %r" % (cmd_id, exc))
        self._dev.log("info", "dispensed %s slot %s: %s" % (cmd_id, slot, result["result"]))
        self._dev.events_changed()
        self._dev.report_inventory()

    def _finish_unrun(self, result, ctr, reason):
        result.update(result="failed", reason=reason, ts=self._clock.ts())
        try:
            self._journal.record(result["id"], DISPENSE, self._dev.signer.seal(result), ctr)
        except JournalError as exc:
            self._dev.log("error", "result of %s not persisted: %r" % (result["id"], exc))
            return
        self._dev.log("warning", "command %s not run: %s" % (result["id"], reason))
        self._dev.events_changed()

# The device: one supervisor owns the MQTT connection (and every reconnect); small coroutines
# linked by events do the rest: commands, money-event resends, telemetry, health, cash.
import asyncio
import binascii
import gc
import os
import random
import sys
from time import ticks_diff, ticks_ms

from micropython import const

from vend import VERSION, commands, reports
from vend.clock import Clock
from vend.dispenser import Dispenser
from vend.journal import CASH, DISPENSE, Journal, JournalError
from vend.mqtt import MQTTClient, MQTTError

_MAX_PACKET = const(4608)  # contracts.device_messages.MAX_PAYLOAD_BYTES plus topic and headers
_COMMAND_QUEUE = const(8)
_GC_EVERY = const(4096)  # bytes allocated between collections
_CONNECT_TIMEOUT_MS = const(10000)
# What the running device still reads from the config (the rest served the boot: a smaller
# dict stays in the heap).
_RUNTIME_KEYS = const(
    (
        "mqtt_host", "mqtt_port", "mqtt_user", "mqtt_password", "mqtt_keepalive_s",
        "backoff_min_ms", "backoff_max_ms", "resend_interval_s", "health_interval_s",
        "currency", "down_key",
    )
)  # fmt: skip
_LINK_ERRORS = (OSError, MQTTError, EOFError, asyncio.TimeoutError)


class Device:
    def __init__(self, cfg, hw):
        self.cfg = cfg
        self.hal = hw
        self.mid = cfg["machine_id"]
        self.base = "devices/%s/" % self.mid
        self.journal = Journal(keep=cfg["journal_keep"], keep_results=cfg["journal_keep_results"])
        self.clock = Clock(hw.clock_synced())
        self.telemetry = reports.Telemetry(cfg["telemetry_queue"])
        self.signer = reports.Signer(cfg["up_key"], self.mid, self.journal, self.clock)
        self.dispenser = Dispenser(self, cfg, hw, self.journal, self.clock)
        self.commands = []
        self.commands_ready = asyncio.Event()
        self.events_due = asyncio.Event()  # resend un-acked money events now
        self.acks_refused = 0  # acks whose signature or machine id did not verify
        self.up = asyncio.Event()
        self.lost = asyncio.Event()
        self.client = None
        self.started = ticks_ms()
        self.cfg = {k: cfg[k] for k in _RUNTIME_KEYS}

    # -- reporting ---------------------------------------------------------------------------

    def log(self, level, msg):
        print("LOG", level, msg)
        self.telemetry.put(reports.LOGS, reports.log(level, msg, self.clock.ts()))

    def report_health(self):
        gc.collect()
        self.telemetry.put(
            reports.HEALTH,
            reports.health(
                VERSION,
                ticks_diff(ticks_ms(), self.started) // 1000,
                gc.mem_free(),
                self.hal.temp_c(),
                self.hal.door_open(),
                self.hal.rssi(),
                self.telemetry.dropped,
                self.acks_refused,
                self.clock.ts(),
            ),
        )

    def report_inventory(self):
        try:
            text = self.signer.seal(reports.inventory(self.hal.slots(), self.clock.ts()))
        except JournalError as exc:
            self.log("error", "inventory not signed: %r" % exc)
            return
        self.telemetry.put(reports.INVENTORY, text)

    def events_changed(self):
        self.events_due.set()

    # -- the link ----------------------------------------------------------------------------

    def link_down(self, why):
        if self.up.is_set():
            print("LINK down", repr(why))
            self.up.clear()
            self.lost.set()

    async def publish(self, suffix, text, qos=0, retain=False):
        """-> True if sent (QoS 1: acknowledged). Failures hand the link to the supervisor."""
        if not self.up.is_set():
            return False
        client = self.client
        if client is None:
            return False
        try:
            await client.publish(self.base + suffix, text, qos, retain)
            return True
        except _LINK_ERRORS as exc:
            if client is self.client:  # a late failure of an old link must not end a new one
                self.link_down(exc)
            return False

    async def publish_event(self, suffix, text):
        return await self.publish(suffix, text, 1)

    def on_message(self, topic, msg):
        if topic is None:
            self.log("warning", "oversized message dropped (limit %d bytes)" % _MAX_PACKET)
            return
        if not topic.startswith(self.base):
            return
        suffix = topic[len(self.base) :]
        if suffix == reports.DISPENSE_COMMAND:
            if len(self.commands) >= _COMMAND_QUEUE:
                # The gateway re-sends until it hears a result, so dropping here loses nothing.
                self.log("warning", "command queue full, command dropped")
                return
            self.commands.append(msg)
            self.commands_ready.set()
        elif suffix == reports.ACKS:
            self._on_acks(msg)
        else:
            self.log("info", "ignored message on " + suffix)

    def _on_acks(self, msg):
        # Only the gateway's signature (k_down) may make the device forget a money event: the
        # broker's ACL says nothing about who wrote the bytes on a plain-text LAN.
        try:
            ids = commands.open_signed(msg, self.cfg["down_key"], self.mid).get("ids")
            if not isinstance(ids, list):
                raise commands.Refused("malformed_body")
        except commands.Refused as exc:
            self.acks_refused += 1
            self.log("warning", "refused acks: %s (%d so far)" % (exc.args[0], self.acks_refused))
            return
        try:
            n = self.journal.ack(ids)
            print("EVENTS acked", n, "pending", len(self.journal.unacked()))
        except JournalError as exc:
            self.log("error", repr(exc))

    async def _guard(self, coro):
        try:
            await coro
        except _LINK_ERRORS as exc:
            self.link_down(exc)
        except Exception as exc:  # a bug in handling one message must not leave a dead link
            self.log("error", "link task failed: %r" % exc)
            self.link_down(exc)

    async def _on_connect(self, client):
        ts = self.clock.ts()
        if not await self.publish(
            reports.PRESENCE, reports.presence(VERSION, self.journal.boot, ts), 1, True
        ):
            return
        b = self.base
        filters = [(b + "commands/#", 1), (b + reports.ACKS, 1), (b + "config/#", 1)]
        try:
            granted = await client.subscribe(filters)
            # Without commands and acks the device is useless: fail and retry with backoff.
            # A refused config/# only costs remote configuration, so just say so.
            if 0x80 in granted[:2]:
                raise MQTTError("broker refused subscription %r" % granted)
        except _LINK_ERRORS as exc:
            self.log("error", "subscribe failed: %r" % exc)
            self.link_down(exc)
            return
        if granted[2] == 0x80:
            self.log("warning", "broker refused " + filters[2][0])
        print("LINK ready")
        self.report_health()
        self.report_inventory()
        self.events_due.set()

    async def supervisor(self):
        cfg = self.cfg
        backoff = cfg["backoff_min_ms"]
        will = (self.base + reports.PRESENCE, reports.OFFLINE, 1, True)
        while True:
            client = None
            try:
                await self.hal.network_up(_CONNECT_TIMEOUT_MS)
                if not self.clock.synced and self.hal.sync_time():
                    self.clock.synced = True
                client = MQTTClient(
                    self.mid,
                    cfg["mqtt_user"],
                    cfg["mqtt_password"],
                    cfg["mqtt_keepalive_s"],
                    will,
                    self.on_message,
                    _MAX_PACKET,
                )
                await client.connect(cfg["mqtt_host"], cfg["mqtt_port"], _CONNECT_TIMEOUT_MS)
            except _LINK_ERRORS as exc:
                print("LINK connect failed", repr(exc))
                if client is not None:
                    await client.close()
                client = None
            if client is not None:
                print("LINK up")
                since = ticks_ms()
                self.client = client
                self.lost.clear()
                self.up.set()
                reader = asyncio.create_task(self._guard(client.run()))
                pinger = asyncio.create_task(self._guard(client.keepalive()))
                await self._on_connect(client)
                await self.lost.wait()
                reader.cancel()
                pinger.cancel()
                await client.close()
                # Only a link that held for a while resets the backoff, so a broker that
                # accepts and then drops us at once is not hammered.
                if ticks_diff(ticks_ms(), since) > cfg["mqtt_keepalive_s"] * 1000:
                    backoff = cfg["backoff_min_ms"]
            # capped exponential backoff with jitter: wait between half and all of it
            delay = backoff // 2 + random.getrandbits(16) % (backoff // 2 + 1)
            backoff = min(backoff * 2, cfg["backoff_max_ms"])
            await asyncio.sleep_ms(delay)

    # -- workers -----------------------------------------------------------------------------

    async def command_worker(self):
        while True:
            await self.commands_ready.wait()
            while self.commands:
                await self.dispenser.handle(self.commands.pop(0))
                gc.collect()
            self.commands_ready.clear()

    async def event_sender(self):
        """Money events: sent on change and on connect, then every resend_interval_s (kicked
        by the ticker), until the gateway acks their ids."""
        while True:
            await self.events_due.wait()
            self.events_due.clear()
            if not self.up.is_set():
                continue
            for entry in self.journal.unacked():
                suffix = reports.DISPENSE_RESULT if entry[1] == DISPENSE else reports.CASH_CREDIT
                if entry[3]:
                    continue  # acked while we were sending the previous one
                if not await self.publish_event(suffix, entry[4]):
                    break

    async def telemetry_sender(self):
        q = self.telemetry
        while True:
            await q.ready.wait()
            await self.up.wait()
            while q.items and self.up.is_set():
                item = q.take()
                if not await self.publish(item[0], item[1]):
                    q.put_back(item)

    async def ticker(self):
        """Every resend_interval_s a kick to the event sender, every health_interval_s health.
        One loop of plain sleeps: asyncio.wait_for would allocate a task at every wait, and
        that churn fragments a small heap."""
        resend = max(1, self.cfg["resend_interval_s"])
        health = max(1, self.cfg["health_interval_s"])
        n = 0
        while True:
            await asyncio.sleep(1)
            n += 1
            if n % resend == 0:
                self.events_due.set()
            if n % health == 0:
                self.report_health()

    async def cash_watcher(self):
        while True:
            amount = await self.hal.next_credit()
            event_id = binascii.hexlify(os.urandom(16)).decode()
            fields = reports.cash(event_id, amount, self.cfg["currency"], self.clock.ts())
            text = None
            # The money is already in the machine: keep trying until it is on flash.
            while True:
                try:
                    if text is None:
                        text = self.signer.seal(fields)
                    self.journal.record(event_id, CASH, text)
                    break
                except JournalError as exc:
                    self.log("error", "cash credit not persisted, retrying: %r" % exc)
                    await asyncio.sleep(1)
            self.log("info", "cash credit %d %s" % (amount, event_id))
            self.events_due.set()

    async def run(self):
        journal = self.journal
        lost = []
        if journal.broken:
            journal.boot += 1
        else:
            lost = journal.start_boot(self.clock.ts(), self.signer.seal)
        await self.hal.start()
        print("BOOT", self.mid, VERSION, journal.boot)
        self.log("info", "boot %d fw %s" % (journal.boot, VERSION))
        if journal.broken:
            self.log("error", journal.broken)
        for cmd_id in lost:
            self.log("warning", "dispense %s interrupted by power loss: unknown" % cmd_id)
        tasks = [
            asyncio.create_task(self.supervisor()),
            asyncio.create_task(self.command_worker()),
            asyncio.create_task(self.event_sender()),
            asyncio.create_task(self.telemetry_sender()),
            asyncio.create_task(self.ticker()),
            asyncio.create_task(self.cash_watcher()),
        ]
        gc.collect()
        # Collect after every few KB allocated instead of when the heap is full: garbage is
        # freed while it is still small holes, so the heap fragments less (docs/firmware.md).
        gc.threshold(_GC_EVERY)
        print("READY heap_free", gc.mem_free())
        await asyncio.gather(*tasks)


def _forget(name):
    # Boot-only modules: drop every reference so their code and constants are collected
    # (the heap is the scarce resource, docs/firmware.md "Heap").
    sys.modules.pop("vend." + name, None)
    import vend

    try:
        delattr(vend, name)
    except AttributeError:
        pass


def _boot():
    """-> (cfg, hal) or None if the config cannot be used. The config loader and the HAL
    chooser run once; their modules are forgotten afterwards."""
    from vend import config, hal

    try:
        cfg = config.load()
    except config.ConfigError as exc:
        print("FATAL config:", exc)
        return None
    finally:
        _forget("config")
    hw = hal.create(cfg)
    _forget("hal")
    return cfg, hw


def main():
    setup = _boot()
    if setup is None:
        return
    device = Device(setup[0], setup[1])
    del setup
    gc.collect()
    try:
        asyncio.run(device.run())
    except Exception as exc:
        print("FATAL", repr(exc))
        if sys.platform == "esp32":
            import machine
            import time

            time.sleep(5)
            machine.reset()
        raise

# Simulated hardware for the unix port, driven by tests over a line-JSON TCP control port on
# 127.0.0.1. Markers on stdout (one line each, the harness reads them):
#   SIM_PORT <port>            control server ready
#   SIM_MOTOR <slot> <cmd_id>  a motor run began
#   SIM_HOLD motor <cmd_id>    a held motor run is waiting for {"op": "release"} (or a power cut)
import asyncio
import gc
import json
import random

_OPS = ("state", "coin", "jam", "stock", "door", "temp", "hold", "release")


class SimHal:
    def __init__(self, cfg):
        self._stock = dict(cfg["sim_slots"])
        self._port = cfg["sim_port"]
        self._jams = set()
        self._door = False
        self._temp = 4.0
        self._credits = []
        self._credit_ready = asyncio.Event()
        self._hold = False
        self._holding = None
        self._release = asyncio.Event()
        self.motor_runs = 0

    async def start(self):
        port = self._port
        for _ in range(50):
            # The unix port cannot read back a kernel-chosen port, so "0" means: try random
            # high ports until one is free.
            if not self._port:
                port = 20000 + random.getrandbits(15) % 40000
            try:
                await asyncio.start_server(self._serve, "127.0.0.1", port)
                break
            except OSError:
                if self._port:
                    raise
        else:
            raise OSError("no free control port")
        print("SIM_PORT", port)

    async def _serve(self, reader, writer):
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                try:
                    reply = self._op(json.loads(line))
                except Exception as exc:  # a bad request must not stop the simulator
                    reply = {"ok": False, "error": repr(exc)}
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except OSError:
            pass
        writer.close()
        await writer.wait_closed()

    def _op(self, req):
        op = req.get("op")
        if op not in _OPS:
            return {"ok": False, "error": "unknown op"}
        if op == "coin":
            amount = req["amount"]
            if not isinstance(amount, int) or amount <= 0:
                return {"ok": False, "error": "amount must be a positive integer (paise)"}
            self._credits.append(amount)
            self._credit_ready.set()
        elif op == "jam":
            if req.get("on", True):
                self._jams.add(req["slot"])
            else:
                self._jams.discard(req["slot"])
        elif op == "stock":
            self._stock[req["slot"]] = int(req["qty"])
        elif op == "door":
            self._door = bool(req["open"])
        elif op == "temp":
            self._temp = req["c"]
        elif op == "hold":
            self._hold = True
        elif op == "release":
            self._hold = False
            self._release.set()
        gc.collect()
        return {
            "ok": True,
            "slots": self._stock,
            "jams": list(self._jams),
            "door": self._door,
            "temp": self._temp,
            "coins_pending": len(self._credits),
            "motor_runs": self.motor_runs,
            "holding": self._holding,
            "heap_free": gc.mem_free(),
        }

    async def network_up(self, timeout_ms):
        return

    def sync_time(self):
        return True

    def clock_synced(self):
        return True

    def rssi(self):
        return None

    def door_open(self):
        return self._door

    def temp_c(self):
        return self._temp

    def slots(self):
        return dict(self._stock)

    def has_slot(self, slot):
        return slot in self._stock

    def stock(self, slot):
        return self._stock.get(slot)

    async def run_motor(self, slot, cmd_id, ms):
        self.motor_runs += 1
        print("SIM_MOTOR", slot, cmd_id)
        if self._hold:
            self._hold = False
            self._holding = cmd_id
            self._release.clear()
            print("SIM_HOLD motor", cmd_id)
            await self._release.wait()
            self._holding = None
        await asyncio.sleep_ms(ms)

    async def wait_drop(self, slot, timeout_ms):
        if slot in self._jams or not self._stock.get(slot):
            await asyncio.sleep_ms(timeout_ms)
            return False
        self._stock[slot] -= 1
        return True

    async def next_credit(self):
        while not self._credits:
            self._credit_ready.clear()
            await self._credit_ready.wait()
        return self._credits.pop(0)

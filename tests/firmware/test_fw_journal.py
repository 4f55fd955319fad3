"""vend/journal.py under MicroPython: persistence, recovery, acks and bounded compaction, and
the signed-message counter (reserved in blocks on flash, never handed out twice)."""

import json
from pathlib import Path

from fw_support import run_micropython

SCRIPT = """
import json, os
from vend.journal import Journal
out = {}
j = Journal("j.json", keep=5, keep_results=2)
out["fresh"] = [j.ctr, j.boot, j.broken]
j.start_boot(100, json.dumps)
j.start("cmd00001", 1, '{"id": "cmd00001", "slot": "A1"}')
j.finish("cmd00001", '{"id": "cmd00001", "result": "ok"}')
j.record("cash0001", "c", '{"id": "cash0001", "amount": 500}')
j.start("cmd00002", 2, '{"id": "cmd00002", "slot": "A2"}')   # power cut here
j2 = Journal("j.json", keep=5, keep_results=2)
out["reloaded"] = [j2.ctr, j2.boot, [e[0] for e in j2.entries], [e[2] for e in j2.entries]]
out["lost"] = j2.start_boot(200, lambda r: json.dumps(r) + " sealed")
out["unknown"] = json.loads(j2.find("cmd00002")[4][: -len(" sealed")])
out["unacked"] = sorted(e[0] for e in j2.unacked())
out["acked_n"] = j2.ack(["cmd00001", "cash0001", "nope0000"])
out["after_ack"] = [e[0] for e in j2.entries]
for i in range(3, 13):
    cid = "cmd%05d" % i
    j2.start(cid, i, "{}")
    j2.finish(cid, '{"id": "%s"}' % cid)
    if i != 7:
        j2.ack([cid])
j3 = Journal("j.json", keep=5, keep_results=2)
out["full"] = [e[0] for e in j3.entries]
out["ids"] = j3.acked
out["ctr"] = j3.ctr
out["was_acked"] = [j3.was_acked("cmd00009"), j3.was_acked("cmd00001")]
out["tmp_left"] = "j.json.tmp" in os.listdir()
with open("bad.json", "w") as f:
    f.write('{"ctr": 3, "boot"')
out["broken"] = Journal("bad.json").broken is not None
print(json.dumps(out))
"""

SEQ_SCRIPT = """
import json
from vend.journal import SEQ_BLOCK, Journal
out = {"block": SEQ_BLOCK}
k = Journal("k.json")
k.start_boot(1000, json.dumps)
out["first"] = [k.next_seq(1000) for _ in range(3)]  # a fresh journal starts above the clock
with open("k.json") as f:
    out["reserved"] = json.load(f)["s"]
k2 = Journal("k.json")  # power cut: the seqs handed out from RAM are lost with it
k2.start_boot(5, json.dumps)
out["after_reboot"] = k2.next_seq(5)  # a clock behind the reservation changes nothing
out["later"] = [k2.next_seq(10**10) for _ in range(SEQ_BLOCK)][-1]  # nor one far ahead
with open("k.json") as f:
    out["reserved2"] = json.load(f)["s"]
m = Journal("m.json")
m.start_boot(0, json.dumps)  # an ESP32 before NTP: no clock at boot ...
out["late_clock"] = m.next_seq(2000)  # ... but by the first signing
print(json.dumps(out))
"""

UPGRADE_SCRIPT = """
import json
from vend.journal import Journal
# written by firmware from before signing: one un-acked cash credit, one acked result
with open("u.json", "w") as f:
    json.dump({"v": 1, "ctr": 3, "boot": 4, "a": [], "e": [
        ["cash0001", "c", "done", False, '{"id": "cash0001", "amount": 500, "ts": 1}'],
        ["cmd00003", "d", "done", True, '{"id": "cmd00003", "result": "ok"}'],
    ]}, f)
u = Journal("u.json")
u.start_boot(1000, lambda r: '{"v":1,"body":' + json.dumps(json.dumps(r)) + ',"sig":"x"}')
u2 = Journal("u.json")
print(json.dumps([e[4] for e in u2.entries]))
"""


def test_unsigned_events_of_older_firmware_are_signed_at_boot(tmp_path: Path) -> None:
    got = run_micropython(UPGRADE_SCRIPT, tmp_path)
    assert isinstance(got, list)
    cash, acked = got
    assert json.loads(json.loads(cash)["body"]) == {"id": "cash0001", "amount": 500, "ts": 1}
    assert acked == '{"id": "cmd00003", "result": "ok"}'  # acked: never sent again


def test_journal_lifecycle(tmp_path: Path) -> None:
    got = run_micropython(SCRIPT, tmp_path)
    assert isinstance(got, dict)
    assert got["fresh"] == [0, 0, None]
    # the power cut left cmd00002 "started" on flash
    assert got["reloaded"] == [
        2,
        1,
        ["cmd00001", "cash0001", "cmd00002"],
        ["done", "done", "started"],
    ]
    assert got["lost"] == ["cmd00002"]
    assert got["unknown"] == {
        "id": "cmd00002",
        "slot": "A2",
        "result": "unknown",
        "reason": "power_loss",
        "ts": 200,
    }
    assert got["unacked"] == ["cash0001", "cmd00001", "cmd00002"]
    assert got["acked_n"] == 2
    # acked cash is gone at once; the acked dispense stays (with its result) for replays
    assert got["after_ack"] == ["cmd00001", "cmd00002"]
    # never dropped: un-acked cmd00002 and cmd00007; with results: the 2 newest acked;
    # ids only: the 5 before them; older ones forgotten (the counter refuses them)
    assert got["full"] == ["cmd00002", "cmd00007", "cmd00011", "cmd00012"]
    assert got["ids"] == ["cmd00005", "cmd00006", "cmd00008", "cmd00009", "cmd00010"]
    assert got["ctr"] == 12
    assert got["was_acked"] == [True, False]
    assert got["tmp_left"] is False
    assert got["broken"] is True
    on_flash = json.loads((tmp_path / "j.json").read_text())
    assert on_flash["ctr"] == 12 and on_flash["boot"] == 2


def test_message_counter_never_repeats_across_reboots(tmp_path: Path) -> None:
    got = run_micropython(SEQ_SCRIPT, tmp_path)
    assert isinstance(got, dict)
    block = got["block"]
    assert got["first"] == [1001, 1002, 1003]
    assert got["reserved"] == 1000 + block  # one flash write for the whole block
    # after the reboot it starts above everything reserved, skipping the unused rest
    assert got["after_reboot"] == 1000 + block + 1
    assert got["later"] == 1000 + 2 * block + 1
    assert got["reserved2"] == 1000 + 3 * block
    assert got["late_clock"] == 2001

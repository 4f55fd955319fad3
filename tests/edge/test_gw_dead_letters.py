"""The gateway's dead letters: an outbox event moved aside keeps its id and payload, a retry puts
it back under a new seq, and ``vending-gateway dead-letters`` answers with clear exit codes."""

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

from gw_support import gateway_settings

from edge.store import GatewayStore
from edge.store.dbthread import open_database

REPO = Path(__file__).resolve().parents[2]


def _cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge", "dead-letters", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )


def _add_outbox(db_path: Path, event_id: str, payload: dict[str, object]) -> None:
    db = open_database(db_path)
    try:
        db.execute(
            "INSERT INTO outbox (event_id, type, payload, occurred_at) VALUES (?, ?, ?, ?)",
            [event_id, "cash.credit", json.dumps(payload), "2026-11-29T10:00:00+00:00"],
        )
    finally:
        db.close()


async def test_move_aside_and_retry_keep_the_event_id(tmp_path: Path) -> None:
    settings = gateway_settings(tmp_path / "gw")
    config = tmp_path / "gw.json"
    config.write_text(json.dumps({"data_dir": str(settings.data_dir)}))
    async with GatewayStore(settings) as store:
        payload = {"credit_id": "c-1", "machine_id": "M1", "amount": 500, "currency": "INR"}
        _add_outbox(settings.db_path, "event-0001", payload)
        _add_outbox(settings.db_path, "event-0002", payload | {"credit_id": "c-2"})
        [first, second] = await store.outbox_pending(10)

        assert await store.dead_letter("event-0001", 400, "validation_error", "bad amount")
        assert not await store.dead_letter("event-0001", 400, "validation_error", "again")
        assert [e.event_id for e in await store.outbox_pending(10)] == ["event-0002"]
        assert await store.dead_letter_count() == 1
        [letter] = await store.list_dead_letters()
        assert (letter.event_id, letter.seq, letter.source) == ("event-0001", first.seq, "isolated")
        assert (letter.http_status, letter.code, letter.attempts) == (400, "validation_error", 1)
        assert json.loads(letter.payload) == payload

        # The CLI sees it beside the running store, and retries it under a new seq.
        listed = _cli(config, "list")
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.startswith("#1 open cash.credit event event-0001 (seq 1, 1 attempt(s)")
        retried = _cli(config, "retry", "1")
        assert retried.returncode == 0, retried.stderr
        new_seq = second.seq + 1
        assert retried.stdout.strip() == f"retried 1 dead letter(s): #1 as seq {new_seq}"
        pending = await store.outbox_pending(10)
        assert [(e.event_id, e.seq) for e in pending] == [
            ("event-0002", second.seq),
            ("event-0001", new_seq),
        ]
        assert pending[1].payload == payload
        assert await store.dead_letter_count() == 0

        # Refused again: the same letter reopens, one attempt more.
        assert await store.dead_letter("event-0001", 409, "conflict", "still bad")
        [letter] = await store.list_dead_letters()
        assert (letter.state, letter.attempts, letter.seq) == ("open", 2, new_seq)

        again = _cli(config, "retry", "7")
        assert again.returncode == 1
        assert again.stderr.strip() == "vending-gateway dead-letters: error: no open dead letter #7"
        everything = _cli(config, "retry", "--all")
        assert everything.returncode == 0 and "#1 as seq" in everything.stdout
        assert _cli(config, "retry", "--all").stdout.strip() == "no open dead letters"
        assert [
            json.loads(x)["state"]
            for x in _cli(config, "list", "--all", "--json").stdout.splitlines()
        ] == ["retried"]


def test_cli_exit_codes_without_a_usable_database(tmp_path: Path) -> None:
    config = tmp_path / "gw.json"
    config.write_text(json.dumps({"data_dir": str(tmp_path / "none")}))
    missing = _cli(config, "list")
    assert missing.returncode == 3
    assert missing.stderr.startswith("vending-gateway dead-letters: error: no gateway database")

    old = tmp_path / "old"
    old.mkdir()
    sqlite3.connect(old / "gateway.sqlite3").close()  # a database from before m004
    config.write_text(json.dumps({"data_dir": str(old)}))
    not_upgraded = _cli(config, "list")
    assert not_upgraded.returncode == 3
    assert "start the gateway once" in not_upgraded.stderr

    bad_settings = tmp_path / "bad.json"
    bad_settings.write_text(json.dumps({"no_such_setting": 1}))
    assert _cli(bad_settings, "list").returncode == 2
    assert _cli(config, "retry").returncode == 2

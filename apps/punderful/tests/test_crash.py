"""Punderful survives SIGKILL in the middle of publishing.

``python -m punderful`` runs as a subprocess. Puns are submitted a little apart, so that at any
moment they sit at different steps, and ``PUNDERFUL_STEP_DELAY`` makes every publish step hold
for a moment *after* its side effect, before its result is recorded: a kill then often lands
between the two. The process is killed twice mid-publish and restarted; at the end every pun is
published, and each effect happened once: one ``published`` status change per pun, one
``content-`` and one ``categories-`` vector per pun, one recorded result per step.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from punderful.vectors import VectorIndex
from tests.test_app_helpers import PUBLISH_STEPS, PUNS, ServerProcess

pytestmark = pytest.mark.slow

EXTRA = [
    "The baker retired early.\nHe had made enough dough.",
    "The math book looked sad.\nIt had too many problems.",
]
TEXTS = PUNS + EXTRA


def read(path: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
    """Read another process's SQLite file (WAL mode lets us read while it writes)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return list(conn.execute(sql, params).fetchall())
    finally:
        conn.close()


def published(data: Path) -> int:
    return int(read(data / "punderful.db", "SELECT COUNT(*) FROM puns WHERE status = 'published'")[0][0])


def completed_steps(data: Path, name: str) -> int:
    rows = read(
        data / "perdure.db",
        "SELECT COUNT(*) FROM steps s JOIN instances i ON i.pk = s.instance_pk "
        "WHERE i.workflow = 'publish' AND s.name = ? AND s.status = 'complete'",
        (name,),
    )
    return int(rows[0][0])


def wait_until(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if callable(condition) and condition():
                return
        except sqlite3.OperationalError:
            pass  # the file is being created
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_sigkill_mid_publish_then_restart_publishes_each_pun_exactly_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {"PUNDERFUL_STEP_DELAY": "0.15"}
    server = ServerProcess(data, env, log=tmp_path / "server.log")
    ids: list[str] = []
    try:
        with httpx.Client(base_url=server.url, timeout=10) as http:
            for text in TEXTS:
                response = http.post("/api/puns", json={"pun": text})
                assert response.status_code == 201, response.text
                ids.append(response.json()["pun"]["id"])
                time.sleep(0.12)
        # Kill 1: once some puns are indexed but not all are published.
        wait_until(lambda: completed_steps(data, "add-embeddings-to-vector-store") >= 1, 60, "a first indexed pun")
        assert published(data) < len(TEXTS), "the kill must land mid-publish"
        server.kill()
        first_kill_published = published(data)

        # Kill 2: right after the restart has made progress again.
        server = ServerProcess(data, env, log=tmp_path / "server.log")
        before = completed_steps(data, "update-status-to-published")
        wait_until(lambda: completed_steps(data, "update-status-to-published") > before, 60, "progress after restart")
        if published(data) < len(TEXTS):
            server.kill()
            server = ServerProcess(data, env, log=tmp_path / "server.log")

        wait_until(lambda: published(data) == len(TEXTS), 120, "every pun published")
        with httpx.Client(base_url=server.url, timeout=10) as http:
            for pun_id in ids:
                assert http.get(f"/api/puns/{pun_id}").json()["status"] == "published"
            found = http.get("/api/puns/search", params={"q": "jokes featuring birds"}).json()["results"]
            assert found and "owl" in found[0]["pun"]
    finally:
        server.stop()

    assert first_kill_published < len(TEXTS)
    # Each status change happened once.
    for pun_id in ids:
        changes = read(data / "punderful.db", "SELECT status FROM pun_status_changes WHERE pun_id = ?", (pun_id,))
        assert changes == [("published",)], (pun_id, changes)
    # One vector per id in each namespace.
    with VectorIndex(data / "vectors.db") as index:
        assert index.count("content") == len(TEXTS) and index.count("categories") == len(TEXTS)
        for pun_id in ids:
            assert len(index.get_by_ids("content", [f"content-{pun_id}"])) == 1
            assert len(index.get_by_ids("categories", [f"categories-{pun_id}"])) == 1
    # One recorded result per step, all complete; the kills interrupted some attempts.
    rows = read(
        data / "perdure.db",
        "SELECT i.id, i.status, s.name, s.status, s.attempts FROM instances i JOIN steps s ON s.instance_pk = i.pk "
        "WHERE i.workflow = 'publish' ORDER BY i.pk, s.seq",
    )
    by_instance: dict[str, list[str]] = {}
    lost = 0
    for instance_id, instance_status, name, step_status, attempts in rows:
        assert instance_status == "complete" and step_status == "complete"
        by_instance.setdefault(str(instance_id), []).append(str(name))
        lost += sum(1 for a in json.loads(str(attempts)) if a.get("lost"))
    assert sorted(by_instance) == sorted(ids)
    assert all(names == PUBLISH_STEPS for names in by_instance.values())
    assert lost >= 1, "at least one attempt was cut short by a kill and run again"

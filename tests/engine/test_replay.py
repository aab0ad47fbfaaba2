"""Replay checking (``perdure.replay``, ``perdure replay``) and in-code versioning (``step.patched``)."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlparse

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql

from perdure import Engine
from perdure.cli import main
from perdure.replay import check
from perdure.store.migrations.postgres import LATEST as PG_LATEST
from perdure.store.sqlite import SCHEMA_VERSION as SQLITE_LAYOUT
from perdure.testing import ManualClock
from tests.engine.replay_app import engine_for
from tests.engine.util import until_status
from tests.pg import server_url

UPGRADE_DATA = Path(__file__).resolve().parent.parent / "data" / "upgrade"

Make = Callable[..., Engine]


async def sleeping_instance(db_url: str, make_engine: Make, instance_id: str = "o-1") -> Any:
    """An instance of v1 asleep after step "a" (its worker stopped), as after a deploy."""
    engine = make_engine(fast_wait=0.05)
    engine.register(engine_for("v1").workflows["order"].cls, name="order")
    await engine.start()
    instance = await engine.binding("order").create(id=instance_id)
    await until_status(instance, "waiting")
    await engine.stop()
    return instance


async def reports_for(db_url: str, version: str) -> list[dict[str, Any]]:
    engine = engine_for(version, db_url)
    try:
        return [r.as_dict() for r in await check(await engine.ensure_store(), engine.workflows)]
    finally:
        await engine.stop()  # closes the store it opened


@pytest.mark.parametrize(
    ("version", "kind", "says"),
    [
        ("v1", None, None),
        ("renamed", "missing_step", "the code asks for step.do('a2') #1, which the history does not have"),
        (
            "longer_nap",
            "changed_sleep",
            "step.sleep('nap') #1: the stored duration is 3600.0, the code asks for 7200.0",
        ),
        (
            "nap_is_a_step",
            "changed_kind",
            "the code asks for step.do('nap') #1 where the history has step.sleep('nap') #1",
        ),
        ("shorter", "unreached_step", "the run no longer reaches 1 recorded step(s): step.sleep('nap') #1"),
        ("inserted", "missing_step", "the code asks for step.do('extra') #1"),
        ("patched", None, None),
    ],
)
async def test_each_kind_of_divergence_is_found_and_patched_code_replays(
    db_url: str, make_engine: Make, version: str, kind: str | None, says: str | None
) -> None:
    await sleeping_instance(db_url, make_engine)
    (report,) = await reports_for(db_url, version)
    if kind is None:
        assert report["ok"], report
        assert report["replayed_steps"] == 2  # "a" and the nap
    else:
        assert not report["ok"]
        assert report["divergence"]["kind"] == kind
        assert says in report["divergence"]["message"]


async def test_patched_takes_the_old_path_for_old_instances_and_the_new_one_for_new(
    db_url: str, make_engine: Make
) -> None:
    clock = ManualClock()
    old_code = make_engine(fast_wait=0.05, clock=clock)
    old_code.register(engine_for("v1").workflows["order"].cls, name="order")
    await old_code.start()
    old = await old_code.binding("order").create(id="o-1")
    await until_status(old, "waiting")
    await old_code.stop()  # the deploy: o-1 sleeps through it
    new_code = make_engine(fast_wait=0.05, clock=clock)
    new_code.register(engine_for("patched").workflows["order"].cls, name="order")
    await new_code.start()
    new = await new_code.binding("order").create(id="o-2")
    await until_status(new, "waiting")
    clock.advance(3601)
    new_code.nudge()
    assert (await old.wait(10))["output"] == 3  # replayed its history: no "extra"
    assert (await new.wait(10))["output"] == 13  # the new path
    markers = {
        i.id: [(s.name, s.result) for s in await new_code.store.load_steps(i.pk) if s.kind == "patch"]
        for i in (old, new)
    }
    assert markers == {"o-1": [("extra-step", False)], "o-2": [("extra-step", True)]}
    assert all(r["ok"] for r in await reports_for(db_url, "patched"))
    # Dropping the patched() call altogether breaks both histories (deprecate_patch is for that).
    assert {r["id"]: r["ok"] for r in await reports_for(db_url, "v1")} == {"o-1": False, "o-2": False}
    deprecated = {r["id"]: r["ok"] for r in await reports_for(db_url, "deprecated")}
    assert deprecated == {"o-1": False, "o-2": True}  # o-1 never ran "extra": it must be gone first


async def test_the_cli_exits_1_on_a_divergence_with_a_readable_report(db_url: str, make_engine: Make) -> None:
    await sleeping_instance(db_url, make_engine)

    def run(*args: str) -> Any:
        return CliRunner().invoke(main, list(args), catch_exceptions=False)

    ok = await asyncio.to_thread(run, "replay", "tests.engine.replay_app:v1", "--db", db_url)
    assert ok.exit_code == 0, ok.output
    assert "1 of 1 instance(s) replay" in ok.output
    bad = await asyncio.to_thread(run, "replay", "tests.engine.replay_app:renamed", "--db", db_url)
    assert bad.exit_code == 1
    assert "order/o-1 (waiting): missing_step" in bad.output and "0 of 1 instance(s) replay" in bad.output
    as_json = await asyncio.to_thread(run, "replay", "tests.engine.replay_app:renamed", "--db", db_url, "--json")
    assert as_json.exit_code == 1
    document = json.loads(as_json.stdout)
    assert document["ok"] is False and document["instances"][0]["divergence"]["kind"] == "missing_step"
    unknown = await asyncio.to_thread(run, "replay", "tests.engine.replay_app:v1", "--db", db_url, "--workflow", "nope")
    assert unknown.exit_code == 2 and "APP has no workflow named 'nope'" in unknown.output


def test_replay_on_an_older_sqlite_file_says_which_layouts_and_changes_nothing(tmp_path: Path) -> None:
    old = tmp_path / "old.db"
    shutil.copy(UPGRADE_DATA / "sqlite-layout3.db", old)
    before = old.read_bytes()
    done = CliRunner().invoke(main, ["replay", "tests.engine.replay_app:v1", "--db", f"sqlite:///{old}"])
    assert done.exit_code != 0 and "Traceback" not in done.output
    assert f"has layout 3 and this Perdure reads layout {SQLITE_LAYOUT}" in done.output
    assert old.read_bytes() == before  # a replay check never upgrades the copy it reads


def test_replay_on_a_postgresql_schema_of_a_newer_perdure_says_which_versions(request: pytest.FixtureRequest) -> None:
    from tests.pg import fresh_schema_url

    url = fresh_schema_url(request)
    schema = dict(parse_qsl(urlparse(url).query))["schema"]

    async def migrated_by_a_newer_perdure() -> None:
        engine = Engine(url)
        await engine.start()
        await engine.stop()
        async with await psycopg.AsyncConnection.connect(server_url(), autocommit=True) as conn:
            await conn.execute(
                sql.SQL(
                    "INSERT INTO {}.schema_migrations (version, description, applied_at) VALUES (%s, %s, 0)"
                ).format(sql.Identifier(schema)),
                (PG_LATEST + 1, "from the future"),
            )

    asyncio.run(migrated_by_a_newer_perdure())
    done = CliRunner().invoke(main, ["replay", "tests.engine.replay_app:v1", "--db", url])
    assert done.exit_code != 0 and "Traceback" not in done.output
    assert f"is at migration {PG_LATEST + 1}, but this Perdure knows only up to {PG_LATEST}" in done.output

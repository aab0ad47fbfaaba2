"""The first start of a fresh database seeds it with the bundled puns (issue 14 item 2).

In-process: :func:`punderful.importer.seed_if_fresh` seeds a fresh database through the publish
workflow, once (not again on the next start, nor on a database that has puns of its own), and
finishes an interrupted seed. Through ``python -m punderful``: the first start imports the whole
data set with its progress bars in the log, a second start does not, and ``--no-seed`` does not.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import httpx
import pytest
from rich.console import Console

from punderful.__main__ import build_parser, main
from punderful.data import load_puns
from punderful.importer import SEED_KEY, seed_if_fresh
from tests.test_app_helpers import CHEESE, ServerProcess, client_for, make_config, running, submit, wait_done


def _console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=120), out


async def test_a_fresh_database_is_seeded_through_the_workflow_once(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    console, out = _console()
    async with running(config) as app:
        result = await seed_if_fresh(app, limit=8, console=console)
        assert result is not None and result.total == 8 and result.new_instances == 8
        assert result.statuses == {"published": 8}
        assert app.services.db.count_puns("published") == 8
        assert app.services.vectors.count("content") == 8  # searchable: it went through publish
        for pun_id in result.pun_ids:
            assert (await wait_done(app, "publish", pun_id))["status"] == "complete"
        assert app.services.db.get_meta(SEED_KEY) == "done"
        log = out.getvalue()
        assert "seeding it with the 8 bundled puns" in log and "Importing" in log and "Publishing" in log
        assert "8/8" in log
        assert await seed_if_fresh(app, limit=8) is None
    # the next start of the same database: not seeded again
    async with running(config) as app:
        assert await seed_if_fresh(app, limit=20) is None
        assert app.services.db.count_puns() == 8


async def test_a_database_seeded_before_is_not_seeded_even_when_empty(tmp_path: Path) -> None:
    async with running(make_config(tmp_path)) as app:
        app.services.db.set_meta(SEED_KEY, "done")  # seeded, then every pun deleted
        assert await seed_if_fresh(app, limit=5) is None
        assert app.services.db.count_puns() == 0


async def test_a_database_with_puns_of_its_own_is_not_seeded(tmp_path: Path) -> None:
    async with running(make_config(tmp_path)) as app, client_for(app) as client:
        await submit(client, CHEESE)
        assert await seed_if_fresh(app, limit=5) is None
        assert app.services.db.count_puns() == 1
        assert app.services.db.get_meta(SEED_KEY) is None


async def test_an_interrupted_seed_is_finished_on_the_next_start(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running(config) as app:
        # what a seed stopped after its first batch leaves: the mark, and some drafts
        app.services.db.set_meta(SEED_KEY, "started")
        first = await seed_if_fresh(app, limit=3, wait=False)
        assert first is not None
        app.services.db.set_meta(SEED_KEY, "started")
        result = await seed_if_fresh(app, limit=6)
        assert result is not None and result.new_instances == 3, "the first three are skipped by id"
        assert result.statuses == {"published": 6}
        assert app.services.db.get_meta(SEED_KEY) == "done"


def test_no_seed_is_a_serve_option_in_help_and_refused_by_import(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = build_parser()
    assert "--no-seed" in parser.format_help()
    assert parser.parse_args(["--no-seed"]).no_seed is True
    assert parser.parse_args([]).no_seed is False
    assert parser.parse_args(["serve", "--no-seed"]).no_seed is True
    with pytest.raises(SystemExit):
        parser.parse_args(["import", "--no-seed"])  # not an import option
    with pytest.raises(SystemExit):
        parser.parse_args(["--no-seed=yes"])  # a switch, takes no value
    assert main(["--no-seed", "import", "--data-dir", str(tmp_path)]) == 2
    assert "--no-seed is an option of serving" in capsys.readouterr().err


def _published(url: str) -> int:
    with httpx.Client(base_url=url) as http:
        return len(http.get("/api/puns", params={"limit": 100}).json()["results"])


@pytest.mark.slow
def test_the_first_start_seeds_the_second_does_not_and_no_seed_does_not(tmp_path: Path) -> None:
    total = len(set(load_puns()))
    data = tmp_path / "data"
    server = ServerProcess(data, log=tmp_path / "server.log", seed=True)
    try:
        deadline = time.monotonic() + 180
        while f"Seeded {total} puns" not in server.output():
            assert time.monotonic() < deadline, server.output()[-3000:]
            time.sleep(0.2)
        log = server.output()
        assert f"seeding it with the {total} bundled puns" in log
        assert "Importing" in log and f"{total}/{total}" in log and "Publishing" in log
        assert _published(server.url) == 100  # a full page of the API
    finally:
        server.stop()
    again = ServerProcess(data, log=tmp_path / "server.log", seed=True)
    try:
        time.sleep(3)  # time enough to start a seed, if it were going to
        assert "seeding" not in again.output() and "Importing" not in again.output()
    finally:
        again.stop()
    fresh = ServerProcess(tmp_path / "empty", log=tmp_path / "empty.log", args=["--no-seed"], seed=True)
    try:
        time.sleep(3)
        assert _published(fresh.url) == 0
        assert "seeding" not in fresh.output()
    finally:
        fresh.stop()

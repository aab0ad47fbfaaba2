"""Search quality as measured by ``bench/bench_retrieval.py``: its query sets and the threshold it chose.

The bench's figures are only worth something if its queries really share no word with their
puns, so that rule is tested here on both files (and that a violation fails loudly). The search
threshold was lowered from 0.25 to 0.19 on the bench's **dev** half; the end-to-end test uses two
dev queries (never held-out ones) whose puns score between the two thresholds, so it fails with
the former default.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from punderful.app import Punderful
from punderful.config import DEFAULT_SEARCH_THRESHOLD
from punderful.data import load_puns
from tests.test_app_helpers import (
    PUNS,
    ROOT,
    fixture_app,  # noqa: F401  (a fixture, with its dependencies below)
    fixture_client,  # noqa: F401
    fixture_config,  # noqa: F401
    publish_all,
)

SEAL = "The seal got a job at the notary's office.\nNothing gets signed without its approval."
SHEEP = "The sheep started a rock band.\nTheir first album was called Wool Be Right Back."


def bench() -> ModuleType:
    cached = sys.modules.get("bench_retrieval")
    if cached is not None:
        return cached
    spec = importlib.util.spec_from_file_location("bench_retrieval", ROOT / "bench" / "bench_retrieval.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_retrieval"] = module
    spec.loader.exec_module(module)
    return module


def queries(half: str) -> dict[str, str]:
    path = ROOT / "tests" / "data" / f"retrieval_{half}.json"
    return {item["query"]: item["pun"] for item in json.loads(path.read_text(encoding="utf-8"))["queries"]}


@pytest.mark.parametrize("half", ["dev", "held_out"])
def test_retrieval_queries_share_no_word_with_their_puns(half: str) -> None:
    module = bench()
    items = module.load_set(module.SETS[half], load_puns())
    assert len(items) >= 40
    assert {item["style"] for item in items} == {"description", "keywords"}
    parity = 0 if half == "dev" else 1
    assert all(item["target"] % 2 == parity for item in items), "the split is by the target's parity"


def test_dev_and_held_out_queries_are_disjoint() -> None:
    dev, held_out = queries("dev"), queries("held_out")
    assert not set(dev) & set(held_out)
    assert not set(dev.values()) & set(held_out.values())


def test_a_query_sharing_a_word_with_its_pun_fails_the_bench(tmp_path: Path) -> None:
    puns = load_puns()
    bad = tmp_path / "bad.json"
    item = {"query": "a cheese store", "style": "keywords", "target": 2, "pun": puns[2]}
    bad.write_text(json.dumps({"queries": [item]}), encoding="utf-8")
    with pytest.raises(SystemExit, match=r"shares \['cheese'\]"):
        bench().load_set(bad, puns)
    item = {**item, "query": "dairy store", "target": 3}
    bad.write_text(json.dumps({"queries": [item]}), encoding="utf-8")
    with pytest.raises(SystemExit, match="not the text"):
        bench().load_set(bad, puns)


@pytest.mark.parametrize(("query", "expected"), [("marine mammal stamps documents", SEAL), ("fleece record", SHEEP)])
async def test_short_keyword_searches_find_puns_the_former_threshold_dropped(
    app: Punderful, client: httpx.AsyncClient, query: str, expected: str
) -> None:
    assert queries("dev")[query] == expected and query not in queries("held_out")
    assert app.config.search_threshold == DEFAULT_SEARCH_THRESHOLD < 0.25
    await publish_all(app, client, [*PUNS, SEAL, SHEEP])
    results = (await client.get("/api/puns/search", params={"q": query})).json()["results"]
    assert results and results[0]["pun"] == expected
    # The measured reason: the pun's similarity is below the former default of 0.25.
    assert DEFAULT_SEARCH_THRESHOLD < results[0]["score"] < 0.25

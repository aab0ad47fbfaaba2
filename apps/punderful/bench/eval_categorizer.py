"""Measure the zero-shot categorizer on the hand-labelled puns; prints JSON.

    .venv/bin/python bench/eval_categorizer.py [--errors]

The labelled set is ``tests/data/categories_labelled.json``: every pun of
``punderful/data/puns.json`` with one or two acceptable categories, labelled by reading the
pun (see the file's ``about``). It is split by a fixed rule, **even ids = dev** (the half the
descriptions and thresholds were tuned on) and **odd ids = held-out** (only reported); quote
the held-out numbers.

Methods, all measured in this run with the local MiniLM model on the same embeddings:

* ``zero_shot``: :class:`ZeroShotCategorizer` as the app builds it (default categories,
  several description sentences per category, nearest one wins).
* ``zero_shot_one_sentence``: the same class with one sentence per category and the former
  second-label rule (runner-up within 0.02), i.e. the method this project had before.
* ``baseline_most_frequent``: always the category that is most often the first label in the
  dev half (``wordplay``), as a floor.

Metrics per method and half:

* ``top1``: share of puns whose first predicted category is one of its labels.
* ``any_match``: share of puns where any predicted category is one of its labels.
* ``second_labels`` / ``second_label_precision``: how many puns got a second category, and
  the share of those second categories that are among the pun's labels.
* ``recall``: per category, of the puns labelled with it, the share whose prediction
  includes it (``support`` = how many puns carry that label).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from punderful.ai.categorizer import DEFAULT_CATEGORIES, ZeroShotCategorizer  # noqa: E402
from punderful.ai.embedder import LocalEmbedder  # noqa: E402

LABELLED = ROOT / "tests" / "data" / "categories_labelled.json"

Item = dict[str, Any]
Predict = Callable[[str, NDArray[np.float32]], list[str]]


def load_items(path: Path = LABELLED) -> list[Item]:
    """The labelled items: ``{"id", "text", "labels"}``."""
    items: list[Item] = json.loads(path.read_text(encoding="utf-8"))["items"]
    return items


def split(items: Sequence[Item]) -> dict[str, list[Item]]:
    """The fixed split: even ids are dev, odd ids are held-out."""
    return {
        "dev": [it for it in items if it["id"] % 2 == 0],
        "held_out": [it for it in items if it["id"] % 2 == 1],
    }


def metrics(items: Sequence[Item], predictions: Sequence[list[str]], names: Sequence[str]) -> dict[str, Any]:
    """Top-1, any-match, second-label precision and per-category recall."""
    n = len(items)
    top1 = sum(p[0] in it["labels"] for it, p in zip(items, predictions, strict=True))
    any_match = sum(any(c in it["labels"] for c in p) for it, p in zip(items, predictions, strict=True))
    seconds = [(it, p[1]) for it, p in zip(items, predictions, strict=True) if len(p) > 1]
    recall: dict[str, Any] = {}
    for name in names:
        carrying = [(it, p) for it, p in zip(items, predictions, strict=True) if name in it["labels"]]
        hit = sum(name in p for _, p in carrying)
        recall[name] = {"recall": round(hit / len(carrying), 3) if carrying else None, "support": len(carrying)}
    return {
        "n": n,
        "top1": round(top1 / n, 3),
        "any_match": round(any_match / n, 3),
        "second_labels": len(seconds),
        "second_label_precision": (
            round(sum(second in it["labels"] for it, second in seconds) / len(seconds), 3) if seconds else None
        ),
        "recall": recall,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--errors", action="store_true", help="also list the zero-shot top-1 misses per half")
    args = parser.parse_args(argv)

    items = load_items()
    halves = split(items)
    names = list(DEFAULT_CATEGORIES)

    embedder = LocalEmbedder()
    load_seconds = embedder.load()
    started = time.perf_counter()
    vectors = embedder.embed([it["text"] for it in items])
    embed_seconds = time.perf_counter() - started
    vector_of = {it["id"]: vectors[k] for k, it in enumerate(items)}

    zero_shot = ZeroShotCategorizer(embedder)
    one_sentence = ZeroShotCategorizer(embedder, second_margin=0.02, second_min_score=-1.0, extra_descriptions={})
    most_frequent = Counter(it["labels"][0] for it in halves["dev"]).most_common(1)[0][0]
    methods: dict[str, Predict] = {
        "zero_shot": zero_shot.categorize,
        "zero_shot_one_sentence": one_sentence.categorize,
        "baseline_most_frequent": lambda text, vector: [most_frequent],
    }

    # Embed the category descriptions now, so the timings below are per pun only.
    for categorizer in (zero_shot, one_sentence):
        categorizer.categorize(items[0]["text"], vector_of[items[0]["id"]])

    results: dict[str, Any] = {}
    errors: dict[str, list[dict[str, Any]]] = {}
    for method, predict in methods.items():
        results[method] = {}
        for half, members in (*halves.items(), ("all", items)):
            started = time.perf_counter()
            predictions = [predict(it["text"], vector_of[it["id"]]) for it in members]
            elapsed = time.perf_counter() - started
            results[method][half] = metrics(members, predictions, names)
            results[method][half]["ms_per_pun"] = round(1000 * elapsed / len(members), 4)
            if method == "zero_shot" and half != "all":
                errors[half] = [
                    {"id": it["id"], "labels": it["labels"], "predicted": p, "text": it["text"]}
                    for it, p in zip(members, predictions, strict=True)
                    if p[0] not in it["labels"]
                ]

    report: dict[str, Any] = {
        "labelled_set": str(LABELLED.relative_to(ROOT)),
        "split": "dev = even ids (tuned on), held_out = odd ids (report these)",
        "model": embedder.model_id,
        "n": {half: len(members) for half, members in halves.items()},
        "baseline_category": most_frequent,
        "model_load_seconds": round(load_seconds, 2),
        "embed_all_seconds": round(embed_seconds, 2),
        "results": results,
        "summary": {
            method: {half: {k: results[method][half][k] for k in ("top1", "any_match")} for half in halves}
            for method in methods
        },
    }
    if args.errors:
        report["zero_shot_top1_misses"] = errors
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

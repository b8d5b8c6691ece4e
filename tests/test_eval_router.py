"""`spendgate eval-router`: the split, the money arithmetic, the JSON, and a run on the real data."""

from __future__ import annotations

import csv
import json
import random
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from spendgate.cli import main
from spendgate.routing import evaluation as ev

STRONG, WEAK = ev.STRONG_MODEL, ev.WEAK_MODEL
# a seeded sample of RouteLLM's files (tests/data/README.md): the same format, so CI needs no ../shared
REAL_DATA = Path(__file__).resolve().parent / "data" / "routellm-evals-sample"


# --- a small synthetic copy of the data's formats ------------------------------------------------


def write_fixture(root: Path, seed: int = 0) -> Path:
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    subjects = {"geography": 0.9, "algebra": 0.4, "ethics": 0.6}
    with open(root / "mmlu_responses.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["subject", "prompt", WEAK, STRONG])
        for i in range(160):
            subject = rng.choice(sorted(subjects))
            body = " ".join(rng.choice(["river", "matrix", "duty", "ocean", "group", "virtue"]) for _ in range(rng.randint(5, 60)))
            prompt = f"Question {i} on {subject}: {body}\nA. one\nB. two\nC. three\nD. four\nAnswer:"
            w.writerow([subject, prompt, rng.random() < subjects[subject], rng.random() < 0.9])
        w.writerow(["geography", prompt, True, True])  # a duplicate prompt: must stay on one side of the split
    with open(root / "gsm8k_responses.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["prompt", WEAK, STRONG, f"{WEAK}_response", f"{STRONG}_response"])
        for i in range(90):
            a, b = rng.randint(2, 60), rng.randint(2, 60)
            prompt = f"Problem {i}: Tom has {a} boxes with {b} apples each. How many apples does he have?"
            weak_ok = rng.random() < 0.6
            if weak_ok:
                weak = f"He has {a} * {b} = <<{a}*{b}={a * b}>>{a * b} apples.\n#### {a * b}"
            else:
                weak = rng.choice([f"He has {a} * {b} = {a * b + 3} apples.\n#### {a * b + 3}", f"He has {a} boxes, so roughly"])
            strong = f"{a} boxes × {b} apples = {a * b} apples in total.\n#### {a * b}"
            w.writerow([prompt, weak_ok, rng.random() < 0.95, weak, strong])
    questions, judgements = [], []
    for qid in range(81, 93):
        category = ["writing", "math", "coding"][qid % 3]
        turns = [f"Question {qid} turn one about {category}?", f"Follow-up {qid}: make it shorter."]
        questions.append({"question_id": qid, "category": category, "turns": turns})
        for model, base in ((STRONG, 9), (WEAK, 7)):
            a1, a2 = f"Answer one of {model} to {qid}. " * 3, f"Answer two of {model} to {qid}."
            judgements.append(
                {
                    "question_id": qid,
                    "model": model,
                    "judge": ["gpt-4", "single-v1"],
                    "user_prompt": f"[Instruction]\nJudge it.\n\n[Question]\n{turns[0]}\n\n"
                    f"[The Start of Assistant's Answer]\n{a1}\n[The End of Assistant's Answer]",
                    "judgment": "ok",
                    "score": base + rng.choice([-2, 0, 1]),
                    "turn": 1,
                }
            )
            judgements.append(
                {
                    "question_id": qid,
                    "model": model,
                    "judge": ["gpt-4", "single-v1-multi-turn"],
                    "user_prompt": "<|The Start of Assistant A's Conversation with User|>\n\n"
                    f"### User:\n{turns[0]}\n\n### Assistant A:\n{a1}\n\n### User:\n{turns[1]}\n\n"
                    f"### Assistant A:\n{a2}\n\n<|The End of Assistant A's Conversation with User|>",
                    "judgment": "ok",
                    "score": base + rng.choice([-1, 0, 1]),
                    "turn": 2,
                }
            )
    (root / "mt_bench_questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    (root / "mt_bench_judgements.jsonl").write_text("".join(json.dumps(j) + "\n" for j in judgements))
    return root


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fixture(tmp_path_factory.mktemp("routellm-evals"))


@pytest.fixture(scope="module")
def fixture_report(fixture_dir: Path) -> dict[str, Any]:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["eval-router", "--data", str(fixture_dir), "--json", "--quiet"]) == 0
    return json.loads(out.getvalue())


# --- the split ---------------------------------------------------------------------------------


def test_split_never_overlaps_and_keeps_duplicates_together() -> None:
    prompts = [f"p{i % 170}" for i in range(200)]  # 30 prompts appear twice
    train, test = ev.split_indices(prompts, 0.5, seed=0)
    assert sorted(train + test) == list(range(200))
    assert not set(train) & set(test)
    assert not {prompts[i] for i in train} & {prompts[i] for i in test}
    assert (train, test) == ev.split_indices(prompts, 0.5, seed=0)  # seeded
    assert test != ev.split_indices(prompts, 0.5, seed=1)[1]
    assert abs(len({prompts[i] for i in test}) - 85) <= 1


def test_folds_keep_duplicates_together() -> None:
    prompts = [f"p{i % 40}" for i in range(100)]
    folds = ev.fold_ids(prompts, 5, seed=0)
    assert set(folds.tolist()) == set(range(5))
    for p in set(prompts):
        assert len({int(folds[i]) for i, q in enumerate(prompts) if q == p}) == 1


# --- the money ---------------------------------------------------------------------------------


def item(sq: float, wq: float, sc: str, wc: str) -> ev.Item:
    return ev.Item("p", None, sq, wq, Decimal(sc), Decimal(wc))


def test_route_and_cascade_costs_are_exact() -> None:
    items = [item(1, 1, "0.003", "0.0001"), item(1, 0, "0.002", "0.0002"), item(0, 1, "0.001", "0.00005")]
    route = ev.outcome(items, [True, False, True], "route")
    assert route.cost == Decimal("0.0001") + Decimal("0.002") + Decimal("0.00005")
    assert route.quality == pytest.approx(1.0) and route.quality_ratio == pytest.approx(1.5)
    cascade = ev.outcome(items, [True, False, True], "cascade")
    assert cascade.cost == route.cost + Decimal("0.0002")  # the escalated item paid for both calls
    assert route.cost_reduction == float(1 - route.cost / Decimal("0.006"))
    # the curve's points are the same as deciding item by item
    scores = np.array([0.9, 0.1, 0.5])
    for p in ev.curve(items, scores, "cascade"):
        assert p.cost == ev.at_threshold(items, scores, p.threshold, "cascade").cost
    assert ev.curve(items, scores, "cascade")[0].cost == Decimal("0.006") + Decimal("0.00035")


def test_prices_come_from_the_catalog() -> None:
    strong = ev.catalog_price(STRONG, ev.DEFAULT_STRONG_PRICE)
    weak = ev.catalog_price(WEAK, ev.DEFAULT_WEAK_PRICE)
    assert (strong.input_per_mtok, strong.output_per_mtok) == (Decimal(10), Decimal(30))
    assert (weak.input_per_mtok, weak.output_per_mtok) == (Decimal("0.7"), Decimal("0.7"))
    assert strong.source.startswith("genai-prices:") and weak.source.startswith("genai-prices:")
    assert strong.cost(1000, 100) == Decimal("0.013")
    with pytest.raises(ValueError):
        ev.catalog_price(WEAK, "nowhere:no-such-model")


# --- the command on the synthetic data -------------------------------------------------------------


def test_json_has_the_fields(fixture_report: dict[str, Any]) -> None:
    r = fixture_report
    assert r["models"]["strong"]["input_per_mtok"] == "10" and r["models"]["weak"]["output_per_mtok"] == "0.7"
    assert set(r["datasets"]) == {"mmlu", "gsm8k", "mt-bench"}
    for name, d in r["datasets"].items():
        assert isinstance(d["cost_reduction"], float) and isinstance(d["quality_ratio"], float)
        assert d["headline"] in d["strategies"]
        assert d["cost_reduction"] == d["strategies"][d["headline"]]["cost_reduction"]
        assert {"random", "longest-to-weak", "learned", "learned/$"} <= set(d["strategies"])
        for s in d["strategies"].values():
            assert -1 <= s["cost_reduction"] <= 1 and s["quality_ratio"] >= 0
            assert s["curve"], name
    assert {"cascade-rules", "cascade-rules+verifier"} <= set(r["datasets"]["gsm8k"]["strategies"])
    assert "cascade-rules" not in r["datasets"]["mmlu"]["strategies"]  # MMLU has no answers to check
    assert "learned+tag" in r["datasets"]["mmlu"]["strategies"]


def test_cost_reduction_is_one_minus_cost_over_always_strong(fixture_report: dict[str, Any], fixture_dir: Path) -> None:
    """Recompute the test split's always-strong cost from the raw CSV, and every cost_reduction from it."""
    from spendgate.controls.tokens import tokenizer

    count = tokenizer("cl100k_base")
    assert count is not None
    with open(fixture_dir / "gsm8k_responses.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    _, test = ev.split_indices([r["prompt"] for r in rows], 0.5, seed=0)
    expected = sum(
        (
            (count(rows[i]["prompt"]) + 4 + 3) * Decimal(10) + count(rows[i][f"{STRONG}_response"]) * Decimal(30)
            for i in test
        ),
        Decimal(0),
    ) / Decimal(1_000_000)
    gsm8k = fixture_report["datasets"]["gsm8k"]
    assert Decimal(gsm8k["test"]["strong_cost"]) == expected
    for s in gsm8k["strategies"].values():
        point = s["test"]
        assert Decimal(point["strong_cost"]) == expected
        assert point["cost_reduction"] == pytest.approx(float(1 - Decimal(point["cost"]) / expected), abs=1e-12)
        assert s["cost_reduction"] == point["cost_reduction"]
    # a cascade that escalates everything pays both models: negative savings
    rules_curve = gsm8k["strategies"]["cascade-rules"]["curve"]
    all_strong = next(p for p in rules_curve if p["strong_calls"] == 1.0)
    assert Decimal(all_strong["cost"]) == expected + Decimal(gsm8k["test"]["weak_cost"])
    assert all_strong["cost_reduction"] < 0


def test_mt_bench_answers_are_read_from_the_judge_prompts(fixture_dir: Path) -> None:
    strong = ev.catalog_price(STRONG, ev.DEFAULT_STRONG_PRICE)
    weak = ev.catalog_price(WEAK, ev.DEFAULT_WEAK_PRICE)
    data = ev.load_mt_bench(fixture_dir, strong, weak)
    assert len(data.items) == 12
    first = data.items[0]
    assert first.prompt == "Question 81 turn one about writing?" and first.group == "writing"
    assert first.strong_output_tokens > 10  # "Answer one of … " three times
    assert first.strong_cost > first.weak_cost > 0


def test_cross_dataset_runs(fixture_report: dict[str, Any]) -> None:
    runs = {(tuple(c["train"]), c["test"], c["strategy"]) for c in fixture_report["cross_dataset"]}
    assert (("mmlu",), "gsm8k", "learned") in runs
    assert (("gsm8k",), "mmlu", "learned") in runs
    assert (("mmlu", "gsm8k"), "mt-bench", "learned/$") in runs
    for c in fixture_report["cross_dataset"]:
        test_items = fixture_report["datasets"][c["test"]]["test"]["items"]
        assert c["test_items"] == test_items  # the target's own test split
        assert c["train_items"] == sum(fixture_report["datasets"][t]["all"]["items"] for t in c["train"])


def test_text_output_states_the_prices(fixture_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval-router", "--data", str(fixture_dir), "--datasets", "gsm8k", "--no-cross", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "genai-prices:openai/gpt-4-turbo" in out and "genai-prices:mistral/mixtral-8x7b" in out
    assert "input    10  output    30" in out
    assert "cascade-rules+verifier" in out and "headline" in out


def test_missing_data_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval-router", "--data", str(tmp_path / "nope")]) == 2
    assert "--data" in capsys.readouterr().err


# --- the real data, a seeded subset ---------------------------------------------------------------


def test_real_data_subset(capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    assert main(["eval-router", "--data", str(REAL_DATA), "--limit", "200", "--json", "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert time.monotonic() - started < 30
    assert report["method"]["limit"] == 200
    for name in ("mmlu", "gsm8k"):
        d = report["datasets"][name]
        assert d["all"]["items"] == 200
        assert d["train"]["items"] + d["test"]["items"] == 200
        assert 0.5 < d["test"]["strong_quality"] <= 1 and d["test"]["weak_quality"] < d["test"]["strong_quality"] + 0.1
        assert 0 < d["test"]["weak_cost_share"] < 0.1  # Mixtral costs a few % of GPT-4
        assert -0.1 <= d["cost_reduction"] <= 1 and 0.5 <= d["quality_ratio"] <= 1.5
    assert len(report["cross_dataset"]) == 6

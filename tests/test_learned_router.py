"""The learned routing check: a small classifier on prompt features, trained from outcomes."""

from __future__ import annotations

import json
import random
import statistics
import time
from pathlib import Path

import numpy as np
import pytest

from spendgate.cli import main
from spendgate.routing.learned import (
    DEFAULT_FEATURES,
    LearnedRouter,
    answer_checks,
    arithmetic_errors,
    final_answer,
    fit_logistic,
    hedges,
    train_from_examples,
)

EASY = [
    "What is the capital of {x}?",
    "Translate 'good morning' into {x}.",
    "Write a friendly greeting for a customer from {x}.",
    "Summarize in one sentence why people visit {x}.",
    "Name a famous dish from {x}.",
]
HARD = [
    "Prove that the sum of the first {n} odd numbers is a perfect square, then generalize to {x}.",
    "Compute the integral of x^{n} * log(x) from 1 to {n} and show each step of the derivation.",
    "A train leaves {x} at {n} km/h; another follows {n} minutes later at twice the speed. When do they meet?",
    "Derive the closed form of the recurrence a(n) = 3a(n-1) - 2a(n-2) with a(0) = {n}, a(1) = {n}.",
    "Find all integer solutions of x^2 - {n}y^2 = 1 and justify that the list is complete.",
]
PLACES = ["France", "Japan", "Peru", "Kenya", "Norway", "Chile", "Egypt", "India", "Spain", "Canada", "Ghana", "Laos"]


def synthetic(n: int, seed: int, noise: float = 0.1) -> tuple[list[str], list[bool]]:
    """Easy prompts succeed, hard ones fail, with `noise` of the labels flipped."""
    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(n):
        easy = rng.random() < 0.5
        template = rng.choice(EASY if easy else HARD)
        texts.append(template.format(x=rng.choice(PLACES), n=rng.randint(2, 999)))
        labels.append(easy if rng.random() >= noise else not easy)
    return texts, labels


def auc(scores: np.ndarray, labels: list[bool]) -> float:
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


@pytest.fixture(scope="module")
def trained() -> tuple[LearnedRouter, list[str], list[bool]]:
    train_texts, train_labels = synthetic(300, seed=1)
    test_texts, test_labels = synthetic(300, seed=2)  # other draws: held out
    router = LearnedRouter().fit(train_texts, train_labels)
    return router, test_texts, test_labels


def test_beats_chance_on_held_out_prompts(trained: tuple[LearnedRouter, list[str], list[bool]]) -> None:
    router, texts, labels = trained
    p = router.predict_proba(texts)
    assert p.shape == (len(texts),) and ((p >= 0) & (p <= 1)).all()
    assert auc(p, labels) > 0.85  # the labels carry 10% noise, so ~0.9 is the ceiling
    accuracy = np.mean((p >= 0.5) == np.array(labels))
    majority = max(np.mean(labels), 1 - np.mean(labels))
    assert accuracy > majority + 0.2


def test_predict_one_agrees_with_predict_proba(trained: tuple[LearnedRouter, list[str], list[bool]]) -> None:
    router, texts, _ = trained
    batch = router.predict_proba(texts[:20])
    single = [router.predict_one(t) for t in texts[:20]]
    assert np.allclose(batch, single, atol=1e-6)
    e = router.embedder.encode_one(texts[0])
    assert router.predict_one(texts[0], embedding=e) == pytest.approx(single[0], abs=1e-9)


def test_save_load_round_trip_gives_identical_predictions(
    trained: tuple[LearnedRouter, list[str], list[bool]], tmp_path: Path
) -> None:
    router, texts, _ = trained
    path = tmp_path / "router.json"
    router.save(path)
    loaded = LearnedRouter.load(path)
    assert np.array_equal(router.predict_proba(texts), loaded.predict_proba(texts))
    assert [router.predict_one(t) for t in texts[:30]] == [loaded.predict_one(t) for t in texts[:30]]
    data = json.loads(path.read_text())
    meta = data["metadata"]
    assert meta["embedder"] == router.embedder.name
    assert meta["features"] == list(DEFAULT_FEATURES)
    assert meta["training_size"] == 300
    assert "trained_at" in meta
    assert len(data["weights"]) == len(data["feature_names"])
    assert path.stat().st_size < 200_000


def test_load_refuses_other_files(tmp_path: Path, trained: tuple[LearnedRouter, list[str], list[bool]]) -> None:
    router, _, _ = trained
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="not a spendgate learned-router"):
        LearnedRouter.load(bad)
    data = router.to_dict()
    data["metadata"] = {**data["metadata"], "embedder": "another-embedder"}
    with pytest.raises(ValueError, match="embedder"):
        LearnedRouter.from_dict(data)
    data = router.to_dict()
    data["weights"] = data["weights"][:-1]
    with pytest.raises(ValueError, match="inconsistent"):
        LearnedRouter.from_dict(data)


def test_needs_both_outcomes_and_a_fit() -> None:
    with pytest.raises(ValueError, match="both kinds"):
        LearnedRouter().fit(["a", "b", "c"], [True, True, True])
    with pytest.raises(RuntimeError):
        LearnedRouter().predict_one("hello")
    with pytest.raises(ValueError):
        LearnedRouter(["embedding", "colour"])


def test_group_priors_learned_and_unknown_groups_ignored() -> None:
    rng = random.Random(3)
    texts, labels, groups = [], [], []
    for _ in range(400):
        g = rng.choice(["faq", "legal"])
        texts.append(rng.choice(EASY).format(x=rng.choice(PLACES), n=1))  # the text says nothing
        groups.append(g)
        labels.append((g == "faq") == (rng.random() < 0.85))
    router = LearnedRouter().fit(texts, labels, groups=groups)
    assert router.groups == ["faq", "legal"]
    t = texts[0]
    faq, legal, unknown = router.predict_one(t, "faq"), router.predict_one(t, "legal"), router.predict_one(t, "other")
    assert faq > 0.7 and legal < 0.3
    assert unknown == router.predict_one(t)  # an unseen tag adds no offset
    assert router.predict_proba([t], groups=["legal"])[0] == pytest.approx(legal, abs=1e-6)


def test_fit_logistic_reaches_the_optimum() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 5))
    y = (rng.random(500) < 1 / (1 + np.exp(-(x @ np.array([2.0, -1.0, 0.0, 0.5, 0.0]) + 0.3)))).astype(float)
    w, b = fit_logistic(x, y, l2=1.0)
    p = 1 / (1 + np.exp(-(x @ w + b)))
    assert np.allclose(x.T @ (p - y) + 1.0 * w, 0, atol=1e-6)  # the penalized gradient vanishes
    assert abs(np.sum(p - y)) < 1e-6  # the bias is not penalized
    assert w[0] > 1.0 and w[1] < -0.5


def test_answer_checks_spot_warning_signs() -> None:
    good = "He runs 3 * 60 = <<3*60=180>>180 meters, 3 times: 180 * 3 = 540.\n#### 540"
    bad = "So 12 * 4 = 46 meters. However, I assume it is roughly that"
    assert final_answer(good) == 540 and final_answer(bad) is None
    assert arithmetic_errors(good) == 0 and arithmetic_errors(bad) == 1
    assert hedges(good) == 0 and hedges(bad) == 2
    checks = answer_checks("He runs 3 sprints of 60 meters 3 times a week.", good)
    assert checks[0] == 0 and checks[4] == 0  # a final answer; every number of the prompt used
    checks = answer_checks("A 12 by 4 field and 7 goats.", bad)
    assert checks[0] == 1 and checks[2] > 0 and checks[5] == 1  # no final answer, a wrong step, cut short


def test_verifier_uses_the_answer() -> None:
    rng = random.Random(5)
    texts, answers, labels = [], [], []
    for _ in range(200):
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        ok = rng.random() < 0.6
        texts.append(f"What is {a} times {b}?")
        answers.append(f"{a} * {b} = {a * b if ok else a * b + rng.randint(1, 9)}\n#### {a * b}")
        labels.append(ok)
    router = LearnedRouter(["shape", "answer_checks"], l2=1.0).fit(texts, labels, answers=answers)
    assert router.needs_answers
    with pytest.raises(ValueError):
        router.predict_one(texts[0])
    right = router.predict_one("What is 7 times 8?", answer="7 * 8 = 56\n#### 56")
    wrong = router.predict_one("What is 7 times 8?", answer="7 * 8 = 58\n#### 58")
    assert right > 0.8 > 0.3 > wrong


def test_arithmetic_check_never_evaluates_code() -> None:
    assert arithmetic_errors("<<__import__('os').system('true')=0>>") == 0
    assert arithmetic_errors("<<2**100000=1>>") == 0
    assert arithmetic_errors("(" * 300 + "1" + ")" * 300 + " = 2") == 0


def test_train_from_examples_pairs_and_triples() -> None:
    texts, labels = synthetic(120, seed=4)
    router = train_from_examples(list(zip(texts, labels)), source="unit-test")
    assert router.groups == [] and router.metadata["source"] == "unit-test"
    groups = ["a" if i % 2 else "b" for i in range(len(texts))]
    router = train_from_examples(list(zip(texts, labels, groups)))
    assert router.groups == ["a", "b"]
    assert router.metadata["l2"] in (1.0, 10.0, 100.0, 1000.0)  # chosen by cross-validation


def test_predict_one_is_fast(trained: tuple[LearnedRouter, list[str], list[bool]]) -> None:
    router, texts, _ = trained
    text = texts[0] * 3  # ~250 characters
    for _ in range(50):
        router.predict_one(text)
    times = []
    for _ in range(300):
        t = time.perf_counter()
        router.predict_one(text)
        times.append(time.perf_counter() - t)
    assert statistics.median(times) < 0.002  # ~0.1 ms on an idle core; loose for a busy CI machine


def test_router_train_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    texts, labels = synthetic(150, seed=6)
    examples = tmp_path / "outcomes.jsonl"
    examples.write_text("".join(json.dumps({"prompt": t, "ok": y}) + "\n" for t, y in zip(texts, labels)) + "\n")
    out = tmp_path / "model.json"
    assert main(["router", "train", "--examples", str(examples), "--out", str(out), "--json"]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["training_size"] == 150 and meta["model_path"] == str(out)
    router = LearnedRouter.load(out)
    assert router.predict_one(EASY[0].format(x="Peru", n=1)) > router.predict_one(HARD[0].format(x="Peru", n=7))

    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "hi", "ok": "yes"}\n')
    assert main(["router", "train", "--examples", str(broken), "--out", str(tmp_path / "x.json")]) == 1
    assert "expected" in capsys.readouterr().err


def test_router_train_command_with_answers_makes_a_verifier(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = random.Random(8)
    lines = []
    for _ in range(120):
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        ok = rng.random() < 0.6
        result = a * b if ok else a * b + rng.randint(1, 9)
        lines.append({"prompt": f"What is {a} times {b}?", "answer": f"{a} * {b} = {result}\n#### {result}", "ok": ok})
    examples = tmp_path / "verified.jsonl"
    examples.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "verifier.json"
    assert main(["router", "train", "--examples", str(examples), "--out", str(out)]) == 0
    assert "verifier" in capsys.readouterr().out
    verifier = LearnedRouter.load(out)
    assert verifier.needs_answers
    assert verifier.predict_one("What is 7 times 8?", answer="7 * 8 = 56\n#### 56") > verifier.predict_one(
        "What is 7 times 8?", answer="7 * 8 = 59\n#### 59"
    )
    lines[0].pop("answer")
    examples.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert main(["router", "train", "--examples", str(examples), "--out", str(out)]) == 1
    assert "all or none" in capsys.readouterr().err

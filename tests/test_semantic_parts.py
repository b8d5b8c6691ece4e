"""The semantic cache's parts: the shipped embedder and the per-scope vector index."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from spendgate.cache.embedding import DEFAULT_THRESHOLD, MODEL_DIR, Embedder, load_embedder
from spendgate.cache.vectors import EXACT_LIMIT, VectorIndex


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return load_embedder()


def test_the_model_ships_inside_the_package_with_its_notice() -> None:
    names = {p.name for p in MODEL_DIR.iterdir()}
    assert {"model.safetensors", "tokenizer.json", "config.json", "NOTICE", "spendgate.json"} <= names
    notice = (MODEL_DIR / "NOTICE").read_text()
    assert "all-MiniLM-L6-v2" in notice and "Apache License" in notice and "model2vec" in notice
    assert sum(p.stat().st_size for p in MODEL_DIR.iterdir()) < 16e6


def test_loads_without_network_and_names_itself(tmp_path: Path) -> None:
    # A fresh interpreter with the hub forced offline and every socket refused: loading must not care.
    code = (
        "import socket\n"
        "def refuse(*a, **k): raise OSError('network used')\n"
        "socket.socket.connect = refuse\n"
        "socket.create_connection = refuse\n"
        "from spendgate.cache.embedding import load_embedder\n"
        "e = load_embedder()\n"
        "print(e.name, e.dims, e.encode_one('hello').shape[0])\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    name, dims, size = out.stdout.split()
    meta = json.loads((MODEL_DIR / "spendgate.json").read_text())
    assert name == meta["name"] and int(dims) == int(size) == meta["dims"]
    assert not list(tmp_path.iterdir())  # nothing cached, nothing downloaded


def test_loaded_once(embedder: Embedder) -> None:
    assert load_embedder() is embedder
    assert load_embedder(str(MODEL_DIR)) is embedder


def test_a_directory_without_a_model_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        Embedder(tmp_path)


def test_rows_are_unit_float32_and_deterministic(embedder: Embedder) -> None:
    texts = ["How do I cancel my subscription?", "Summarise this contract in three bullet points.", "ok"]
    a = embedder.encode(texts)
    b = embedder.encode(list(reversed(texts)))[::-1]
    assert a.shape == (3, embedder.dims) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(embedder.encode_one(texts[0]), a[0])
    assert embedder.encode_one(texts[0]).shape == (embedder.dims,)


def test_empty_inputs(embedder: Embedder) -> None:
    assert embedder.encode([]).shape == (0, embedder.dims)
    assert not np.isnan(embedder.encode_one("")).any()


def test_paraphrases_score_higher_than_unrelated_text(embedder: Embedder) -> None:
    pairs = [
        ("How do I reset my password?", "How can I change my password?"),
        ("What is the refund policy for annual plans?", "What is your refund policy on yearly plans?"),
        ("Translate 'good morning' into Spanish.", "How do you say 'good morning' in Spanish?"),
    ]
    unrelated = [
        "Write a haiku about autumn leaves.",
        "Which river flows through Budapest?",
        "Sort this list of numbers.",
    ]
    for (a, b), other in zip(pairs, unrelated, strict=True):
        va, vb, vo = embedder.encode([a, b, other])
        assert float(va @ vb) > float(va @ vo) + 0.2, (a, b, other)
    same = embedder.encode(["What is the capital of France?"] * 2)
    assert float(same[0] @ same[1]) >= DEFAULT_THRESHOLD
    assert 0.5 < DEFAULT_THRESHOLD < 1.0


def _unit_rows(n: int, dims: int, seed: int = 0) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((n, dims)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_index_add_search_remove() -> None:
    index = VectorIndex(8)
    rows = _unit_rows(5, 8)
    assert index.search(rows[0]) == [] and len(index) == 0
    for key, row in enumerate(rows):
        index.add(key * 10, row)
    assert len(index) == 5 and 20 in index and 3 not in index
    best, sim = index.search(rows[2], k=1)[0]
    assert best == 20 and sim == pytest.approx(1.0, abs=1e-5)
    index.remove(20)
    index.remove(20)  # already gone: no-op
    index.remove(999)
    assert len(index) == 4 and 20 not in index
    assert all(key != 20 for key, _ in index.search(rows[2], k=10))


def test_index_add_replaces_a_key() -> None:
    index = VectorIndex(4)
    index.add(1, np.array([1, 0, 0, 0], np.float32))
    index.add(1, np.array([0, 1, 0, 0], np.float32))
    assert len(index) == 1
    assert index.search(np.array([0, 1, 0, 0], np.float32)) == [(1, pytest.approx(1.0))]


def test_index_returns_cosine_of_unnormalised_input() -> None:
    index = VectorIndex(2)
    index.add(7, np.array([3.0, 4.0]))
    [(key, sim)] = index.search(np.array([4.0, 3.0]), k=3)
    assert key == 7 and sim == pytest.approx(24 / 25, abs=1e-6)


def test_small_index_is_exact_and_k_above_size_returns_all() -> None:
    rows = _unit_rows(300, 16, seed=1)
    queries = _unit_rows(50, 16, seed=2)
    index = VectorIndex(16)
    for key, row in enumerate(rows):
        index.add(key, row)
    for q in queries:
        sims = rows @ q
        expected = np.argsort(-sims)[:5].tolist()
        found = index.search(q, k=5)
        assert [key for key, _ in found] == expected
        np.testing.assert_allclose([s for _, s in found], sims[expected], atol=1e-5)
    everything = index.search(queries[0], k=1000)
    assert len(everything) == 300
    assert [s for _, s in everything] == sorted((s for _, s in everything), reverse=True)
    assert index.search(queries[0], k=0) == []


def test_index_grows_past_the_exact_limit_and_keeps_finding_entries() -> None:
    n = EXACT_LIMIT + 500
    rows = _unit_rows(n, 16, seed=3)
    index = VectorIndex(16)
    for key, row in enumerate(rows):
        index.add(key, row)
    assert len(index) == n
    hits = sum(index.search(rows[key], k=1)[0][0] == key for key in range(0, n, 97))
    assert hits == len(range(0, n, 97))
    for key in range(0, n, 2):
        index.remove(key)
    assert len(index) == n - len(range(0, n, 2))
    found = index.search(rows[10], k=4)
    assert found and all(key % 2 == 1 for key, _ in found)
    assert index.search(rows[11], k=1)[0][0] == 11


def test_index_rejects_bad_input() -> None:
    index = VectorIndex(4)
    with pytest.raises(ValueError):
        index.add(-1, np.ones(4))
    with pytest.raises(ValueError):
        index.add(1, np.ones(5))
    with pytest.raises(ValueError):
        VectorIndex(0)

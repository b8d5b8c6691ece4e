"""The learned check: predict from a prompt whether the cheap model will do.

A cascade's cheapest step costs little, but sending it a prompt it will fail
costs both calls and some latency. `LearnedRouter` learns from outcomes
(prompt, did the cheap model answer well?) the probability that it will, and
a `learned` check skips the cheap step when that probability is below its
threshold (`spendgate.routing.schema.LearnedCheck`).

The model is deliberately small, so a prediction costs about one embedding
(~0.1 ms for a 300-character prompt) plus a few µs:

* features (`DEFAULT_FEATURES`): the prompt's embedding from the semantic
  cache's static embedder (`spendgate.cache.embedding`, 128 dims, no torch),
  a few shape statistics (length, digits, symbols, numbers, lines), and a
  `words` score (the mean, over the prompt's distinct words, of how much each
  word moved the outcome in training; cross-fitted so the classifier does not
  over-trust it);
* optionally a *group* per prompt (a task or feature tag known at request
  time, e.g. an MMLU subject) as a one-hot prior with its own lighter penalty;
* optionally features of the cheap model's *answer* (`ANSWER_FEATURES`, for a
  verifier that runs after the cheap call in a cascade): its shape, its
  embedding, and checks such as an arithmetic step that does not add up, a
  hedge, a missing final answer;
* classifier: L2-regularized logistic regression on standardized features,
  fitted exactly with Newton's method (IRLS) in numpy — no scikit-learn.

Saved as one JSON file: weights, standardization, group and word tables, and
metadata (embedder, features, training size, date); a model loads only with
the embedder it was trained with. `docs/routing-eval.md` measures it on
RouteLLM's MMLU/GSM8K/MT-Bench data.
"""

from __future__ import annotations

import ast
import json
import math
import operator
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from spendgate.cache.embedding import Embedder, load_embedder

FORMAT = "spendgate-learned-router/1"

PROMPT_FEATURES: tuple[str, ...] = ("embedding", "shape", "words")
ANSWER_FEATURES: tuple[str, ...] = ("answer_embedding", "answer_shape", "answer_checks")
KNOWN_FEATURES: tuple[str, ...] = PROMPT_FEATURES + ANSWER_FEATURES
DEFAULT_FEATURES: tuple[str, ...] = ("embedding", "shape", "words")
# A cascade's verifier, judging the cheap answer: on GSM8K the answer's embedding added nothing to these.
VERIFIER_FEATURES: tuple[str, ...] = ("shape", "words", "answer_shape", "answer_checks")

SHAPE_NAMES: tuple[str, ...] = (
    "log_chars",
    "log_words",
    "digit_share",
    "symbol_share",
    "upper_share",
    "log_numbers",
    "log_lines",
    "questions",
)
CHECK_NAMES: tuple[str, ...] = (
    "no_final_answer",
    "final_not_integer",
    "arithmetic_errors",
    "hedges",
    "prompt_numbers_unused",
    "truncated",
)

_NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")
_DIGIT = re.compile(r"\d")
_SYMBOL = re.compile(r"[-+*/=^<>%$()\[\]{}|\\]")
_UPPER = re.compile(r"[A-Z]")
_FINAL = re.compile(r"(?:####|answer is|answer:)\s*\**\s*\$?\s*(-?\d[\d,]*(?:\.\d+)?)", re.IGNORECASE)
_CALC = re.compile(r"<<([^=<>]+)=([^<>]+)>>")
_PLAIN_EQ = re.compile(r"((?:\d[\d,]*(?:\.\d+)?\s*[-+*/x×]\s*)+\d[\d,]*(?:\.\d+)?)\s*=\s*\$?\s*(-?\d[\d,]*(?:\.\d+)?)")
_HEDGES = re.compile(
    r"\b(?:however|assum\w*|approximately|round(?:ed|ing)?|cannot|can't|not possible|unclear|actually|"
    r"i'm not sure|not enough information)\b",
    re.IGNORECASE,
)
_ARITH = re.compile(r"^[\d\s.+\-*/()]+$")
_WORD = re.compile(r"[a-z]+|\d[\d,.]*")


# --- features -----------------------------------------------------------------------------


def shape_features(text: str) -> list[float]:
    """Cheap statistics of a text, in `SHAPE_NAMES` order (a few µs: C-level counting only)."""
    n = len(text) or 1
    return [
        math.log1p(len(text)),
        math.log1p(len(text.split())),
        len(_DIGIT.findall(text)) / n,
        len(_SYMBOL.findall(text)) / n,
        len(_UPPER.findall(text)) / n,
        math.log1p(len(_NUMBER.findall(text))),
        math.log1p(text.count("\n")),
        float(min(text.count("?"), 5)),
    ]


def words_of(text: str) -> set[str]:
    """The distinct lowercase words of a text; any number counts as the word `#`."""
    return {("#" if w[0].isdigit() else w) for w in _WORD.findall(text.lower())}


def word_weights(
    word_sets: Sequence[set[str]], y: np.ndarray, *, min_count: int = 3, smoothing: float = 5.0
) -> dict[str, float]:
    """Per word: how much the label's mean moves when the word is present, shrunk toward 0.

    weight(w) = Σ_{texts with w} (yᵢ − ȳ) / (count(w) + smoothing), for words in at least
    `min_count` texts. A text's `words` feature is the mean weight of its words.
    """
    mean = float(y.mean())
    total: dict[str, float] = {}
    count: Counter[str] = Counter()
    for words, label in zip(word_sets, y):
        for w in words:
            total[w] = total.get(w, 0.0) + (float(label) - mean)
        count.update(words)
    return {w: total[w] / (c + smoothing) for w, c in count.items() if c >= min_count}


def words_score(words: set[str], weights: dict[str, float]) -> float:
    if not words:
        return 0.0
    return sum(weights.get(w, 0.0) for w in words) / len(words)


def _number(text: str) -> float | None:
    try:
        return float(text.replace(",", "").rstrip("."))
    except ValueError:
        return None


_OPERATORS: dict[type, Any] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}


def _arithmetic(expr: str) -> float | None:
    """The value of a plain arithmetic expression (numbers, + - * / x ×, parentheses), else None.

    Walks the parsed expression itself (no `eval`): the text comes from a model's answer.
    """
    expr = expr.replace(",", "").replace("×", "*").replace("x", "*").replace("$", "")
    if len(expr) > 200 or not _ARITH.match(expr) or "**" in expr or "//" in expr:
        return None
    try:
        return _evaluate(ast.parse(expr.strip(), mode="eval").body)
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError, RecursionError, MemoryError):
        return None


def _evaluate(node: ast.AST) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return float(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _evaluate(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        return float(_OPERATORS[type(node.op)](_evaluate(node.left), _evaluate(node.right)))
    raise ValueError("not plain arithmetic")


def arithmetic_errors(answer: str) -> int:
    """Worked steps like `3 * 60 = 180` or `<<3*60=180>>` whose result is wrong."""
    errors = 0
    for expr, result in _CALC.findall(answer) + _PLAIN_EQ.findall(answer):
        got, said = _arithmetic(expr), _number(result)
        if got is not None and said is not None and abs(got - said) > 1e-2 * max(1.0, abs(said)):
            errors += 1
    return errors


def hedges(answer: str) -> int:
    """Hedging or refusing phrases ("however", "approximately", "I'm not sure", …) in an answer."""
    return len(_HEDGES.findall(answer))


def final_answer(answer: str) -> float | None:
    """The number after the last `####`, `answer is` or `answer:` marker, if any."""
    found = _FINAL.findall(answer)
    return _number(found[-1]) if found else None


def answer_checks(prompt: str, answer: str) -> list[float]:
    """Warning signs in a cheap model's answer, in `CHECK_NAMES` order."""
    final = final_answer(answer)
    prompt_numbers = {m.replace(",", "") for m in _NUMBER.findall(prompt)}
    answer_numbers = {m.replace(",", "") for m in _NUMBER.findall(answer)}
    stripped = answer.rstrip()
    return [
        float(final is None),
        float(final is not None and final != int(final)),
        math.log1p(arithmetic_errors(answer)),
        math.log1p(hedges(answer)),
        math.log1p(len(prompt_numbers - answer_numbers)),
        float(bool(stripped) and stripped[-1] not in ".!?)]}\"'`*" and final is None),
    ]


# --- the classifier -----------------------------------------------------------------------


def fit_logistic(
    x: np.ndarray,
    y: np.ndarray,
    l2: float | np.ndarray = 1.0,
    sample_weight: np.ndarray | None = None,
    max_iter: int = 50,
) -> tuple[np.ndarray, float]:
    """L2-regularized logistic regression by Newton's method (IRLS): (weights, bias).

    Minimizes Σ wᵢ·logloss(yᵢ, σ(xᵢ·β + b)) + ½·Σⱼ l2ⱼ·βⱼ² (`l2` one number or
    one per column; the bias is not penalized). Converges in a handful of iterations for the few hundred
    features used here; deterministic.
    """
    n, d = x.shape
    w = np.ones(n) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    xb = np.hstack([x, np.ones((n, 1))])
    beta = np.zeros(d + 1)
    penalty = np.zeros(d + 1)
    penalty[:-1] = l2
    for _ in range(max_iter):
        p = _sigmoid(xb @ beta)
        grad = xb.T @ (w * (p - y)) + penalty * beta
        h = (xb * (w * p * (1 - p))[:, None]).T @ xb + np.diag(penalty + 1e-9)
        step = np.linalg.solve(h, grad)
        beta -= step
        if float(np.max(np.abs(step))) < 1e-8:
            break
    return beta[:-1], float(beta[-1])


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -40, 40)))


class LearnedRouter:
    """P(the cheap model answers well | prompt [, group] [, its answer]).

    >>> router = LearnedRouter().fit(prompts, outcomes)
    >>> router.predict_one("What is 2 + 2?")      # a probability in [0, 1]
    >>> router.save("router.json"); LearnedRouter.load("router.json")

    `groups` (optional, per prompt) are task or feature tags known at request
    time; each tag seen at least `min_group_size` times gets its own learned
    offset, with its own, lighter penalty `group_l2`. Unknown tags get none.
    """

    def __init__(
        self,
        features: Sequence[str] = DEFAULT_FEATURES,
        *,
        l2: float = 1000.0,
        group_l2: float = 10.0,
        use_groups: bool = True,
        min_group_size: int = 5,
        words_min_count: int = 3,
        words_smoothing: float = 5.0,
        embedder: Embedder | None = None,
    ) -> None:
        unknown = [f for f in features if f not in KNOWN_FEATURES]
        if unknown or not features or len(set(features)) != len(features):
            raise ValueError(f"features {list(features)}: choose each at most once from {list(KNOWN_FEATURES)}")
        self.features: tuple[str, ...] = tuple(features)
        self.l2 = float(l2)
        self.group_l2 = float(group_l2)
        self.use_groups = use_groups
        self.min_group_size = int(min_group_size)
        self.words_min_count = int(words_min_count)
        self.words_smoothing = float(words_smoothing)
        self._embedder = embedder
        self.groups: list[str] = []
        self._group_index: dict[str, int] = {}
        self.word_weights: dict[str, float] = {}
        self.mean: np.ndarray | None = None
        self.scale: np.ndarray | None = None
        self.weights: np.ndarray | None = None
        self.bias: float = 0.0
        self.metadata: dict[str, Any] = {}

    # -- features ----------------------------------------------------------------------------

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = load_embedder()
        return self._embedder

    @property
    def needs_answers(self) -> bool:
        return any(f in ANSWER_FEATURES for f in self.features)

    def _width(self, feature: str) -> int:
        if feature in ("embedding", "answer_embedding"):
            return self.embedder.dims
        if feature in ("shape", "answer_shape"):
            return len(SHAPE_NAMES)
        if feature == "answer_checks":
            return len(CHECK_NAMES)
        return 1  # words

    def feature_names(self) -> list[str]:
        """One name per column of the design matrix (groups last)."""
        names: list[str] = []
        for f in self.features:
            if f in ("embedding", "answer_embedding"):
                names += [f"{f}[{i}]" for i in range(self.embedder.dims)]
            elif f in ("shape", "answer_shape"):
                names += [f"{f}.{s}" for s in SHAPE_NAMES]
            elif f == "answer_checks":
                names += [f"checks.{s}" for s in CHECK_NAMES]
            else:
                names.append("words.score")
        return names + [f"group={g}" for g in self.groups]

    def transform(
        self,
        texts: Sequence[str],
        groups: Sequence[str | None] | None = None,
        answers: Sequence[str] | None = None,
        *,
        prompt_embeddings: np.ndarray | None = None,
        answer_embeddings: np.ndarray | None = None,
        word_scores: np.ndarray | None = None,
    ) -> np.ndarray:
        """The raw (unstandardized) design matrix.

        Embeddings may be passed in when already computed (the evaluation
        embeds each dataset once); `word_scores` replaces the `words` column
        (fit passes cross-fitted scores for its own training rows).
        """
        texts = list(texts)
        n = len(texts)
        if self.needs_answers and (answers is None or len(answers) != n):
            raise ValueError(f"features {self.features} need the cheap model's answers, one per prompt")
        blocks: list[np.ndarray] = []
        for f in self.features:
            if f == "embedding":
                e = prompt_embeddings if prompt_embeddings is not None else self.embedder.encode(texts)
                blocks.append(np.asarray(e, dtype=np.float64).reshape(n, -1))
            elif f == "shape":
                blocks.append(np.array([shape_features(t) for t in texts], dtype=np.float64).reshape(n, -1))
            elif f == "words":
                if word_scores is None:
                    word_scores = np.array([words_score(words_of(t), self.word_weights) for t in texts])
                blocks.append(np.asarray(word_scores, dtype=np.float64).reshape(n, 1))
            elif f == "answer_embedding":
                assert answers is not None
                e = answer_embeddings if answer_embeddings is not None else self.embedder.encode(list(answers))
                blocks.append(np.asarray(e, dtype=np.float64).reshape(n, -1))
            elif f == "answer_shape":
                assert answers is not None
                blocks.append(np.array([shape_features(a) for a in answers], dtype=np.float64).reshape(n, -1))
            else:  # answer_checks
                assert answers is not None
                rows = [answer_checks(t, a) for t, a in zip(texts, answers)]
                blocks.append(np.array(rows, dtype=np.float64).reshape(n, -1))
        if self.groups:
            onehot = np.zeros((n, len(self.groups)))
            for i, g in enumerate(groups or [None] * n):
                j = self._group_index.get(g) if g is not None else None
                if j is not None:
                    onehot[i, j] = 1.0
            blocks.append(onehot)
        return np.hstack(blocks)

    # -- fitting and predicting -----------------------------------------------------------------

    def fit(
        self,
        texts: Sequence[str],
        labels: Sequence[bool] | np.ndarray,
        *,
        groups: Sequence[str | None] | None = None,
        answers: Sequence[str] | None = None,
        sample_weight: Sequence[float] | np.ndarray | None = None,
        prompt_embeddings: np.ndarray | None = None,
        answer_embeddings: np.ndarray | None = None,
        source: str | None = None,
    ) -> LearnedRouter:
        """Learn from outcomes: `labels[i]` is True when the cheap model did well on `texts[i]`."""
        texts = list(texts)
        y = np.asarray(labels, dtype=np.float64).reshape(-1)
        if len(y) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(y)} labels")
        if len(y) < 2 or y.min() == y.max():
            raise ValueError("need outcomes of both kinds (some successes and some failures) to learn from")
        if groups is not None and len(groups) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(groups)} groups")
        self.groups = []
        if self.use_groups and groups is not None:
            counts = Counter(g for g in groups if g is not None)
            self.groups = sorted(g for g, c in counts.items() if c >= self.min_group_size)
        self._group_index = {g: i for i, g in enumerate(self.groups)}
        word_scores = None
        if "words" in self.features:
            word_sets = [words_of(t) for t in texts]
            self.word_weights = word_weights(
                word_sets, y, min_count=self.words_min_count, smoothing=self.words_smoothing
            )
            word_scores = _cross_fitted_word_scores(word_sets, y, self.words_min_count, self.words_smoothing)
        x = self.transform(
            texts,
            groups,
            answers,
            prompt_embeddings=prompt_embeddings,
            answer_embeddings=answer_embeddings,
            word_scores=word_scores,
        )
        self.mean = x.mean(axis=0)
        scale = x.std(axis=0)
        self.scale = np.where(scale > 1e-12, scale, 1.0)
        penalty = np.full(x.shape[1], self.l2)
        penalty[x.shape[1] - len(self.groups) :] = self.group_l2
        weights = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        self.weights, self.bias = fit_logistic((x - self.mean) / self.scale, y, penalty, weights)
        self.metadata = {
            "embedder": self.embedder.name,
            "embedder_dims": self.embedder.dims,
            "features": list(self.features),
            "groups": len(self.groups),
            "words": len(self.word_weights),
            "training_size": int(len(y)),
            "positive_share": round(float(y.mean()), 6),
            "l2": self.l2,
            "group_l2": self.group_l2,
            "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        if source:
            self.metadata["source"] = source
        self._fold()
        return self

    def _fold(self) -> None:
        """Fold the standardization into the weights (score = raw·w' + b') and
        cut them into per-feature blocks for `predict_one`."""
        assert self.weights is not None and self.mean is not None and self.scale is not None
        self._w_raw = self.weights / self.scale
        self._b_raw = self.bias - float(self.mean @ self._w_raw)
        self._blocks: list[tuple[str, Any]] = []
        pos = 0
        for f in self.features:
            width = self._width(f)
            block = self._w_raw[pos : pos + width]
            # the embedding's dot product in float32, like the embedding itself; the rest as Python floats
            self._blocks.append((f, block.astype(np.float32) if f.endswith("embedding") else block.tolist()))
            pos += width
        self._w_groups: list[float] = self._w_raw[pos:].tolist()

    def _check_fitted(self) -> None:
        if self.weights is None:
            raise RuntimeError("LearnedRouter: fit() or load() first")

    def decision_function(
        self,
        texts: Sequence[str],
        *,
        groups: Sequence[str | None] | None = None,
        answers: Sequence[str] | None = None,
        prompt_embeddings: np.ndarray | None = None,
        answer_embeddings: np.ndarray | None = None,
    ) -> np.ndarray:
        """The log-odds that the cheap model does well, one per text."""
        self._check_fitted()
        x = self.transform(
            texts, groups, answers, prompt_embeddings=prompt_embeddings, answer_embeddings=answer_embeddings
        )
        return np.asarray(x @ self._w_raw + self._b_raw, dtype=np.float64)

    def predict_proba(
        self,
        texts: Sequence[str],
        *,
        groups: Sequence[str | None] | None = None,
        answers: Sequence[str] | None = None,
        prompt_embeddings: np.ndarray | None = None,
        answer_embeddings: np.ndarray | None = None,
    ) -> np.ndarray:
        """P(the cheap model does well), one per text, as a float64 array."""
        return _sigmoid(
            self.decision_function(
                texts,
                groups=groups,
                answers=answers,
                prompt_embeddings=prompt_embeddings,
                answer_embeddings=answer_embeddings,
            )
        )

    def predict_one(
        self, text: str, group: str | None = None, answer: str | None = None, *, embedding: np.ndarray | None = None
    ) -> float:
        """P(the cheap model does well) for one prompt (and its answer, for a verifier).

        The per-request path: one embedding (~0.1 ms for a 300-character prompt,
        the bulk of the time; pass `embedding` when the semantic cache already
        computed it for the same text) and a few short dot products.
        """
        self._check_fitted()
        if self.needs_answers and answer is None:
            raise ValueError(f"features {self.features} need the cheap model's answer")
        z = self._b_raw
        for f, w in self._blocks:
            if f == "embedding":
                e = embedding if embedding is not None else self.embedder.encode_one(text)
                z += float(np.asarray(e, dtype=np.float32) @ w)
            elif f == "shape":
                z += _dot(w, shape_features(text))
            elif f == "words":
                z += w[0] * words_score(words_of(text), self.word_weights)
            elif f == "answer_embedding":
                z += float(self.embedder.encode_one(answer or "") @ w)
            elif f == "answer_shape":
                z += _dot(w, shape_features(answer or ""))
            else:
                z += _dot(w, answer_checks(text, answer or ""))
        if group is not None and self._w_groups:
            j = self._group_index.get(group)
            if j is not None:
                z += self._w_groups[j]
        return 1.0 / (1.0 + math.exp(-max(-40.0, min(40.0, z))))

    # -- persistence -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        self._check_fitted()
        assert self.weights is not None and self.mean is not None and self.scale is not None
        return {
            "format": FORMAT,
            "metadata": self.metadata,
            "features": list(self.features),
            "feature_names": self.feature_names(),
            "l2": self.l2,
            "group_l2": self.group_l2,
            "min_group_size": self.min_group_size,
            "words_min_count": self.words_min_count,
            "words_smoothing": self.words_smoothing,
            "groups": self.groups,
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "weights": self.weights.tolist(),
            "bias": self.bias,
            "word_weights": self.word_weights,
        }

    def save(self, path: str | Path) -> None:
        """Write the model as one JSON file (floats written exactly, so a loaded model predicts the same)."""
        Path(path).write_text(json.dumps(self.to_dict(), separators=(",", ":")) + "\n")

    @classmethod
    def from_dict(cls, data: dict[str, Any], embedder: Embedder | None = None) -> LearnedRouter:
        if data.get("format") != FORMAT:
            raise ValueError(f"not a spendgate learned-router model (format {data.get('format')!r}, expected {FORMAT!r})")
        router = cls(
            data["features"],
            l2=data["l2"],
            group_l2=data["group_l2"],
            min_group_size=data["min_group_size"],
            words_min_count=data["words_min_count"],
            words_smoothing=data["words_smoothing"],
            embedder=embedder,
        )
        router.groups = list(data["groups"])
        router._group_index = {g: i for i, g in enumerate(router.groups)}
        router.word_weights = {str(k): float(v) for k, v in data.get("word_weights", {}).items()}
        router.mean = np.asarray(data["mean"], dtype=np.float64)
        router.scale = np.asarray(data["scale"], dtype=np.float64)
        router.weights = np.asarray(data["weights"], dtype=np.float64)
        router.bias = float(data["bias"])
        router.metadata = dict(data.get("metadata", {}))
        expected = router.metadata.get("embedder")
        if expected and expected != router.embedder.name:
            raise ValueError(f"model was trained with embedder {expected!r}, but {router.embedder.name!r} is loaded")
        if not (len(router.weights) == len(router.mean) == len(router.scale) == len(router.feature_names())):
            raise ValueError("model file is inconsistent: its weights do not match its features")
        router._fold()
        return router

    @classmethod
    def load(cls, path: str | Path, embedder: Embedder | None = None) -> LearnedRouter:
        return cls.from_dict(json.loads(Path(path).read_text()), embedder)

    def __repr__(self) -> str:
        size = self.metadata.get("training_size", "unfitted")
        return f"LearnedRouter(features={list(self.features)}, groups={len(self.groups)}, trained_on={size})"


def _dot(weights: list[float], values: list[float]) -> float:
    return sum(w * v for w, v in zip(weights, values))


def _cross_fitted_word_scores(
    word_sets: list[set[str]], y: np.ndarray, min_count: int, smoothing: float, folds: int = 5
) -> np.ndarray:
    """Each training text's `words` score from weights learned without it (so the
    classifier does not learn to trust a score that has seen the answer)."""
    n = len(word_sets)
    fold_of = np.random.default_rng(0).permutation(n) % folds
    scores = np.zeros(n)
    for k in range(min(folds, n)):
        inside = np.flatnonzero(fold_of != k)
        weights = word_weights([word_sets[i] for i in inside], y[inside], min_count=min_count, smoothing=smoothing)
        for i in np.flatnonzero(fold_of == k):
            scores[i] = words_score(word_sets[i], weights)
    return scores


# --- training from a user's own outcomes ----------------------------------------------------------


L2_GRID: tuple[float, ...] = (1.0, 10.0, 100.0, 1000.0)


def choose_l2(
    texts: Sequence[str],
    labels: Sequence[bool] | np.ndarray,
    *,
    groups: Sequence[str | None] | None = None,
    answers: Sequence[str] | None = None,
    features: Sequence[str] = DEFAULT_FEATURES,
    grid: Sequence[float] = L2_GRID,
    folds: int = 5,
    embedder: Embedder | None = None,
) -> float:
    """The penalty in `grid` with the lowest out-of-fold log-loss (seeded folds).

    How strongly to shrink depends on how many outcomes there are: a few
    hundred want a light penalty, tens of thousands a heavier one.
    """
    texts = list(texts)
    y = np.asarray(labels, dtype=np.float64)
    embedder = embedder or load_embedder()
    embeddings = embedder.encode(texts) if "embedding" in features else None
    answer_embeddings = embedder.encode(list(answers)) if answers is not None and "answer_embedding" in features else None

    def pick(values: Sequence[Any] | np.ndarray | None, idx: np.ndarray) -> Any:
        if values is None:
            return None
        return values[idx] if isinstance(values, np.ndarray) else [values[i] for i in idx]

    fold_of = np.random.default_rng(0).permutation(len(texts)) % folds
    best, best_loss = grid[0], math.inf
    for l2 in grid:
        loss = 0.0
        for k in range(folds):
            inside, outside = np.flatnonzero(fold_of != k), np.flatnonzero(fold_of == k)
            if y[inside].min() == y[inside].max():
                continue
            model = LearnedRouter(features, l2=l2, use_groups=groups is not None, embedder=embedder)
            model.fit(
                pick(texts, inside),
                y[inside],
                groups=pick(groups, inside),
                answers=pick(answers, inside),
                prompt_embeddings=pick(embeddings, inside),
                answer_embeddings=pick(answer_embeddings, inside),
            )
            p = model.predict_proba(
                pick(texts, outside),
                groups=pick(groups, outside),
                answers=pick(answers, outside),
                prompt_embeddings=pick(embeddings, outside),
                answer_embeddings=pick(answer_embeddings, outside),
            )
            p = np.clip(p, 1e-6, 1 - 1e-6)
            loss -= float(np.sum(y[outside] * np.log(p) + (1 - y[outside]) * np.log(1 - p)))
        if loss < best_loss:
            best, best_loss = l2, loss
    return best


def train_from_examples(
    pairs: Iterable[tuple[str, bool]] | Iterable[tuple[str, bool, str | None]],
    *,
    answers: Sequence[str] | None = None,
    l2: float | None = None,
    group_l2: float = 10.0,
    embedder: Embedder | None = None,
    source: str | None = None,
) -> LearnedRouter:
    """A router from `(prompt, ok)` pairs, or `(prompt, ok, group)` triples.

    `ok` is whether the cheap model's answer was good enough (from feedback,
    an eval, or a stronger model's judgement). With `answers` (the cheap
    model's answer to each prompt) it is a *verifier* (`VERIFIER_FEATURES`),
    for a cascade to judge the cheap answer; without, it predicts from the
    prompt alone. `l2=None` chooses the penalty by 5-fold cross-validation
    (`choose_l2`) when there are at least 50 outcomes with at least 10 of
    each kind, else uses 1000.
    """
    texts: list[str] = []
    labels: list[bool] = []
    groups: list[str | None] = []
    for pair in pairs:
        texts.append(str(pair[0]))
        labels.append(bool(pair[1]))
        groups.append(pair[2] if len(pair) > 2 else None)  # type: ignore[misc]
    if answers is not None and len(answers) != len(texts):
        raise ValueError(f"{len(texts)} prompts but {len(answers)} answers")
    features = VERIFIER_FEATURES if answers is not None else DEFAULT_FEATURES
    use_groups = any(g is not None for g in groups)
    tags = groups if use_groups else None
    if l2 is None:
        successes = sum(labels)
        enough = len(labels) >= 50 and min(successes, len(labels) - successes) >= 10
        l2 = (
            choose_l2(texts, labels, groups=tags, answers=answers, features=features, embedder=embedder)
            if enough
            else 1000.0
        )
    router = LearnedRouter(features, l2=l2, group_l2=group_l2, use_groups=use_groups, embedder=embedder)
    return router.fit(texts, labels, groups=tags, answers=answers, source=source)

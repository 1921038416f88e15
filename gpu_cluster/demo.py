"""A panic-tda-shaped demo database with real cluster structure, deterministic per seed.

Runs alternate IMAGE (even sequence numbers, tiny WEBP-like blobs) and TEXT (odd,
readable captions) invocations. Captions drift from the run's prompt toward one of a
few *attractors*: late in a run they repeat a small set of canonical phrases, so
identical texts (and therefore identical vectors) are common, as in production. Each
real model (STSBMpnet, STSBRoberta, Nomic) maps a text to a unit vector near its
attractor's centre; identical texts get identical vectors. A ``Dummy`` model has a
handful of unnormalised uniform [0, 1) vectors, as panic-tda's Dummy does.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sqlalchemy as sa

from .errors import DatabaseError, ParameterError
from .ids import Uuid7
from .schema import embedding, experimentconfig, invocation, metadata, run

REAL_MODELS = ("STSBMpnet", "STSBRoberta", "Nomic")
DUMMY_MODEL = "Dummy"
DUMMY_COUNT = 5
NETWORKS = (("FluxSchnell", "BLIP2"), ("SDXLTurbo", "Moondream"))
EPOCH_NS = 1_743_589_800 * 10**9  # 2025-04-02 10:30:00 UTC

ATTRACTORS = {
    "sea": ["ocean", "waves", "lighthouse", "sailboat", "harbor", "seagulls"],
    "city": ["skyscrapers", "traffic", "neon signs", "a busy street", "taxis", "crowds"],
    "forest": ["pine trees", "moss", "a winding trail", "mushrooms", "fog", "a deer"],
    "kitchen": ["a wooden table", "bread", "a teapot", "copper pans", "fruit", "a window"],
    "space": ["stars", "a nebula", "an astronaut", "a planet", "a rocket", "the moon"],
    "portrait": ["a woman", "an old man", "a smiling child", "a hat", "glasses", "a scarf"],
    "desert": ["sand dunes", "a cactus", "a camel", "the sun", "a canyon", "ruins"],
    "snow": ["a snowy mountain", "skiers", "a cabin", "icicles", "a frozen lake", "pines"],
}
PROMPTS = [
    "a red balloon over a quiet village", "a cat sleeping on a windowsill",
    "a robot painting a mural", "two friends sharing an umbrella",
    "an old map on a desk", "a bicycle leaning on a fence",
    "a lantern in the dark", "a garden after the rain",
]
TEMPLATES = [
    "a photo of {a} with {b}", "a painting of {a} near {b}", "{a} and {b} in soft light",
    "an image showing {a}, {b} and {c}", "a close-up of {a} beside {b}",
    "a wide shot of {a} under {b}",
]
CANONICAL_PER_ATTRACTOR = 12


@dataclass(frozen=True)
class DemoSpec:
    """Demo size: ``text_invocations`` TEXT rows, runs of ``max_length`` invocations."""

    text_invocations: int = 30_000
    dim: int = 768
    seed: int = 0
    max_length: int = 100

    def __post_init__(self):
        if self.text_invocations < 1 or self.dim < 2 or self.max_length < 2:
            raise ParameterError("demo-db needs --text-invocations >= 1 and --dim >= 2")


def canonical_phrases(rng: np.random.Generator) -> dict[str, list[str]]:
    """A small fixed set of captions per attractor (the texts trajectories repeat)."""
    out = {}
    for name, words in ATTRACTORS.items():
        phrases = set()
        while len(phrases) < CANONICAL_PER_ATTRACTOR:
            a, b, c = rng.choice(words, 3, replace=False)
            phrases.add(str(rng.choice(TEMPLATES)).format(a=a, b=b, c=c))
        out[name] = sorted(phrases)
    return out


def caption(rng, prompt: str, attractor: str, step: int, canon: dict) -> str:
    """Text of the step-th TEXT invocation of a run drifting toward ``attractor``."""
    pull = 1.0 - np.exp(-step / 6.0)
    if rng.random() < pull:
        return str(rng.choice(canon[attractor]))
    a = str(rng.choice(ATTRACTORS[attractor]))
    words = prompt.split()
    b = " ".join(words[int(rng.integers(0, max(1, len(words) - 2))):][:3])
    return str(rng.choice(TEMPLATES)).format(a=a, b=b, c=prompt)


def build_runs(spec: DemoSpec, rng: np.random.Generator):
    """Yield (prompt, attractor, network, [caption per TEXT position]) for each run."""
    canon = canonical_phrases(rng)
    per_run = spec.max_length // 2
    remaining = spec.text_invocations
    names = sorted(ATTRACTORS)
    while remaining > 0:
        k = min(per_run, remaining)
        prompt = str(rng.choice(PROMPTS))
        attractor = names[int(rng.integers(len(names)))]
        network = NETWORKS[int(rng.integers(len(NETWORKS)))]
        yield prompt, attractor, network, [caption(rng, prompt, attractor, t, canon) for t in range(k)]
        remaining -= k


def model_vectors(texts: list[str], attractor_of: list[str], dim: int, seed: int, model: str) -> np.ndarray:
    """(len(texts), dim) float32 unit vectors; one row per distinct text."""
    rng = np.random.default_rng([seed, sum(map(ord, model))])
    names = sorted(ATTRACTORS)
    centres = rng.standard_normal((len(names), dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    idx = np.array([names.index(a) for a in attractor_of])
    spread = np.where([t.startswith(("a photo of", "a painting of")) for t in texts], 0.35, 0.55)
    noise = rng.standard_normal((len(texts), dim)).astype(np.float32) / np.sqrt(dim)
    vecs = centres[idx] + spread[:, None].astype(np.float32) * noise * 2.0
    return (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)).astype(np.float32)


class DemoWriter:
    """Builds row dicts with deterministic uuid7 ids and timestamps."""

    def __init__(self, seed: int):
        self.ticks = 0
        self.ids = Uuid7(clock=self.clock, random_bytes=random.Random(seed).randbytes)

    def clock(self) -> int:
        self.ticks += 1
        return EPOCH_NS + self.ticks * 1_000_000  # 1 ms per id

    def now(self) -> dt.datetime:
        return dt.datetime(2025, 4, 2, 10, 30) + dt.timedelta(milliseconds=self.ticks)


def make_demo_db(path: str | Path, spec: DemoSpec = DemoSpec()) -> dict:
    """Create ``path`` (must not exist) and fill it; returns counts of what was written."""
    path = Path(path)
    if path.exists():
        raise ParameterError(f"{path} already exists; choose a new path for the demo database")
    folder = path.parent
    if not folder.is_dir():
        raise DatabaseError(f"cannot create {path}: folder {folder} does not exist")
    try:
        return _write_demo_db(path, spec)
    except (sa.exc.DBAPIError, OSError) as exc:
        why = getattr(exc, "orig", None) or getattr(exc, "strerror", None) or exc
        raise DatabaseError(f"cannot create {path}: {why}") from None


def _write_demo_db(path: Path, spec: DemoSpec) -> dict:
    rng = np.random.default_rng(spec.seed)
    w = DemoWriter(spec.seed)
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.exec_driver_sql("PRAGMA journal_mode=WAL")
    metadata.create_all(engine)
    counts = {"runs": 0, "invocations": 0, "embeddings": 0}
    exp_id = w.ids.hex()
    text_rows: list[tuple[str, str, str]] = []  # (invocation id, text, attractor)
    runs, invs = [], []
    for prompt, attractor, network, captions in build_runs(spec, rng):
        run_id = w.ids.hex()
        runs.append({"id": run_id, "network": list(network), "seed": -1,
                     "max_length": spec.max_length, "initial_prompt": prompt,
                     "experiment_id": exp_id})
        prev = None
        for seq in range(2 * len(captions)):
            inv_id, is_text = w.ids.hex(), seq % 2 == 1
            text = captions[seq // 2] if is_text else None
            invs.append({"id": inv_id, "started_at": w.now(), "completed_at": w.now(),
                         "model": network[seq % 2], "type": "TEXT" if is_text else "IMAGE",
                         "seed": -1, "run_id": run_id, "sequence_number": seq,
                         "input_invocation_id": prev, "output_text": text,
                         "output_image_data": None if is_text else fake_webp(rng)})
            if is_text:
                text_rows.append((inv_id, text, attractor))
            prev = inv_id
    embeddings = demo_embeddings(text_rows, spec, w, rng)
    with engine.begin() as conn:
        conn.execute(experimentconfig.insert(), [{
            "id": exp_id, "networks": [list(n) for n in NETWORKS], "seeds": [-1],
            "prompts": PROMPTS, "embedding_models": [*REAL_MODELS, DUMMY_MODEL],
            "max_length": spec.max_length, "started_at": w.now(), "completed_at": w.now()}])
        conn.execute(run.insert(), runs)
        conn.execute(invocation.insert(), invs)
        for start in range(0, len(embeddings), 20_000):
            conn.execute(embedding.insert(), embeddings[start : start + 20_000])
    engine.dispose()
    counts.update(runs=len(runs), invocations=len(invs), embeddings=len(embeddings))
    return counts


def fake_webp(rng) -> bytes:
    """A tiny stand-in for a lossless WEBP blob (``RIFF<len>WEBPVP8L`` header)."""
    body = b"VP8L" + rng.bytes(48)
    return b"RIFF" + (len(body) + 4).to_bytes(4, "little") + b"WEBP" + body


def demo_embeddings(text_rows, spec: DemoSpec, w: DemoWriter, rng) -> list[dict]:
    """Embedding rows: every text for each real model, plus a few Dummy vectors."""
    distinct = {}
    for _, text, attractor in text_rows:
        distinct.setdefault(text, attractor)
    texts = list(distinct)
    row_of = {t: i for i, t in enumerate(texts)}
    rows = []
    for model in REAL_MODELS:
        vecs = model_vectors(texts, [distinct[t] for t in texts], spec.dim, spec.seed, model)
        for inv_id, text, _ in text_rows:
            rows.append({"id": w.ids.hex(), "started_at": w.now(), "completed_at": w.now(),
                         "invocation_id": inv_id, "embedding_model": model,
                         "vector": vecs[row_of[text]].tobytes()})
    for inv_id, _, _ in text_rows[:DUMMY_COUNT]:
        vec = rng.random(spec.dim).astype(np.float32)  # uniform [0, 1): not normalised
        rows.append({"id": w.ids.hex(), "started_at": w.now(), "completed_at": w.now(),
                     "invocation_id": inv_id, "embedding_model": DUMMY_MODEL,
                     "vector": vec.tobytes()})
    return rows

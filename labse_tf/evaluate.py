"""Bitext retrieval evaluation from any embedding function."""

from typing import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from labse_tf.model import embed
from labse_tf.preprocessing import Preprocessor

__all__ = ["EmbedFn", "encoder_embed_fn", "pair_retrieval", "retrieval_accuracy"]

# Sentences in, float32 `[n, dim]` L2-normalised embeddings out.
EmbedFn = Callable[[Sequence[str]], np.ndarray]


def encoder_embed_fn(preprocessor: Preprocessor, encoder: keras.Model,
                     batch_size: int = 256) -> EmbedFn:
    """An EmbedFn over an in-memory preprocessor and encoder (inference mode)."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def run(strings):
        return embed(encoder, preprocessor(strings), training=False)

    def embed_fn(sentences: Sequence[str]) -> np.ndarray:
        dim = encoder.output["embedding"].shape[-1]
        chunks = [run(tf.constant(list(sentences[i:i + batch_size]), tf.string)).numpy()
                  for i in range(0, len(sentences), batch_size)]
        return np.concatenate(chunks) if chunks else np.zeros([0, dim], np.float32)

    return embed_fn


def retrieval_accuracy(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Nearest-neighbour accuracy by cosine, both ways, for aligned rows a[i] ↔ b[i].

    Returns:
      (a→b, b→a): fraction of rows whose nearest neighbour on the other side is its pair.
    """
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    sims = a @ b.T
    gold = np.arange(len(a))
    return float(np.mean(sims.argmax(1) == gold)), float(np.mean(sims.argmax(0) == gold))


def pair_retrieval(embed_fn: EmbedFn, src: Sequence[str], tgt: Sequence[str]) -> dict:
    """Retrieval accuracy within a set of held-out pairs (src→tgt, tgt→src, mean)."""
    s2t, t2s = retrieval_accuracy(embed_fn(src), embed_fn(tgt))
    return {"src_to_tgt": s2t, "tgt_to_src": t2s, "mean": (s2t + t2s) / 2, "pairs": len(src)}


def read_tatoeba(directory: str, langs: Sequence[str] = ()) -> dict:
    """Reads `tatoeba.<xx>-eng.<xx>` / `tatoeba.<xx>-eng.eng` pairs: {lang: (xx, eng)}."""
    import glob
    import os
    found = sorted(os.path.basename(p).split(".")[1].split("-")[0]
                   for p in glob.glob(os.path.join(directory, "tatoeba.*-eng.eng")))
    if not found:
        raise FileNotFoundError(f"{directory}: no tatoeba.<lang>-eng.eng files")
    missing = [l for l in langs if l not in found]
    if missing:
        raise FileNotFoundError(f"{directory}: no Tatoeba files for {missing} (found {found})")
    result = {}
    for lang in langs or found:
        base = os.path.join(directory, f"tatoeba.{lang}-eng")
        with open(f"{base}.{lang}", encoding="utf-8", errors="replace") as f:
            xx = [line.rstrip("\n") for line in f]
        with open(f"{base}.eng", encoding="utf-8", errors="replace") as f:
            eng = [line.rstrip("\n") for line in f]
        if len(xx) != len(eng):
            raise ValueError(f"{base}.{lang} has {len(xx)} lines but {base}.eng has {len(eng)}")
        result[lang] = (xx, eng)
    return result

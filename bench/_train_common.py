"""Training pieces shared by the training benchmarks: random batches shaped like labse_tf's
pipeline, the `small` config, the Model Garden contender (tf-models-official, imported only
when asked for), and the static shapes the pipeline gives its batches."""

import functools
import os
import tempfile

import numpy as np
import tensorflow as tf

from labse_tf import config as config_lib

# Keras-hub input names → the DualEncoder's input name suffixes.
_MG_NAMES = {"token_ids": "word_ids", "padding_mask": "mask", "segment_ids": "type_ids"}


def random_batches(num: int, batch: int, seq_length: int, vocab_size: int, seed: int = 0) -> dict:
    """`num` batches of random packed translation pairs, like data.pair_dataset yields.

    Sentences are 8..seq_length tokens: [CLS]=2, random ids ≥ 5, [SEP]=3, then padding 0.

    Returns:
      {"src"|"tgt": {token_ids, padding_mask, segment_ids}}, int32 `[num, batch, seq_length]`.
    """
    rng = np.random.default_rng(seed)
    positions = np.arange(seq_length)

    def side():
        lengths = rng.integers(8, seq_length + 1, size=[num, batch, 1])
        mask = (positions < lengths).astype(np.int32)
        ids = rng.integers(5, vocab_size, size=[num, batch, seq_length]).astype(np.int32)
        ids[..., 0] = 2
        ids = np.where(positions == lengths - 1, 3, ids) * mask
        return {"token_ids": ids.astype(np.int32), "padding_mask": mask,
                "segment_ids": np.zeros_like(mask)}

    return {"src": side(), "tgt": side()}


def bench_config(*, vocab_size: int, seq_length: int, global_batch: int, precision: str = "fp32",
                 jit: bool = False, chunk_size: int = 0, config: str = "small") -> config_lib.Config:
    """configs/`config`.yaml (the small shape unless told) with the benchmark's vocabulary,
    length, batch and switches."""
    return config_lib.load_config(config, [
        f"model.vocab_size={vocab_size}", f"data.seq_length={seq_length}",
        f"train.global_batch_size={global_batch}", f"train.precision={precision}",
        f"train.jit_compile={str(jit).lower()}", f"train.chunk_size={chunk_size}"])


def model_garden_inputs(batches: dict) -> dict:
    """labse_tf's {"src", "tgt"} packed batches as DualEncoder inputs (left_word_ids, ...)."""
    return {f"{side}_{_MG_NAMES[k]}": v for side, key in (("left", "src"), ("right", "tgt"))
            for k, v in batches[key].items()}


def model_garden(cfg: config_lib.Config, seq_length: int):
    """Model Garden's LaBSE dual encoder at `cfg.model`'s shape, its AdamW, and the loss.

    BertEncoder inside DualEncoder(output="logits") with the same scale and margin, the
    AdamW of Model Garden's OptimizerFactory ("adamw" = AdamWeightDecay, global-norm clip,
    no decay on LayerNorm and biases) with linear warm-up and polynomial decay.

    Returns:
      (model, optimizer, loss_fn): loss_fn(model outputs) → the bidirectional in-batch
      softmax loss, the sum of both directions' means as in labse_tf.
    """
    import tf_keras
    from official.modeling import optimization
    from official.nlp.modeling import models, networks

    m, o = cfg.model, cfg.optimizer
    tf_keras.utils.set_random_seed(cfg.train.seed)
    network = networks.BertEncoder(
        vocab_size=m.vocab_size, hidden_size=m.hidden_dim, num_layers=m.num_layers,
        num_attention_heads=m.num_heads, inner_dim=m.intermediate_dim,
        max_sequence_length=m.max_sequence_length, type_vocab_size=2,
        output_dropout=m.dropout, attention_dropout=m.dropout, dict_outputs=True)
    model = models.DualEncoder(network, max_seq_length=seq_length, normalize=True,
                               logit_scale=cfg.loss.scale, logit_margin=cfg.loss.margin,
                               output="logits")
    factory = optimization.OptimizerFactory(optimization.OptimizationConfig({
        "optimizer": {"type": "adamw", "adamw": {
            "weight_decay_rate": o.weight_decay, "beta_1": o.beta_1, "beta_2": o.beta_2,
            "epsilon": o.epsilon, "gradient_clip_norm": o.clipnorm,
            "exclude_from_weight_decay": ["LayerNorm", "layer_norm", "bias"]}},
        "learning_rate": {"type": "polynomial", "polynomial": {
            "initial_learning_rate": cfg.train.learning_rate, "decay_steps": cfg.train.steps,
            "end_learning_rate": 0.0}},
        "warmup": {"type": "linear", "linear": {"warmup_steps": o.warmup_steps}}}))
    optimizer = factory.build_optimizer(factory.build_learning_rate())

    def loss_fn(outputs):
        left = outputs["left_logits"]  # [b, b], margin already subtracted on the diagonal
        labels = tf.range(tf.shape(left)[0])
        xent = tf.nn.sparse_softmax_cross_entropy_with_logits
        return (tf.reduce_mean(xent(labels, left))
                + tf.reduce_mean(xent(labels, outputs["right_logits"])))

    return model, optimizer, loss_fn


@functools.lru_cache
def pipeline_shape(batch_size: int, seq_length: int, static: bool = False) -> tf.TensorShape:
    """The static shape of token_ids in labse_tf.data.pair_dataset's batches (trimmed, or
    not when `static`: labse_tf.distribute.needs_static_shapes, e.g. for XLA).

    The benchmarks feed random batches instead of the real pipeline, but with the static
    shape the pipeline gives, because the shape can decide which kernels Keras traces. The
    encoder's attention projections no longer depend on it: labse_tf.model computes them
    as 2-D MatMuls whether the sequence length is static or not (Keras 3.15's TensorFlow
    einsum would make them a broadcasting BatchMatMulV2, or tf.einsum).
    """
    from labse_tf import data, vocab
    from labse_tf.preprocessing import SPECIAL_TOKENS, Preprocessor

    with tempfile.TemporaryDirectory() as tmp:
        vocab_file = vocab.write_vocab(list(SPECIAL_TOKENS), os.path.join(tmp, "vocab.txt"))
        manifest = data.load_manifest([data.sample_corpus_path("train")], log=lambda m: None)
        dataset = data.pair_dataset(manifest, Preprocessor(vocab_file, seq_length=seq_length),
                                    batch_size=batch_size, sampling=data.Sampling(0.3, 0),
                                    trim=not static)
        return dataset.element_spec["src"]["token_ids"].shape


def shaped_like_pipeline(dataset: tf.data.Dataset, length: str = "pipeline",
                         static: bool = False) -> tf.data.Dataset:
    """`dataset` of {"src", "tgt"} packed batches with the sequence dimension static or not.

    Args:
      dataset: tf.data.Dataset of static-shaped packed batches.
      length: str. "pipeline": as labse_tf.data.pair_dataset has it (`pipeline_shape`);
        "static": known to the graph; "dynamic": unknown to the graph.
      static: bool. With "pipeline": the pipeline keeps static shapes (XLA).
    """
    if length == "pipeline":
        spec = dataset.element_spec["src"]["token_ids"].shape
        length = "static" if pipeline_shape(spec[0], spec[1], static)[1] is not None else "dynamic"
    if length == "static":
        return dataset
    return dataset.map(lambda b: {side: hide_sequence_length(packed) for side, packed in b.items()})


def hide_sequence_length(batch: dict) -> dict:
    """The same packed tensors, with a sequence dimension the graph does not know statically
    (see `pipeline_shape`). The values are unchanged (always the full length)."""
    length = batch["token_ids"].shape[-1]
    # Zero, but not a constant the graph can fold into a static shape.
    end = length + tf.random.uniform([], 0, 1, tf.int32)
    return {k: v[..., :end] for k, v in batch.items()}


"""In-graph text preprocessing: normalise, wordpiece-tokenize and pack for the encoder.

One `Preprocessor` object serves the tf.data pipeline, the in-memory model and the exported
TF Hub preprocessor, so training and serving cannot tokenize differently.
"""

import tensorflow as tf
import tensorflow_text as tf_text

from labse_tf.compat import BasicTokenizer

__all__ = ["Preprocessor", "SPECIAL_TOKENS", "normalize", "read_vocab", "trim_padding"]

# The reserved tokens every vocabulary starts with, in this order ([PAD] must be id 0
# because packing pads with zeros).
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def normalize(strings: tf.Tensor, lowercase: bool) -> tf.Tensor:
    """Repairs invalid UTF-8, optionally case-folds, and applies NFKC.

    Accents are kept (unlike BERT "uncased"), because stripping combining marks destroys
    words in Indic, Thai, Vietnamese and other scripts.

    Args:
      strings: tf.string. Any shape; bytes that are not valid UTF-8 become U+FFFD.
      lowercase: bool. Unicode case folding before NFKC.

    Returns:
      tf.string of the same shape.
    """
    strings = tf.strings.unicode_transcode(
        strings, "UTF-8", "UTF-8", errors="replace", replacement_char=0xFFFD)
    if lowercase:
        strings = tf_text.case_fold_utf8(strings)
    return tf_text.normalize_utf8(strings, "NFKC")


def read_vocab(path: str) -> list[str]:
    """Reads a one-token-per-line vocabulary and checks the reserved tokens are present."""
    with tf.io.gfile.GFile(path, "r") as f:
        tokens = [line.rstrip("\n") for line in f]
    missing = [t for t in SPECIAL_TOKENS if t not in tokens]
    if missing:
        raise ValueError(f"{path}: vocabulary lacks the reserved tokens {missing}")
    if tokens[0] != "[PAD]":
        raise ValueError(f"{path}: line 1 must be [PAD] (padding id 0), got {tokens[0]!r}")
    return tokens


def trim_padding(*packed: dict, mask: str = "padding_mask") -> tuple[dict, ...]:
    """Packed batches (`[batch, seq]` tensors) cut to the longest sequence among them.

    `mask` names the padding mask (`input_mask` under the TF Hub names).

    The padding cut away changes no embedding (it is masked out), and the encoder does no
    work on it. XLA, which compiles per shape, wants the static length instead.
    """
    longest = tf.reduce_max([tf.reduce_max(tf.reduce_sum(p[mask], 1)) for p in packed])
    return tuple({k: v[:, :longest] for k, v in p.items()} for p in packed)


class Preprocessor(tf.Module):
    """Strings → `{token_ids, padding_mask, segment_ids}` with a wordpiece vocabulary.

    The vocabulary file is held as a SavedModel asset, so an exported preprocessor can be
    moved or copied with its directory.

    Attributes:
      vocab_size: int. Number of tokens in the vocabulary.
      seq_length: int. Default packed length, [CLS] and [SEP] included.
      cls_id, sep_id, pad_id, mask_id, unk_id: int. Reserved token ids.
    """

    def __init__(self, vocab_file: str, *, lowercase: bool = True, seq_length: int = 64,
                 name: str | None = None):
        super().__init__(name=name)
        tokens = read_vocab(vocab_file)
        ids = {t: i for i, t in enumerate(tokens)}
        self.vocab_size = len(tokens)
        self.seq_length = seq_length
        self.lowercase = lowercase
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (
            ids[t] for t in SPECIAL_TOKENS)
        self.vocab_file = tf.saved_model.Asset(vocab_file)  # shipped with an export
        # BERT's pre-tokenization (whitespace, punctuation, CJK characters), then
        # tensorflow-text's trie-based wordpiece: the same pieces as its table-based
        # BertTokenizer, faster (bench/README.md section 5 measures it).
        self._words = BasicTokenizer(lower_case=False)
        self._wordpiece = tf_text.FastWordpieceTokenizer(
            tokens, token_out_type=tf.int32, unknown_token="[UNK]", no_pretokenization=True)

    def tokenize(self, strings: tf.Tensor) -> tf.RaggedTensor:
        """Wordpiece ids `[batch, (words), (pieces)]`, int32, for a `[batch]` string tensor."""
        strings = tf.convert_to_tensor(strings)
        if strings.dtype != tf.string or strings.shape.rank != 1:
            raise TypeError("Preprocessor.tokenize expects a tf.string tensor of shape [batch], "
                            f"got {strings.dtype.name} of shape {strings.shape}")
        return self._wordpiece.tokenize(self._words.tokenize(normalize(strings, self.lowercase)))

    def bert_pack_inputs(self, segments, seq_length=None) -> dict[str, tf.Tensor]:
        """Packs one or two tokenized segments as `[CLS] a [SEP] (b [SEP])`.

        Segments longer than fit are truncated round-robin (one token at a time from each
        segment that still has tokens), so a short segment is never starved by a long one.

        Args:
          segments: list of tf.RaggedTensor. Each `[batch, (words), (pieces)]` or
            `[batch, (tokens)]`, as returned by `tokenize`.
          seq_length: int or scalar tensor. Packed length; default `self.seq_length`.

        Returns:
          dict of int32 `[batch, seq_length]`: token_ids, padding_mask, segment_ids.
        """
        seq_length = self.seq_length if seq_length is None else seq_length
        seq_length = tf.cast(seq_length, tf.int32)
        flat = [s.merge_dims(-2, -1) if s.ragged_rank > 1 else s for s in segments]
        flat = [tf.cast(s, tf.int32) for s in flat]
        budget = seq_length - len(flat) - 1
        trimmed = tf_text.RoundRobinTrimmer(max_seq_length=budget).trim(flat)
        token_ids, segment_ids = tf_text.combine_segments(
            trimmed, start_of_sequence_id=self.cls_id, end_of_segment_id=self.sep_id)
        token_ids, padding_mask = tf_text.pad_model_inputs(token_ids, seq_length)
        segment_ids, _ = tf_text.pad_model_inputs(segment_ids, seq_length)
        return {"token_ids": token_ids, "padding_mask": padding_mask, "segment_ids": segment_ids}

    def __call__(self, strings: tf.Tensor, seq_length=None) -> dict[str, tf.Tensor]:
        """Tokenizes and packs single sentences: `[batch]` strings → `[batch, seq_length]`."""
        return self.bert_pack_inputs([self.tokenize(strings)], seq_length)

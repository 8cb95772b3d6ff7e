"""The Preprocessor's wordpieces against tensorflow-text's BertTokenizer."""

import tensorflow as tf
import tensorflow_text as tf_text

from labse_tf.preprocessing import Preprocessor, normalize


def test_preprocessor_pieces_equal_bert_tokenizer(vocab_file, sample_pairs):
    """The trie-based wordpiece gives tensorflow-text BertTokenizer's pieces, words kept
    apart, on every sentence of the sample corpus (5+ scripts) and on edge cases."""
    ours = Preprocessor(vocab_file)
    table = tf.lookup.StaticVocabularyTable(tf.lookup.TextFileInitializer(
        vocab_file, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
        tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER), num_oov_buckets=1)
    bert = tf_text.BertTokenizer(table, token_out_type=tf.int32, unknown_token="[UNK]")
    _, src, tgt = sample_pairs.flat()
    edge = ["", "  ", "a" * 120, "x" * 99 + " " + "é" * 60, "日本語のテキスト", "ภาษาไทย",
            "😀🎉 ok", "Hello,world!!", "don't", "[CLS] [MASK]", "\u200b\u00ad e\u0301"]
    strings = tf.constant(list(src) + list(tgt) + edge)
    expected = bert.tokenize(normalize(strings, True))
    got = ours.tokenize(strings)
    assert got.ragged_rank == 2 and got.to_list() == expected.to_list()
    assert (got.flat_values.numpy() == ours.unk_id).any()  # the long words: [UNK] in both

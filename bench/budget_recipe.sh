#!/usr/bin/env bash
# The small-budget recipe, end to end: vocabulary -> dual-encoder training -> export ->
# Tatoeba evaluation, side by side with the character-trigram baseline.
#
#   bash bench/budget_recipe.sh DATA_DIR TATOEBA_DIR [OUT_DIR]
#
# DATA_DIR has the ../shared/data layout (train/<lang>.tsv.gz); TATOEBA_DIR the standard
# tatoeba.<lang>-eng.{<lang>,eng} files. Training gets the budget's time left after the
# vocabulary, less RESERVE_MINUTES for its start-up and the export (train.time_budget_minutes:
# the steps that fit, whatever the machine's speed). Environment overrides (for the CI
# smoke run): CONFIG (default budget_30min), BUDGET_MINUTES (30), RESERVE_MINUTES (3),
# VOCAB_SIZE, VOCAB_SENTENCES, VOCAB_WORDS, VOCAB_CHARS, TRAIN_GLOB, EXTRA_SET.
set -euo pipefail
DATA=${1:?usage: budget_recipe.sh DATA_DIR TATOEBA_DIR [OUT_DIR]}
TATOEBA=${2:?usage: budget_recipe.sh DATA_DIR TATOEBA_DIR [OUT_DIR]}
OUT=${3:-runs/budget}
CONFIG=${CONFIG:-budget_30min}
BUDGET_MINUTES=${BUDGET_MINUTES:-30}
RESERVE_MINUTES=${RESERVE_MINUTES:-3}
VOCAB_SIZE=${VOCAB_SIZE:-22000}
VOCAB_SENTENCES=${VOCAB_SENTENCES:-50000}
VOCAB_WORDS=${VOCAB_WORDS:-40000}
VOCAB_CHARS=${VOCAB_CHARS:-4000}
TRAIN_GLOB=${TRAIN_GLOB:-$DATA/train/*.tsv.gz}
EXTRA_SET=${EXTRA_SET:-}
mkdir -p "$OUT"
start=$(date +%s)
stamp() { echo "[$(( $(date +%s) - start ))s] $*"; }

stamp "1/4 vocabulary ($VOCAB_SIZE tokens from $VOCAB_SENTENCES sampled sentences)"
python -m labse_tf.vocab --input="$TRAIN_GLOB" --vocab_size="$VOCAB_SIZE" \
    --max_sentences="$VOCAB_SENTENCES" --max_words="$VOCAB_WORDS" \
    --max_unique_chars="$VOCAB_CHARS" --alpha=0.5 --output="$OUT/vocab.txt"

train_minutes=$(python -c "print(round(max($BUDGET_MINUTES - $(( $(date +%s) - start )) / 60 - $RESERVE_MINUTES, 0.5), 2))")
stamp "2/4 dual-encoder training ($CONFIG, $train_minutes min of training steps)"
set_args=(--set "data.vocab_file=$OUT/vocab.txt" --set "train.time_budget_minutes=$train_minutes")
for kv in $EXTRA_SET; do set_args+=(--set "$kv"); done
python -m labse_tf.train --config="$CONFIG" --model_dir="$OUT/model" \
    --train_data="$TRAIN_GLOB" --export_dir="$OUT/export" "${set_args[@]}"

stamp "exported: this is the recipe's budget (vocabulary -> exported model)"
stamp "3/4 Tatoeba evaluation of the export"
python -m labse_tf.evaluate --model="$OUT/export" --tatoeba_dir="$TATOEBA" \
    --output="$OUT/tatoeba.json" | tee "$OUT/tatoeba.txt"

stamp "4/4 character-trigram baseline (no training)"
python -m labse_tf.evaluate --trigram_baseline --tatoeba_dir="$TATOEBA" \
    --output="$OUT/trigram.json" | tee "$OUT/trigram.txt"

stamp "done: model vs trigram baseline (mean of both directions)"
python - "$OUT/tatoeba.json" "$OUT/trigram.json" <<'PY'
import json, sys
model, base = (json.load(open(p)) for p in sys.argv[1:3])
print(f"{'language':<10}{'model':>9}{'trigram':>9}")
for lang, v in model["languages"].items():
    print(f"{lang:<10}{v['mean']:>9.1%}{base['languages'][lang]['mean']:>9.1%}")
print(f"{'average':<10}{model['mean_accuracy']:>9.1%}{base['mean_accuracy']:>9.1%}")
PY
stamp "wall-clock total; outputs in $OUT"

#!/usr/bin/env bash
# The paper's IWSLT'14 De-En experiment (Shen et al. 2021, Table 2 setting), for a GPU machine:
# teachers with label smoothing 0.1 and 0; for each teacher, word-level KD students at every T in
# TEMPERATURES and a sequence-level KD student, plus gold-only baselines, over SEEDS; BLEU for all,
# stability and ECE for the teachers, then lskd-report.
#
#   bash recipes/iwslt14_de_en.sh [--dry-run] /path/to/de-en.tgz
#
# --dry-run prints every command, in order, and runs nothing (no venv, no data needed).
# Knobs (environment): LSKD_RUN_DIR, LSKD_DATA_DIR, SEEDS ("1 2 3"), TEMPERATURES ("1 2 3 64"),
# KD_ALPHA (0.5), TEACHER_TOPK (0 = full distribution), MAX_UPDATE (teachers and students),
# LSKD_DEVICE (gpu|cpu), FAIRSEQ_EXTRA (added to every fairseq-train, e.g. fairseq's distributed
# flags "--distributed-world-size 16 --distributed-port 12345" for a multi-node run), DISTILL_SHARDS
# (split sequence-level decoding into that many --num-shards processes, run side by side; with
# CUDA_VISIBLE_DEVICES=0,1,... shard i gets the i-th of those GPUs, round robin; the last shard to
# finish merges the corpus).
# A stage is skipped when it last succeeded with the same command and inputs (recipes/lib.sh, `once`),
# so a killed run is resumed by running it again, and a larger MAX_UPDATE trains every model on from
# its checkpoint_last.pt, then re-scores it. A teacher that trained on stops the re-distillation with
# lskd-distill-corpus's message: remove its distilled_ls* directory to decode again.
set -euo pipefail

if [ "${1:-}" = --dry-run ]; then export LSKD_DRY_RUN=1; shift; fi
if [ $# -ne 1 ] || [ "${1#-}" != "$1" ]; then
  echo "$(basename "$0"): error: expected one archive, got '$*' (usage: bash recipes/$(basename "$0") [--dry-run] /path/to/de-en.tgz)" >&2; exit 2
fi
ARCHIVE=$1
LSKD_DEVICE=${LSKD_DEVICE:-gpu}
source "$(dirname "${BASH_SOURCE[0]}")/env.sh" plots  # the report's figures; an argument, or env.sh reads $1
source "$LSKD_ROOT/recipes/lib.sh"
RUN=${LSKD_RUN_DIR:-$LSKD_ROOT/runs/iwslt14_de_en}
DATA=${LSKD_DATA_DIR:-$LSKD_ROOT/data/iwslt14-de-en}
read -r -a SEEDS <<< "${SEEDS:-1 2 3}"
read -r -a TEMPERATURES <<< "${TEMPERATURES:-1 2 3 64}"
KD_ALPHA=${KD_ALPHA:-0.5}
TEACHER_TOPK=${TEACHER_TOPK:-0}
MAX_UPDATE=${MAX_UPDATE:-50000}
DISTILL_SHARDS=${DISTILL_SHARDS:-1}
knobs number TEMPERATURES "${TEMPERATURES[@]}"; knobs integer SEEDS "${SEEDS[@]}"; knobs number KD_ALPHA "$KD_ALPHA"
knobs integer TEACHER_TOPK "$TEACHER_TOPK"; knobs integer MAX_UPDATE "$MAX_UPDATE"; knobs integer DISTILL_SHARDS "$DISTILL_SHARDS"
read -r -a EXTRA <<< "${FAIRSEQ_EXTRA:-}"
IFS=, read -r -a GPUS <<< "${CUDA_VISIBLE_DEVICES:-}"

# The paper's setting: transformer_iwslt_de_en, Adam, lr 5e-4, inverse_sqrt, dropout 0.3, 4096 tokens.
PAPER=(--arch transformer_iwslt_de_en --share-decoder-input-output-embed --optimizer adam
  --adam-betas '(0.9,0.98)' --clip-norm 0.0 --lr 5e-4 --lr-scheduler inverse_sqrt --warmup-updates 4000
  --dropout 0.3 --weight-decay 0.0001 --max-tokens 4096 --max-update "$MAX_UPDATE"
  --no-epoch-checkpoints --required-batch-size-multiple 1 --log-format simple --log-interval 100)

# train SAVE_DIR BIN_DIR SEED CRITERION_ARGS...: fairseq-train, on the terminal (a killed run, or one
# with a larger MAX_UPDATE, resumes from checkpoint_last.pt), then BLEU on the test split.
train() {
  local dir=$1 bin=$2 seed=$3; shift 3
  once "$dir/train.done" - -- fairseq-train "$bin" --user-dir "$LSKD_ROOT/fairseq_plugins" "${CPU_FLAG[@]}" \
    "${PAPER[@]}" --seed "$seed" --save-dir "$dir" "$@" "${EXTRA[@]}"
  evaluate_bleu "$dir" "$DATA" 5
}

# on_gpu_of_shard SHARD COMMAND...: COMMAND seeing only the SHARD-th (round robin) of several GPUs in
# CUDA_VISIBLE_DEVICES; all of them when there is one or none
on_gpu_of_shard() {
  local shard=$1; shift
  [ ${#GPUS[@]} -le 1 ] || local -x CUDA_VISIBLE_DEVICES=${GPUS[shard % ${#GPUS[@]}]}
  "$@"
}

# distill TEACHER_DIR OUT_DIR: the DISTILL_SHARDS shards of the sequence-level KD corpus side by side;
# the last to finish merges.
distill() {
  local teacher=$1 out=$2 shard
  for ((shard = 0; shard < DISTILL_SHARDS; shard++)); do
    background on_gpu_of_shard "$shard" once "$out/shard$shard-of-$DISTILL_SHARDS.done" "$out.shard$shard.log" \
      "$teacher/checkpoint_last.pt" "$DATA/prep.json" -- lskd-distill-corpus --data "$DATA" \
      --teacher-path "$teacher/checkpoint_last.pt" --out "$out" --beam 5 --num-shards "$DISTILL_SHARDS" \
      --shard-id "$shard" "${GPU_FLAG[@]}"
  done
  wait_all "sequence-level KD decoding of $out" "$RUN"
  [ "$LSKD_DRY_RUN" = 1 ] || [ -f "$out/distill.json" ] || {
    echo "== $out: every shard finished but none merged (see $out.shard*.log)" >&2; exit 1; }
}

[ "$LSKD_DRY_RUN" = 1 ] || mkdir -p "$RUN"

once "$DATA/prepare.done" - "$ARCHIVE" -- lskd-prepare iwslt14 --archive "$ARCHIVE" --out "$DATA"

LS_CE=(--criterion label_smoothed_cross_entropy)
for ls in 0.1 0; do
  teacher=$RUN/teacher_ls$ls
  train "$teacher" "$DATA/bin" 1 "${LS_CE[@]}" --label-smoothing "$ls"
  analyse_model "$teacher" "$DATA"
  distilled=$RUN/distilled_ls$ls
  distill "$teacher" "$distilled"
  for seed in "${SEEDS[@]}"; do
    for t in "${TEMPERATURES[@]}"; do
      train "$RUN/student_wordkd_ls${ls}_T${t}_seed$seed" "$DATA/bin" "$seed" \
        --criterion label_smoothed_cross_entropy_with_kd --label-smoothing 0 --kd-alpha "$KD_ALPHA" \
        --kd-temperature "$t" --teacher-topk "$TEACHER_TOPK" --teacher-path "$teacher/checkpoint_last.pt"
    done
    train "$RUN/student_seqkd_ls${ls}_seed$seed" "$distilled/bin" "$seed" "${LS_CE[@]}" --label-smoothing 0
  done
done
for seed in "${SEEDS[@]}"; do
  train "$RUN/student_gold_seed$seed" "$DATA/bin" "$seed" "${LS_CE[@]}" --label-smoothing 0
done
report "$RUN"

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
# (split sequence-level decoding into that many --num-shards processes).
# Every stage is skipped when its output exists, so a killed run is resumed by running it again.
set -euo pipefail

DRY_RUN=0
if [ "${1:-}" = --dry-run ]; then DRY_RUN=1; shift; fi
ARCHIVE=${1:?usage: bash recipes/iwslt14_de_en.sh [--dry-run] /path/to/de-en.tgz}
LSKD_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUN=${LSKD_RUN_DIR:-$LSKD_ROOT/runs/iwslt14_de_en}
DATA=${LSKD_DATA_DIR:-$LSKD_ROOT/data/iwslt14-de-en}
SEEDS=${SEEDS:-1 2 3}
TEMPERATURES=${TEMPERATURES:-1 2 3 64}
KD_ALPHA=${KD_ALPHA:-0.5}
TEACHER_TOPK=${TEACHER_TOPK:-0}
MAX_UPDATE=${MAX_UPDATE:-50000}
LSKD_DEVICE=${LSKD_DEVICE:-gpu}
DISTILL_SHARDS=${DISTILL_SHARDS:-1}
read -r -a EXTRA <<< "${FAIRSEQ_EXTRA:-}"
DEVICE_FLAG=(); [ "$LSKD_DEVICE" = gpu ] || DEVICE_FLAG=(--cpu)
GPU_FLAG=(); [ "$LSKD_DEVICE" = gpu ] && GPU_FLAG=(--gpu)

# The paper's setting: transformer_iwslt_de_en, Adam, lr 5e-4, inverse_sqrt, dropout 0.3, 4096 tokens.
PAPER=(--arch transformer_iwslt_de_en --share-decoder-input-output-embed --optimizer adam
  --adam-betas '(0.9,0.98)' --clip-norm 0.0 --lr 5e-4 --lr-scheduler inverse_sqrt --warmup-updates 4000
  --dropout 0.3 --weight-decay 0.0001 --max-tokens 4096 --max-update "$MAX_UPDATE"
  --no-epoch-checkpoints --required-batch-size-multiple 1 --log-format simple --log-interval 100)

# run DONE_FILE COMMAND...: run COMMAND unless DONE_FILE exists ("-": always); --dry-run only prints it.
run() {
  local done_file=$1; shift
  if [ "$DRY_RUN" = 1 ]; then printf '%q ' "$@"; printf '\n'; return 0; fi
  if [ "$done_file" != - ] && [ -e "$done_file" ]; then echo "   $done_file exists, skipping"; return 0; fi
  "$@"
}

# train SAVE_DIR BIN_DIR SEED CRITERION_ARGS...: fairseq-train (a killed run resumes from
# checkpoint_last.pt), then mark the directory as trained.
train() {
  local dir=$1 bin=$2 seed=$3; shift 3
  run "$dir/trained" fairseq-train "$bin" --user-dir "$LSKD_ROOT/fairseq_plugins" "${DEVICE_FLAG[@]}" \
    "${PAPER[@]}" --seed "$seed" --save-dir "$dir" "$@" "${EXTRA[@]}"
  [ "$DRY_RUN" = 1 ] || touch "$dir/trained"
}

score() {
  run "$1/eval/bleu-test.json" lskd-eval bleu --checkpoint "$1/checkpoint_last.pt" --data "$DATA" --split test \
    --beam 5 --out "$1/eval" "${GPU_FLAG[@]}"
}

[ "$DRY_RUN" = 1 ] || { source "$LSKD_ROOT/recipes/env.sh"; mkdir -p "$RUN"; }

run "$DATA/prep.json" lskd-prepare iwslt14 --archive "$ARCHIVE" --out "$DATA"

LS_CE=(--criterion label_smoothed_cross_entropy)
for ls in 0.1 0; do
  teacher=$RUN/teacher_ls$ls
  train "$teacher" "$DATA/bin" 1 "${LS_CE[@]}" --label-smoothing "$ls"
  score "$teacher"
  run "$teacher/eval/stability-test.json" lskd-eval stability --checkpoint "$teacher/checkpoint_last.pt" \
    --data "$DATA" --split test --out "$teacher/eval"
  distilled=$RUN/distilled_ls$ls
  for ((shard = 0; shard < DISTILL_SHARDS; shard++)); do  # one process (or machine) per shard
    run "$distilled/distill.json" lskd-distill-corpus --data "$DATA" --teacher-path "$teacher/checkpoint_last.pt" \
      --out "$distilled" --beam 5 --num-shards "$DISTILL_SHARDS" --shard-id "$shard" "${GPU_FLAG[@]}"
  done
  for seed in $SEEDS; do
    for t in $TEMPERATURES; do
      student=$RUN/student_wordkd_ls${ls}_T${t}_seed$seed
      train "$student" "$DATA/bin" "$seed" --criterion label_smoothed_cross_entropy_with_kd --label-smoothing 0 \
        --kd-alpha "$KD_ALPHA" --kd-temperature "$t" --teacher-topk "$TEACHER_TOPK" \
        --teacher-path "$teacher/checkpoint_last.pt"
      score "$student"
    done
    student=$RUN/student_seqkd_ls${ls}_seed$seed
    train "$student" "$distilled/bin" "$seed" "${LS_CE[@]}" --label-smoothing 0
    score "$student"
  done
done
for seed in $SEEDS; do
  baseline=$RUN/student_gold_seed$seed
  train "$baseline" "$DATA/bin" "$seed" "${LS_CE[@]}" --label-smoothing 0
  score "$baseline"
done
run - lskd-report "$RUN"
[ "$DRY_RUN" = 1 ] || echo "report: $RUN/report.md"

#!/usr/bin/env bash
# From a teacher to a shippable student in one command, driven by one YAML config (lskd/distill_config.py;
# configs/distill_quickstart.yaml is an example):
#
#   bash recipes/distill.sh [--dry-run] CONFIG.yaml [KEY=VALUE ...]    (KEY=VALUE: override config keys)
#
# 0. check the config (one line per error, exit 2, before any work); one run per run directory at a time;
# 1. clean the parallel corpus and the monolingual text (lskd-clean; not with corpus.prepared);
# 2. prepare the student's corpus in the teacher's vocabulary (lskd-prepare text --teacher);
# 3. distil: the teacher's beam search over the corpus's sources and the monolingual text (lskd-distill-corpus);
# 4. train the student (a preset of lskd/students.py) on it, with word-level KD from the teacher on top
#    (student.kd_alpha > 0), until the update budget or early stop on the validation loss (fairseq's --patience);
# 5. measure: teacher and student on the test split (lskd-eval bleu: BLEU, chrF, TER; lskd-eval compare:
#    paired bootstrap), the student's int8 export (lskd-export), words/s, latency, peak memory, size and
#    int8 / float32 BLEU of both at one thread, beam 1 and the evaluation beam (lskd-eval speed);
# 6. decide (lskd-ship-report): "student: N x faster, M x smaller, at K % of the teacher's chrF (BLEU,
#    COMET); ship gate ...: passed / not passed", from the records, in RUN_DIR/ship/ship.md.
#
# Every stage runs through `once` (recipes/lib.sh): a rerun skips a stage whose command and inputs are
# unchanged, so a changed config entry reruns its stage and the stages after it that read its outputs; a
# killed run resumes (distillation by its chunks, training from its last checkpoint when nothing it
# reads changed). Relative paths in the config are read from the repository root.
set -euo pipefail
RECIPE=$(basename "$0")
usage() { echo "$RECIPE: error: $1 (usage: bash recipes/$RECIPE [--dry-run] CONFIG.yaml [KEY=VALUE ...])" >&2; exit 2; }
if [ "${1:-}" = --dry-run ]; then export LSKD_DRY_RUN=1; shift; fi
[ $# -ge 1 ] || usage "no config given"
case $1 in -*) usage "unknown option '$1'" ;; esac
CONFIG=$(realpath -m -- "$1"); shift
OVERRIDES=("$@")
for override in "${OVERRIDES[@]}"; do [[ $override == *=* ]] || usage "'$override' is not KEY=VALUE"; done
source "$(dirname "${BASH_SOURCE[0]}")/env.sh" ""  # no extras (a sourced file without arguments would get ours)
source "$LSKD_ROOT/recipes/lib.sh"
cd "$LSKD_ROOT"
started=$(date +%s)

# 0. the config, checked before any work and resolved into shell variables (each value quoted by the checker)
CHECK=(python -m lskd.distill_config "$CONFIG" --shell)
[ ${#OVERRIDES[@]} -eq 0 ] || CHECK+=(--set "${OVERRIDES[@]}")
resolved=$(PYTHONPATH="$LSKD_ROOT${PYTHONPATH:+:$PYTHONPATH}" "${CHECK[@]}") || exit 2
eval "$resolved"
if [ "$LSKD_DRY_RUN" != 1 ]; then
  mkdir -p "$RUN"
  exec 9>>"$RUN/.distill.lock"  # released by the kernel when this run and every stage it started are gone
  flock -n 9 || { echo "$RECIPE: error: $RUN is in use by another run of $RECIPE (lock $RUN/.distill.lock): wait for it, or give another run_dir" >&2; exit 2; }
fi

# step WHAT ONCE_ARGS...: one stage through `once`, in the background so that its progress shows every minute
step() {
  local what=$1; shift
  stage "$what"
  background once "$@"
  wait_all "$what" "$RUN"
}

DATA=${PREPARED:-$RUN/data}
MONO_CLEAN=()
if [ -z "$PREPARED" ]; then
  step "1. clean the parallel corpus $TRAIN.{$SRC,$TGT}" "$RUN/clean/train.done" "$RUN/clean/train.log" \
    "$TRAIN.$SRC" "$TRAIN.$TGT" -- lskd-clean --src "$SRC" --tgt "$TGT" --out "$RUN/clean/train" "${CLEAN_ARGS[@]}" \
    "$TRAIN.$SRC" "$TRAIN.$TGT"
fi
for i in "${!MONOLINGUAL[@]}"; do
  step "1. clean the monolingual text ${MONOLINGUAL[$i]}" "$RUN/clean/mono$i.done" "$RUN/clean/mono$i.log" \
    "${MONOLINGUAL[$i]}" -- lskd-clean --src "$SRC" --out "$RUN/clean/mono$i" "${CLEAN_ARGS[@]}" "${MONOLINGUAL[$i]}"
  MONO_CLEAN+=("$RUN/clean/mono$i.$SRC")
done

if [ -z "$PREPARED" ]; then
  step "2. prepare the student's corpus in the teacher's vocabulary" "$RUN/data/prepare.done" "$RUN/data/prepare.log" \
    "$RUN/clean/train.done" "$VALID.$SRC" "$VALID.$TGT" "$TEST.$SRC" "$TEST.$TGT" "$TEACHER" -- \
    lskd-prepare text --src "$SRC" --tgt "$TGT" --train "$RUN/clean/train" --valid "$VALID" --test "$TEST" \
    --teacher "$TEACHER_GIVEN" --out "$DATA" --overwrite
fi

SOURCE_TEXT=()
for text in "${MONO_CLEAN[@]}"; do SOURCE_TEXT+=(--source-text "$text"); done
step "3. distil: the teacher translates the corpus's sources and the monolingual text" \
  "$RUN/distilled/distill.done" "$RUN/distilled.log" "$DATA/prep.json" "$TEACHER" "${MONO_CLEAN[@]}" -- \
  lskd-distill-corpus --data "$DATA" --teacher-path "$TEACHER" --out "$RUN/distilled" "${DISTILL_ARGS[@]}" \
  "${SOURCE_TEXT[@]}" --batch-size 128 --workers 1 --overwrite "${GPU_FLAG[@]}"

# 4. The student. A training resumes from its last checkpoint only when the same command on the same inputs
# began it (STUDENT/began): one whose data, teacher or flags changed starts afresh.
STUDENT=$RUN/student
share_embeddings_like "$DATA"  # a teacher's vocabulary with two dictionaries: share the decoder's embeddings only
TRAIN_INPUTS=("$RUN/distilled/distill.done" "$TEACHER")
TRAIN_COMMAND=(fairseq-train "$RUN/distilled/bin" --user-dir "$LSKD_ROOT/fairseq_plugins" "${CPU_FLAG[@]}"
  "${STUDENT_ARCH[@]}" "${CRITERION_ARGS[@]}" "${OPTIMIZATION[@]}" --max-update "$UPDATES" --patience "$PATIENCE"
  --validate-interval-updates "$VALIDATE_EVERY" --save-interval-updates "$VALIDATE_EVERY" --keep-interval-updates 1
  --no-epoch-checkpoints --save-dir "$STUDENT" --seed "$SEED" --num-workers 0 --log-format simple --log-interval 50)
if [ "$LSKD_DRY_RUN" != 1 ]; then
  printf -v began '%q ' "${TRAIN_COMMAND[@]}"
  began+=$'\n'$(stat -c '%n %s %y' -- "${TRAIN_INPUTS[@]}")
  if [ -f "$STUDENT/began" ] && [ "$(< "$STUDENT/began")" != "$began" ]; then
    say "$STUDENT: its data, teacher or flags changed: training afresh"
    rm -f -- "$STUDENT"/checkpoint*.pt "$STUDENT/train.done"
  fi
  mkdir -p "$STUDENT" && printf '%s\n' "$began" > "$STUDENT/began"
fi
step "4. train the $PRESET student: $UPDATES updates at most, early stop after $PATIENCE validations without a better loss" \
  "$STUDENT/train.done" "$STUDENT/train.log" "${TRAIN_INPUTS[@]}" -- "${TRAIN_COMMAND[@]}"
STUDENT_CKPT=$STUDENT/checkpoint_best.pt  # the best validation loss: what early stopping keeps

# 5. Measure. One job at a time: speed is measured with the machine to itself.
BEAMS=(1); [ "$EVAL_BEAM" = 1 ] || BEAMS+=("$EVAL_BEAM")
for who in teacher student; do
  ckpt=$TEACHER; [ $who = teacher ] || ckpt=$STUDENT_CKPT
  step "5. score the $who on the test split (beam $EVAL_BEAM)" "$RUN/eval/$who/bleu-test.done" "$RUN/eval/$who.log" \
    "$ckpt" "$DATA/prep.json" -- lskd-eval bleu --checkpoint "$ckpt" --data "$DATA" --split test --beam "$EVAL_BEAM" \
    --out "$RUN/eval/$who" "${GPU_FLAG[@]}"
  for beam in "${BEAMS[@]}"; do
    step "5. the $who's speed, size and int8 / float32 BLEU at 1 thread, beam $beam" \
      "$RUN/eval/$who/beam$beam/speed-test.done" "$RUN/eval/$who/speed-beam$beam.log" "$ckpt" "$DATA/prep.json" -- \
      lskd-eval speed --checkpoint "$ckpt" --data "$DATA" --split test --beam "$beam" --engines ct2-float32 ct2-int8 \
      --threads 1 --latency-sentences 50 --out "$RUN/eval/$who/beam$beam"
  done
done
step "5. paired bootstrap: the student against the teacher" "$RUN/eval/compare.done" "$RUN/eval/compare.log" \
  "$RUN/eval/teacher/bleu-test.done" "$RUN/eval/student/bleu-test.done" -- lskd-eval compare \
  --baseline "$RUN/eval/teacher/test.hyp.$TGT" --system "$RUN/eval/student/test.hyp.$TGT" --ref "$DATA/raw/test.$TGT" \
  --tgt-lang "$TGT"
step "5. export the student for deployment (CTranslate2 int8)" "$RUN/export/export.done" "$RUN/export.log" \
  "$STUDENT_CKPT" "$DATA/prep.json" -- lskd-export --checkpoint "$STUDENT_CKPT" --data "$DATA" --quantization int8 \
  --out "$RUN/export/student-int8" --overwrite

# 6. Decide, from the records
SPEED=(); for beam in "${BEAMS[@]}"; do SPEED+=("beam$beam/speed-test.json"); done
COMET=(); [ -z "$COMET_MODEL" ] || COMET=(--comet-model "$COMET_MODEL")
step "6. the ship decision" "$RUN/ship/ship.done" "$RUN/ship.log" "$RUN"/eval/*/bleu-test.done \
  "$RUN"/eval/*/beam*/speed-test.done -- lskd-ship-report --data "$DATA" \
  --teacher-scores "$RUN/eval/teacher/bleu-test.json" --student-scores "$RUN/eval/student/bleu-test.json" \
  --teacher-speed "${SPEED[@]/#/$RUN/eval/teacher/}" --student-speed "${SPEED[@]/#/$RUN/eval/student/}" \
  --gate-metric "$GATE_METRIC" --gate-percent "$GATE_PERCENT" "${COMET[@]}" --out "$RUN/ship"
if [ "$LSKD_DRY_RUN" != 1 ]; then
  stage "results ($(( ($(date +%s) - started) / 60 )) min this run; the deployable student: $RUN/export/student-int8)"
  cat "$RUN/ship.log"
fi

#!/usr/bin/env bash
# Temperature sweep on the Bible De-En data, on CPU: the NMT counterpart of Chandrasegaran et al.'s
# table (PAPER.md). Two teachers (label smoothing 0.1 and 0), then for each teacher, temperature T
# and seed a word-level KD student, plus a gold-data student per seed; BLEU/chrF/TER on John for
# all, stability and ECE for the teachers; RUN_DIR/report.md with BLEU against T per teacher.
#
#   bash recipes/bible_temperature_sweep.sh [--dry-run]
#
# --dry-run prints every command, in order, and runs nothing.
# Default size: 24 KD students + 3 baselines of 500 updates, 2 at a time: about 2 hours on a 2-core
# CPU machine (about 1h40 when the quickstart's teachers are reused). Knobs (environment):
#   TEMPERATURES ("1 2 3 64"), LSKD_SEEDS ("1 2 3"; SEEDS, the old name, still works), LSKD_KD_ALPHA (0.5),
#   LSKD_TEACHER_SEEDS (unset: the seed-1 teachers teach every seed; "1 2 3": a teacher pair per seed, the
#   students of seed s taught by the teachers of seed s; LSKD_SEEDS must then be the same), LSKD_TEACHER_UPDATES (800),
#   LSKD_STUDENT_UPDATES (500), LSKD_RUN_DIR (runs/bible_temperature_sweep), LSKD_DATA_DIR
#   (data/bible-de-en-4k, shared with the quickstart), LSKD_DEVICE (cpu|gpu),
#   LSKD_TEACHERS=DIR  reuse the teachers DIR/teacher_ls0.1 and DIR/teacher_ls0 (e.g. runs/quickstart)
#                      instead of training them again
set -euo pipefail
if [ "${1:-}" = --dry-run ]; then export LSKD_DRY_RUN=1; shift; fi
[ $# -eq 0 ] || { echo "$(basename "$0"): error: unknown argument '$1' (usage: bash recipes/$(basename "$0") [--dry-run])" >&2; exit 2; }
source "$(dirname "${BASH_SOURCE[0]}")/env.sh" plots
source "$LSKD_ROOT/recipes/lib.sh"
share_cores
cd "$LSKD_ROOT"

read -r -a TEMPERATURES <<< "${TEMPERATURES:-1 2 3 64}"
teacher_seeds "1 2 3" old
KD_ALPHA=${LSKD_KD_ALPHA:-0.5}
TEACHER_UPDATES=${LSKD_TEACHER_UPDATES:-800}
STUDENT_UPDATES=${LSKD_STUDENT_UPDATES:-500}
RUN=${LSKD_RUN_DIR:-runs/bible_temperature_sweep}
DATA=${LSKD_DATA_DIR:-data/bible-de-en-4k}
TEACHERS=${LSKD_TEACHERS:-$RUN}
# fairseq records --save-dir and the data directory as given, and LSKD finds a checkpoint's data again
# relative to where fairseq-train ran, which only a relative --save-dir reveals: an absolute run
# directory gets an absolute data directory (else the report warns and the KD teacher check weakens)
if [[ $RUN == /* || $TEACHERS == /* ]]; then DATA=$(realpath -m "$DATA"); fi
knobs number TEMPERATURES "${TEMPERATURES[@]}"; knobs number LSKD_KD_ALPHA "$KD_ALPHA"
knobs integer LSKD_TEACHER_UPDATES "$TEACHER_UPDATES"; knobs integer LSKD_STUDENT_UPDATES "$STUDENT_UPDATES"
BEAM=5
seed_design "$RUN"
started=$(date +%s)

stage "prepare the Bible De-En corpus in $DATA"
once "$DATA/prepare.done" "$DATA.prepare.log" -- lskd-prepare bible --out "$DATA" --vocab-size 4000

stage "teachers ($TEACHERS): label smoothing 0.1 and 0, $TEACHER_UPDATES updates each, seed ${TEACHER_SEEDS[*]}"
for teacher_seed in "${TEACHER_SEEDS[@]}"; do
  for ls in 0.1 0; do
    teacher=$(seeded "$TEACHERS/teacher_ls$ls" "$teacher_seed")
    if [ -n "${LSKD_TEACHERS:-}" ]; then
      [ "$LSKD_DRY_RUN" = 1 ] || [ -f "$teacher/checkpoint_last.pt" ] \
        || { echo "LSKD_TEACHERS=$TEACHERS has no ${teacher#"$TEACHERS/"}/checkpoint_last.pt" >&2; exit 2; }
    else
      at_most "$LSKD_JOBS" "$TEACHERS"
      background train_teacher "$DATA/bin" "$teacher" "$ls" "$TEACHER_UPDATES" "$teacher_seed"
    fi
  done
done
wait_all "teacher training" "$TEACHERS"
# the first teachers are analysed too (stability, ECE); the others' BLEU is what the report needs
for teacher_seed in "${TEACHER_SEEDS[@]}"; do
  for ls in 0.1 0; do
    at_most "$LSKD_JOBS" "$TEACHERS"
    if [ "$teacher_seed" = "${TEACHER_SEEDS[0]}" ]; then
      background score_and_analyse "$(seeded "$TEACHERS/teacher_ls$ls" "$teacher_seed")" "$DATA" "$BEAM"
    else
      background evaluate_bleu "$(seeded "$TEACHERS/teacher_ls$ls" "$teacher_seed")" "$DATA" "$BEAM"
    fi
  done
done
wait_all "teacher evaluation" "$TEACHERS"

stage "students ($STUDENT_UPDATES updates, $LSKD_JOBS at a time): word-level KD at T in {${TEMPERATURES[*]}} (alpha $KD_ALPHA) from each teacher, seeds {${SEEDS[*]}}, and a gold-data student per seed"
student_job() { train_student "$@" && evaluate_bleu "$2" "$DATA" "$BEAM"; }
for seed in "${SEEDS[@]}"; do
  for t in "${TEMPERATURES[@]}"; do
    for ls in 0.1 0; do
      word_kd_args kd "$(seeded "$TEACHERS/teacher_ls$ls" "$(teacher_seed_of "$seed")")/checkpoint_last.pt" "$t" "$KD_ALPHA"
      background student_job "$DATA/bin" "$RUN/student_wordkd_ls${ls}_T${t}_seed$seed" "$STUDENT_UPDATES" "$seed" "${kd[@]}"
      at_most "$LSKD_JOBS" "$RUN"
    done
  done
  background student_job "$DATA/bin" "$RUN/student_gold_seed$seed" "$STUDENT_UPDATES" "$seed"
  at_most "$LSKD_JOBS" "$RUN"
done
wait_all "students" "$RUN"

stage "report ($(( ($(date +%s) - started) / 60 )) min this run)"
SEED_NOTE=""; [ "$PER_SEED_TEACHERS" = 0 ] || SEED_NOTE=" (the students of seed s taught by the teachers of seed s)"
report "$RUN" --summary --note "teachers $TEACHER_UPDATES updates (3+3 layers, 256 \
dims, from $TEACHERS), students $STUDENT_UPDATES updates (3+3 layers, 128 dims, LS 0), word-KD alpha $KD_ALPHA with the \
full online teacher distribution, seeds ${SEEDS[*]}$SEED_NOTE, test decoding beam $BEAM"

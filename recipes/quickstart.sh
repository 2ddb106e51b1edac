#!/usr/bin/env bash
# LSKD quickstart: the paper's question on the embedded Bible De-En corpus, on CPU.
# Prepares the data; trains two small Transformer teachers, one with label smoothing 0.1 and one
# without; for each teacher distils a smaller student by word-level KD (T = 1) and one by
# sequence-level KD (beam-5 decoding of every training source with CTranslate2, int8, outputs that
# loop or are among the least confident left out), and trains
# the same student on the gold data alone as the baseline; scores every system on the Gospel of
# John with sacrebleu (fairseq's decoding), measures stability (1 - S), calibration (ECE), speed,
# size and int8 BLEU, draws the teachers' penultimate layers, and writes RUN_DIR/report.md with a
# summary.
# Jobs run two at a time, one core each. Re-running skips every stage whose command and inputs are
# unchanged since it last succeeded (recipes/lib.sh, `once`): a larger LSKD_TEACHER_UPDATES trains the
# teachers on from their last checkpoint, then re-scores and re-distils them.
#
#   bash recipes/quickstart.sh [--dry-run]     (--dry-run: print every command, run nothing)
#
# Budget knobs (environment variables):
#   LSKD_PROFILE=default|smoke|long  default: ~55 minutes on a 2-core CPU machine;
#                                    smoke: a few minutes (1,000 training verses, the first 200 of
#                                    John as test, 30 updates), for CI;
#                                    long: 4x the default's training, for better models
#   LSKD_TEACHER_UPDATES=N           override the number of updates per teacher
#   LSKD_STUDENT_UPDATES=N           override the number of updates per student
#   LSKD_KD_ALPHA=A                  weight of the word-level KD term (default 0.5)
#   LSKD_DISTILL_BEAM=B              beam of the sequence-level KD decoding (default 5)
#   LSKD_DISTILL_ENGINE="ARGS"       its engine (default "--engine ctranslate2 --quantization int8";
#                                    "--engine fairseq": fairseq-generate's decoding, ~2.4x slower)
#   LSKD_DISTILL_FILTER="ARGS"       how its outputs are cleaned (default "--filter": outputs that loop,
#                                    have an odd length ratio or score in the lowest 5 % are left out;
#                                    smoke: "--filter --filtered copy-reference", as its 30-update
#                                    teacher loops on every sentence; "" keeps them all)
#   LSKD_SPEED_ENGINES="E..."        engines lskd-eval speed measures each system with, at 1 thread
#                                    (default "fairseq ct2-int8"; ct2-int8 fills the report's columns)
#   LSKD_SEEDS="S..."                the students' seeds (default "$LSKD_SEED", else 1): every student is
#                                    trained per seed from the same teachers, and lskd-report tests the
#                                    LS-vs-non-LS gap over seeds (a paired t-test); the first seed's students
#                                    get every measurement, the others BLEU. "1 2 3": see the README for time
#   LSKD_TEACHER_SEEDS="S..."        also train the teachers per seed: the students of seed s learn from the
#                                    teachers of seed s (LSKD_SEEDS must then be the same seeds); unset: the
#                                    seed-1 teachers teach every seed
#   LSKD_SEED=S                      one seed for the students (the older knob; LSKD_SEEDS takes a list)
#   LSKD_RUN_DIR=DIR                 where checkpoints, logs and scores go (default runs/quickstart,
#                                    runs/quickstart-smoke for the smoke profile)
#   LSKD_DATA_DIR=DIR                where the prepared corpus goes (default data/bible-de-en-4k)
#   LSKD_DEVICE=cpu|gpu              gpu: train and decode on CUDA (default cpu)
#   LSKD_PREPARED=DIR                your own corpus instead of the Bible: a directory made by
#                                    `lskd-prepare text ... --out DIR` (its test split is scored;
#                                    separate dictionaries share only the decoder's embeddings)
#   LSKD_PICTURE_TOKENS="a b c"      three target SentencePiece pieces for the penultimate-layer
#                                    picture (default "▁God ▁Lord ▁water")
set -euo pipefail
if [ "${1:-}" = --dry-run ]; then export LSKD_DRY_RUN=1; shift; fi
[ $# -eq 0 ] || { echo "$(basename "$0"): error: unknown argument '$1' (usage: bash recipes/$(basename "$0") [--dry-run])" >&2; exit 2; }
source "$(dirname "${BASH_SOURCE[0]}")/env.sh" plots
source "$LSKD_ROOT/recipes/lib.sh"
share_cores
cd "$LSKD_ROOT"

PROFILE=${LSKD_PROFILE:-default}
case "$PROFILE" in
  default) UPDATES=800;  STUDENT_UPDATES=500;  LIMITS=();                                    BEAM=5; FILTER="--filter" ;;
  long)    UPDATES=3200; STUDENT_UPDATES=2000; LIMITS=();                                    BEAM=5; FILTER="--filter" ;;
  smoke)   UPDATES=30;   STUDENT_UPDATES=30;   LIMITS=(--limit-train 1000 --limit-test 200); BEAM=1
           FILTER="--filter --filtered copy-reference" ;;
  *) echo "LSKD_PROFILE must be default, smoke or long (got '$PROFILE')" >&2; exit 2 ;;
esac
UPDATES=${LSKD_TEACHER_UPDATES:-$UPDATES}
STUDENT_UPDATES=${LSKD_STUDENT_UPDATES:-$STUDENT_UPDATES}
KD_ALPHA=${LSKD_KD_ALPHA:-0.5}
DISTILL_BEAM=${LSKD_DISTILL_BEAM:-5}
read -r -a DISTILL_ENGINE <<< "${LSKD_DISTILL_ENGINE:---engine ctranslate2 --quantization int8}"
read -r -a DISTILL_FILTER <<< "${LSKD_DISTILL_FILTER-$FILTER}"
read -r -a SPEED_ENGINES <<< "${LSKD_SPEED_ENGINES:-fairseq ct2-int8}"
knobs integer LSKD_TEACHER_UPDATES "$UPDATES"; knobs integer LSKD_STUDENT_UPDATES "$STUDENT_UPDATES"
knobs number LSKD_KD_ALPHA "$KD_ALPHA"; knobs integer LSKD_DISTILL_BEAM "$DISTILL_BEAM"; knobs integer LSKD_SEED "${LSKD_SEED:-1}"
teacher_seeds "${LSKD_SEED:-1}"
FIRST_SEED=${SEEDS[0]}
SEED_WORDS="seed ${SEEDS[*]}"; [ ${#SEEDS[@]} = 1 ] || SEED_WORDS="seeds ${SEEDS[*]}"
SUFFIX=""; [ "$PROFILE" != smoke ] || SUFFIX=-smoke
RUN=${LSKD_RUN_DIR:-runs/quickstart$SUFFIX}
DATA=${LSKD_DATA_DIR:-data/bible-de-en-4k$SUFFIX}
started=$(date +%s)

if [ -n "${LSKD_PREPARED:-}" ]; then
  DATA=$LSKD_PREPARED
  stage "your prepared corpus: $DATA"
  [ "$LSKD_DRY_RUN" = 1 ] || [ -f "$DATA/prep.json" ] || { echo "$DATA has no prep.json: make it with lskd-prepare text ... --out $DATA" >&2; exit 2; }
  share_embeddings_like "$DATA"
else
  stage "prepare the Bible De-En corpus (test = John, valid = Ruth + Philemon) in $DATA"
  once "$DATA/prepare.done" - -- lskd-prepare bible --out "$DATA" --vocab-size 4000 "${LIMITS[@]}"
fi
# fairseq records --save-dir and the data directory as given, and LSKD finds a checkpoint's data again
# relative to where fairseq-train ran, which only a relative --save-dir reveals: an absolute run
# directory gets an absolute data directory (else the report warns and the KD teacher check weakens)
if [[ $RUN == /* ]]; then DATA=$(realpath -m "$DATA"); fi
TOKENS=${LSKD_PICTURE_TOKENS:-▁God ▁Lord ▁water}
[ "$LSKD_DRY_RUN" = 1 ] || check_picture_tokens "$DATA" "$TOKENS"
PICTURE=${TOKENS//▁/}; PICTURE=$RUN/plots/penultimate_${PICTURE// /_}.png
seed_design "$RUN"

# Jobs: score a model (BLEU with fairseq, stability, speed and int8 BLEU); train a student and score
# it; decode a teacher's corpus, then train the sequence-level KD students of one or more seeds on it.
# The first seed's models get every measurement; the other seeds' BLEU, all that the test over seeds needs.
evaluate_job() { score_and_analyse "$1" "$DATA" "$BEAM" && measure_speed "$1" "$DATA" "$BEAM" "${SPEED_ENGINES[@]}"; }
evaluate_seed() {  # evaluate_seed DIR SEED FIRST_SEED
  if [ "$2" = "$3" ]; then evaluate_job "$1"; else evaluate_bleu "$1" "$DATA" "$BEAM"; fi
}
student_job() { train_student "$@" && evaluate_seed "$2" "$4" "$FIRST_SEED"; }
seqkd_job() {  # seqkd_job TEACHER_DIR DISTILLED_DIR LS SEED...: one decoding of the teacher, then a student per SEED
  local teacher=$1 distilled=$2 ls=$3 seed; shift 3
  distill_corpus "$teacher" "$DATA" "$distilled" "$DISTILL_BEAM" "${DISTILL_ENGINE[@]}" "${DISTILL_FILTER[@]}" || return 1
  for seed in "$@"; do
    student_job "$distilled/bin" "$RUN/student_seqkd_ls${ls}_seed$seed" "$STUDENT_UPDATES" "$seed" || return 1
  done
}
# seeds_taught_by TEACHER_SEED: the student seeds that learn from the teachers of TEACHER_SEED
seeds_taught_by() {
  local seed taught=()
  for seed in "${SEEDS[@]}"; do [ "$(teacher_seed_of "$seed")" != "$1" ] || taught+=("$seed"); done
  echo "${taught[*]}"
}

stage "train the teachers, $LSKD_JOBS at a time, $UPDATES updates each: label smoothing 0.1 and 0 (seed ${TEACHER_SEEDS[*]})"
for teacher_seed in "${TEACHER_SEEDS[@]}"; do
  for ls in 0.1 0; do
    at_most "$LSKD_JOBS" "$RUN"
    background train_teacher "$DATA/bin" "$(seeded "$RUN/teacher_ls$ls" "$teacher_seed")" "$ls" "$UPDATES" "$teacher_seed"
  done
done
wait_all "teacher training" "$RUN"

# The teachers are scored beside each other, before any student job: their speed rows are then measured
# beside the same kind of job. (One pool of every job after the teachers, in two orders, took the same
# 54-55 min, and measured a teacher's words/s beside a distillation: 902 instead of 1,118.)
stage "score both teachers on the test split (beam $BEAM), analyse them (stability 1 - S, calibration), measure their speed (${SPEED_ENGINES[*]}, 1 thread)"
for teacher_seed in "${TEACHER_SEEDS[@]}"; do
  for ls in 0.1 0; do
    at_most "$LSKD_JOBS" "$RUN"
    background evaluate_seed "$(seeded "$RUN/teacher_ls$ls" "$teacher_seed")" "$teacher_seed" "${TEACHER_SEEDS[0]}"
  done
done
wait_all "teacher evaluation" "$RUN"

stage "students ($STUDENT_UPDATES updates each, $SEED_WORDS, $LSKD_JOBS at a time): word-level KD at T = 1 (alpha $KD_ALPHA) and sequence-level KD (beam $DISTILL_BEAM, ${DISTILL_ENGINE[*]}) from each teacher, and the gold-data baseline"
# Longest jobs first, so the cores finish together: per teacher its decodings (each followed by the
# sequence-level KD students it teaches) and the first seed's word-level KD student, then the other
# seeds' word-level KD students, then the gold baselines.
wordkd_job() {  # wordkd_job LS SEED
  word_kd_args kd "$(seeded "$RUN/teacher_ls$1" "$(teacher_seed_of "$2")")/checkpoint_last.pt" 1 "$KD_ALPHA"
  student_job "$DATA/bin" "$RUN/student_wordkd_ls${1}_T1_seed$2" "$STUDENT_UPDATES" "$2" "${kd[@]}"
}
for ls in 0.1 0; do
  for teacher_seed in "${TEACHER_SEEDS[@]}"; do
    read -r -a taught <<< "$(seeds_taught_by "$teacher_seed")"
    background seqkd_job "$(seeded "$RUN/teacher_ls$ls" "$teacher_seed")" "$(seeded "$RUN/distilled_ls$ls" "$teacher_seed")" \
      "$ls" "${taught[@]}"
    at_most "$LSKD_JOBS" "$RUN"
  done
  background wordkd_job "$ls" "$FIRST_SEED"
  at_most "$LSKD_JOBS" "$RUN"
done
for seed in "${SEEDS[@]:1}"; do
  for ls in 0.1 0; do
    background wordkd_job "$ls" "$seed"
    at_most "$LSKD_JOBS" "$RUN"
  done
done
for seed in "${SEEDS[@]}"; do
  background student_job "$DATA/bin" "$RUN/student_gold_seed$seed" "$STUDENT_UPDATES" "$seed"
  at_most "$LSKD_JOBS" "$RUN"
done
wait_all "students" "$RUN"

stage "draw both teachers' penultimate layers"
penultimate_picture "$PICTURE" "$DATA" "$TOKENS" \
  "$(seeded "$RUN/teacher_ls0.1" "${TEACHER_SEEDS[0]}")/checkpoint_last.pt" "$(seeded "$RUN/teacher_ls0" "${TEACHER_SEEDS[0]}")/checkpoint_last.pt"

stage "results ($(( ($(date +%s) - started) / 60 )) min this run)"
SEED_NOTE=""  # a one-seed run's note (the report's command) stays as it was
if [ "$PER_SEED_TEACHERS" = 1 ]; then SEED_NOTE="; teachers per seed: the students of seed s learn from the teachers of seed s"
elif [ ${#SEEDS[@]} -gt 1 ]; then SEED_NOTE="; every seed taught by the seed-1 teachers"; fi
[ ${#SEEDS[@]} = 1 ] || SEED_NOTE+="; stability, ECE and speed of seed $FIRST_SEED only"
scores=("$RUN"/*/eval/bleu-test.json)
once "$RUN/table.done" "$RUN/table.log" "${scores[@]}" -- lskd-eval table "${scores[@]}"
[ "$LSKD_DRY_RUN" = 1 ] || cat "$RUN/table.log"
report "$RUN" --summary --note "profile $PROFILE: teachers $UPDATES updates (3+3 layers, 256 dims), \
students $STUDENT_UPDATES updates (3+3 layers, 128 dims, LS 0, $SEED_WORDS${SEED_NOTE}), word-KD T = 1 alpha $KD_ALPHA with the \
full online teacher distribution, sequence-level KD on the teacher's beam-$DISTILL_BEAM decoding of every training \
source (${DISTILL_ENGINE[*]} ${DISTILL_FILTER[*]}), test decoding beam $BEAM (BLEU: fairseq; speed: ${SPEED_ENGINES[*]} at 1 thread), \
$LSKD_JOBS jobs side by side on $LSKD_CORES cores."

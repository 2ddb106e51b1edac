#!/usr/bin/env bash
# LSKD quickstart: the paper's question on the embedded Bible De-En corpus (first version).
# Prepares the data, trains two small Transformer teachers on CPU - one with label smoothing 0.1,
# one without - side by side (one core each), scores both on the Gospel of John with sacrebleu,
# measures their stability (1 - S) and calibration, draws their penultimate layers, and writes
# RUN_DIR/report.md.
# Re-running skips every finished stage.
#
# Budget knobs (environment variables):
#   LSKD_PROFILE=default|smoke|long  default: fits ~20 minutes on a 2-core CPU machine;
#                                    smoke: a couple of minutes, for CI and trying things out;
#                                    long: ~4x the default's training, for better teachers.
#   LSKD_TEACHER_UPDATES=N           override the number of updates per teacher
#   LSKD_RUN_DIR=DIR                 where checkpoints, logs and scores go (default runs/quickstart,
#                                    runs/quickstart-smoke for the smoke profile)
#   LSKD_DATA_DIR=DIR                where the prepared corpus goes (default data/bible-de-en-4k)
#   LSKD_DEVICE=cpu|gpu              gpu: train and decode on CUDA (default cpu)
#   LSKD_PREPARED=DIR                your own corpus instead of the Bible: a directory made by
#                                    `lskd-prepare text ... --out DIR` (its test split is scored)
#   LSKD_PICTURE_TOKENS="a b c"      three target SentencePiece pieces for the penultimate-layer
#                                    picture (default "▁God ▁Lord ▁water")
source "$(dirname "${BASH_SOURCE[0]}")/env.sh" plots
source "$LSKD_ROOT/recipes/lib.sh"
cd "$LSKD_ROOT"

PROFILE=${LSKD_PROFILE:-default}
case "$PROFILE" in
  default) UPDATES=${LSKD_TEACHER_UPDATES:-800}; LIMIT_TRAIN=""; BEAM=5 ;;
  long)    UPDATES=${LSKD_TEACHER_UPDATES:-3200}; LIMIT_TRAIN=""; BEAM=5 ;;
  smoke)   UPDATES=${LSKD_TEACHER_UPDATES:-30};   LIMIT_TRAIN="--limit-train 3000"; BEAM=1 ;;
  *) echo "LSKD_PROFILE must be default, smoke or long (got '$PROFILE')" >&2; exit 2 ;;
esac
RUN=${LSKD_RUN_DIR:-runs/quickstart${LIMIT_TRAIN:+-smoke}}
DATA=${LSKD_DATA_DIR:-data/bible-de-en-4k${LIMIT_TRAIN:+-smoke}}
mkdir -p "$RUN"
started=$(date +%s)

if [ -n "${LSKD_PREPARED:-}" ]; then
  DATA=$LSKD_PREPARED
  stage "your prepared corpus: $DATA"
  [ -f "$DATA/prep.json" ] || { echo "$DATA has no prep.json: make it with lskd-prepare text ... --out $DATA" >&2; exit 2; }
else
  stage "prepare the Bible De-En corpus (test = John, valid = Ruth + Philemon) in $DATA"
  lskd-prepare bible --out "$DATA" --vocab-size 4000 $LIMIT_TRAIN
fi
TOKENS=${LSKD_PICTURE_TOKENS:-▁God ▁Lord ▁water}
PICTURE=${TOKENS//▁/}; PICTURE=$RUN/plots/penultimate_${PICTURE// /_}.png

stage "train two teachers side by side, $UPDATES updates each: label smoothing 0.1 and 0"
for ls in 0.1 0; do
  train_teacher "$DATA/bin" "$RUN/teacher_ls$ls" "$ls" "$UPDATES" &
done
wait_all "teacher training" "$RUN/teacher_ls0.1/train.log" "$RUN/teacher_ls0/train.log"

stage "translate the test split (the Bible: John) with each teacher (beam $BEAM) and score with sacrebleu"
for ls in 0.1 0; do
  evaluate_bleu "$RUN/teacher_ls$ls" "$DATA" "$BEAM" &
done
wait_all "evaluation"

stage "analyse both teachers on the test split: stability 1 - S, calibration, penultimate-layer picture"
for ls in 0.1 0; do
  analyse_teacher "$RUN/teacher_ls$ls" "$DATA" &
done
wait_all "analysis"
mkdir -p "$RUN/plots"
penultimate_picture "$PICTURE" "$DATA" "$TOKENS" \
  "$RUN/teacher_ls0.1/checkpoint_last.pt" "$RUN/teacher_ls0/checkpoint_last.pt"

stage "results ($(( ($(date +%s) - started) / 60 )) min this run)"
lskd-eval table "$RUN"/teacher_ls*/eval/bleu-test.json
echo "report: $(lskd-report "$RUN")"

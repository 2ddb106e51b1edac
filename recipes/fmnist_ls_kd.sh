#!/usr/bin/env bash
# Shen et al.'s image-classification and binary-network experiments, on Fashion-MNIST, through
# lskd-train: a teacher with label smoothing 0.1 and one without; for each teacher, seed and T in
# TEMPERATURES, a CNN student (configs/fmnist_student.yaml) and a ReActNet-style binary student
# (configs/fmnist_binary.yaml) distilled from it; gold-label students as baselines; all of it on the
# balanced split and on long-tailed ones (IMBALANCE_RATIOS); then, per split, the teachers'
# penultimate-layer picture of three classes, and lskd-report over everything.
#
#   bash recipes/fmnist_ls_kd.sh [--dry-run]
#
# --dry-run prints every command, in order, and runs nothing (no venv, no data needed).
# Knobs (environment): LSKD_RUN_DIR (runs/fmnist_ls_kd), LSKD_SEEDS ("1 2 3": the students' seeds, over which
# lskd-report tests each LS-vs-non-LS gap; SEEDS, the old name, still works), TEMPERATURES ("1 2 3 64"),
# IMBALANCE_RATIOS ("1 100"; 1 = balanced), KD_ALPHA (1: soft labels only, as Shen et al. and
# ReActNet), TEACHER_LS (0.1), EPOCHS (the configs' 30), TRAIN_LIMIT (first N training images: smoke
# runs), NPROC (torchrun workers per run, 1), LSKD_DATA_DIR (your own copy of Fashion-MNIST),
# PICTURE_CLASSES ("Shirt T-shirt/top Sneaker"), TRAIN_EXTRA (more --set KEY=VALUE for every run).
# A stage is skipped when it last succeeded with the same command and inputs (recipes/lib.sh, `once`);
# a killed training resumes from its checkpoint (lskd-train refuses one of another experiment, e.g.
# after EPOCHS changed: give another LSKD_RUN_DIR).
set -euo pipefail

if [ "${1:-}" = --dry-run ]; then export LSKD_DRY_RUN=1; shift; fi
[ $# -eq 0 ] || { echo "$(basename "$0"): error: unknown argument '$1' (usage: bash recipes/$(basename "$0") [--dry-run])" >&2; exit 2; }
source "$(dirname "${BASH_SOURCE[0]}")/env.sh" plots  # matplotlib: the picture and the report's plot
source "$LSKD_ROOT/recipes/lib.sh"
RUN=${LSKD_RUN_DIR:-$LSKD_ROOT/runs/fmnist_ls_kd}
student_seeds "1 2 3" old
read -r -a TEMPERATURES <<< "${TEMPERATURES:-1 2 3 64}"
read -r -a IMBALANCE_RATIOS <<< "${IMBALANCE_RATIOS:-1 100}"
KD_ALPHA=${KD_ALPHA:-1}
TEACHER_LS=${TEACHER_LS:-0.1}
NPROC=${NPROC:-1}
knobs number TEMPERATURES "${TEMPERATURES[@]}"; knobs number KD_ALPHA "$KD_ALPHA"
knobs number IMBALANCE_RATIOS "${IMBALANCE_RATIOS[@]}"; knobs number TEACHER_LS "$TEACHER_LS"; knobs integer NPROC "$NPROC"
read -r -a PICTURE <<< "${PICTURE_CLASSES:-Shirt T-shirt/top Sneaker}"
COMMON=()  # --set values shared by every run
[ -n "${EPOCHS:-}" ] && COMMON+=("schedule.epochs=$EPOCHS")
[ -n "${TRAIN_LIMIT:-}" ] && COMMON+=("data.train_limit=$TRAIN_LIMIT")
read -r -a EXTRA <<< "${TRAIN_EXTRA:-}"
COMMON+=("${EXTRA[@]}")
DATA_FLAG=(); [ -n "${LSKD_DATA_DIR:-}" ] && DATA_FLAG=(--data-dir "$LSKD_DATA_DIR")
TRAIN=(lskd-train); [ "$NPROC" -gt 1 ] && TRAIN=(torchrun --standalone --nproc_per_node "$NPROC" -m lskd.train.cli)
CONFIGS=$LSKD_ROOT/configs

# train OUT_DIR CONFIG KEY=VALUE...: one lskd-train run, on the terminal
train() {
  local dir=$1 config=$2; shift 2
  once "$dir/train.done" - -- "${TRAIN[@]}" "$CONFIGS/$config" --out-dir "$dir" "${DATA_FLAG[@]}" --set "$@" "${COMMON[@]}"
}

if [ "$LSKD_DRY_RUN" = 0 ]; then
  [ -n "${LSKD_DATA_DIR:-}" ] || source "$LSKD_ROOT/recipes/fashion_mnist.sh"
  mkdir -p "$RUN"
fi

for ratio in "${IMBALANCE_RATIOS[@]}"; do
  if [ "$ratio" = 1 ]; then split=balanced; else split=lt$ratio; fi
  data=data.imbalance_ratio=$ratio
  for ls in "$TEACHER_LS" 0; do
    train "$RUN/$split/teacher_ls$ls" fmnist_teacher.yaml "$data" "loss.label_smoothing=$ls" seed=1
  done
  for seed in "${SEEDS[@]}"; do
    for ls in "$TEACHER_LS" 0; do
      teacher=$RUN/$split/teacher_ls$ls/checkpoint_last.pt
      for t in "${TEMPERATURES[@]}"; do
        for student in cnn binary; do
          config=fmnist_student.yaml; [ "$student" = binary ] && config=fmnist_binary.yaml
          train "$RUN/$split/student_${student}_ls${ls}_T${t}_seed$seed" "$config" "$data" "seed=$seed" \
            "kd.teacher=$teacher" "kd.alpha=$KD_ALPHA" "kd.temperature=$t"
        done
      done
    done
    train "$RUN/$split/student_cnn_gold_seed$seed" fmnist_student.yaml "$data" "seed=$seed" kd.alpha=0
    train "$RUN/$split/student_binary_gold_seed$seed" fmnist_binary.yaml "$data" "seed=$seed" kd.alpha=0
  done
  teachers=("$RUN/$split/teacher_ls$TEACHER_LS/checkpoint_last.pt" "$RUN/$split/teacher_ls0/checkpoint_last.pt")
  once "$RUN/$split/penultimate_teachers.done" - "${teachers[@]}" -- lskd-vision-project --checkpoints "${teachers[@]}" \
    --classes "${PICTURE[@]}" --out "$RUN/$split/penultimate_teachers.png" "${DATA_FLAG[@]}"
done
report "$RUN"

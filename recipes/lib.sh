# Stages shared by the recipes. Sourced after env.sh. Every stage of every recipe runs through
# `once`, one rule for "already done": a stage is skipped only when its stamp records the very same
# command (every argument) and the same input files as its last successful run, so a re-run (or a
# resume after a kill) redoes exactly the stages whose arguments or inputs changed.
# With LSKD_DRY_RUN=1 every stage prints its command instead, shell-quoted on one line: nothing runs.
LSKD_DRY_RUN=${LSKD_DRY_RUN:-0}
LSKD_DEVICE=${LSKD_DEVICE:-cpu}
# Device flags as arrays: fairseq-train's --cpu and lskd-eval's / lskd-distill-corpus's --gpu.
CPU_FLAG=(); [ "$LSKD_DEVICE" = gpu ] || CPU_FLAG=(--cpu)
GPU_FLAG=(); [ "$LSKD_DEVICE" != gpu ] || GPU_FLAG=(--gpu)
# LSKD_DEVICE=gpu where torch sees no CUDA device stops here: fairseq-train would train on the CPU
# without a word, and the first --gpu command would stop hours later.
if [ "$LSKD_DEVICE" = gpu ] && [ "$LSKD_DRY_RUN" != 1 ] \
    && ! python -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
  echo "$(basename "$0"): error: LSKD_DEVICE=gpu, but torch sees no CUDA device here (LSKD_DEVICE=cpu runs on the CPU)" >&2
  exit 2
fi

# glibc returns freed blocks of >= 32 MiB to the OS at once, so every step pays page faults on fresh
# (tokens x V) tensors; keeping them made a training step ~10 % faster for every criterion on the 2-core CPU
# machine (torch 2.13, measured 2026-11). benchmarks/kd_throughput.py runs all criteria under this setting.
export GLIBC_TUNABLES=${GLIBC_TUNABLES:-glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967296}

# knobs integer|number NAME VALUE...: stop the recipe (exit 2) when the knob NAME holds something other
# than non-negative integers (updates, seeds) or numbers (temperatures, alpha); otherwise the first
# stage to use it would fail minutes later, inside fairseq's argument parser.
knobs() {
  local kind=$1 name=$2 value pattern='^[0-9]+$'; shift 2
  [ "$kind" = integer ] || pattern='^([0-9]+[.]?[0-9]*|[.][0-9]+)$'
  for value in "$@"; do
    [[ $value =~ $pattern ]] || { echo "$(basename "$0"): error: $name must hold ${kind}s, got '$value'" >&2; exit 2; }
  done
}

stage() { [ "$LSKD_DRY_RUN" = 1 ] || printf '\n== %s\n' "$*"; }
say() { [ "$LSKD_DRY_RUN" = 1 ] || echo "   $*"; }

# once STAMP LOG [INPUT...] -- COMMAND...: run COMMAND, its output in LOG ("-": the terminal; a failure
# shows LOG's tail), unless the file STAMP records this COMMAND and the INPUT files' identity (path,
# size, modification time) from its last successful run. The stamp is removed before COMMAND starts
# and written only when it succeeds, so a killed or failed stage runs again, and so does one whose
# arguments (e.g. --max-update) or inputs changed. A dry run prints COMMAND and runs nothing.
once() {
  local stamp=$1 log=$2 inputs=() input record line; shift 2
  while [ $# -gt 0 ] && [ "$1" != -- ]; do inputs+=("$1"); shift; done
  [ $# -ge 2 ] || { echo "once: usage: once STAMP LOG [INPUT...] -- COMMAND..." >&2; return 2; }
  shift
  printf -v line '%q ' "$@"
  if [ "$LSKD_DRY_RUN" = 1 ]; then echo "${line% }"; return 0; fi
  record="command: ${line% }"
  for input in "${inputs[@]}"; do
    record+=$'\n'"input: $(stat -c '%n %s %y' -- "$input" 2>/dev/null || echo "$input missing")"
  done
  if [ -f "$stamp" ]; then
    if [ "$(< "$stamp")" = "$record" ]; then say "${stamp%.done}: done (same command and inputs), skipping"; return 0; fi
    say "${stamp%.done}: command or inputs changed since the last run, running again"
    rm -f -- "$stamp"
  fi
  if [ "$log" = - ]; then
    say "${stamp%.done}: running $1"
    "$@" || return
  else
    say "${stamp%.done}: running $1 (log: $log)"
    mkdir -p "$(dirname "$log")"
    "$@" > "$log" 2>&1 || { echo "   $1 failed; last lines of $log:"; tail -n 20 "$log"; return 1; }
  fi
  mkdir -p "$(dirname "$stamp")"
  printf '%s\n' "$record" > "$stamp.$BASHPID.tmp" && mv -f "$stamp.$BASHPID.tmp" "$stamp"
}

# report RUN_DIR [LSKD_REPORT_ARGS...]: lskd-report over RUN_DIR, printed; it runs again whenever any
# stage under RUN_DIR ran since (its inputs are their stamps).
report() {
  local run=$1 stamps; shift
  mapfile -t stamps < <(find "$run" -name '*.done' ! -path "$run/report.done" 2>/dev/null | sort)
  once "$run/report.done" "$run/report.log" "${stamps[@]}" -- lskd-report "$run" "$@" || return 1
  [ "$LSKD_DRY_RUN" = 1 ] || cat "$run/report.log"
}

# background COMMAND...: run COMMAND in the background, remembered for wait_all (a shell's job
# table forgets finished jobs, so their pids are kept here to collect every exit status). A dry
# run runs it in the foreground, so the printed commands keep their order.
LSKD_PIDS=()
background() {
  if [ "$LSKD_DRY_RUN" = 1 ]; then "$@"; return; fi
  "$@" &
  LSKD_PIDS+=("$!")
}

# progress_of LOG: the latest progress a stage wrote to LOG: fairseq-train's last num_updates, else the
# last line (a progress bar's last refresh: tqdm rewrites its line with a carriage return)
progress_of() {
  local line
  line=$(grep -o 'num_updates[ =][0-9]*' "$1" 2>/dev/null | tail -n 1) || true
  [ -n "$line" ] || line=$(tail -c 4000 "$1" 2>/dev/null | tr '\r' '\n' | grep -v '^[[:space:]]*$' | tail -n 1 | cut -c1-140)
  echo "$line"
}

# show_progress DIR WHAT SECONDS: one line on what is still running, then the latest progress of every
# log under DIR written in the last three minutes (every stage logs there, so none goes unseen)
show_progress() {
  local dir=$1 what=$2 seconds=$3 log
  say "... $what: $(jobs -rp | wc -l) job(s) running, $((seconds / 60)) min"
  while IFS= read -r log; do
    say "    ${log#./}: $(progress_of "$log")"
  done < <(find "$dir" -name '*.log' -mmin -3 2>/dev/null | sort)
}

# Seconds between two progress reports of at_most and wait_all (LSKD_PROGRESS_SECONDS for tests).
LSKD_PROGRESS_SECONDS=${LSKD_PROGRESS_SECONDS:-60}

# at_most N DIR: block until fewer than N of this shell's background jobs run (a job pool), showing the
# progress of the stages logging under DIR once a minute while it waits
at_most() {
  local jobs=$1 dir=$2 waited=0
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do
    sleep 1; waited=$((waited + 1))
    [ $((waited % LSKD_PROGRESS_SECONDS)) != 0 ] || show_progress "$dir" "waiting for a free core" "$waited"
  done
}

# wait_all WHAT DIR: wait for the background jobs, showing the progress of the stages logging under DIR
# once a minute; fail if any job failed.
wait_all() {
  local what=$1 dir=$2 waited=0
  while [ -n "$(jobs -rp)" ]; do
    sleep 1; waited=$((waited + 1))
    [ $((waited % LSKD_PROGRESS_SECONDS)) != 0 ] || show_progress "$dir" "$what" "$waited"
  done
  local failed=0 pid
  for pid in "${LSKD_PIDS[@]}"; do wait "$pid" || failed=1; done
  LSKD_PIDS=()
  [ "$failed" = 0 ] || { echo "== $what failed (see the logs above)" >&2; exit 1; }
}

# --- The NMT stages ---------------------------------------------------------------------------------

# evaluate_bleu RUN_DIR DATA_DIR BEAM: decode the test split with RUN_DIR/checkpoint_last.pt
evaluate_bleu() {
  local dir=$1 data=$2 beam=$3
  once "$dir/eval/bleu-test.done" "$dir/eval.log" "$dir/checkpoint_last.pt" "$data/prep.json" -- \
    lskd-eval bleu --checkpoint "$dir/checkpoint_last.pt" --data "$data" --split test --beam "$beam" \
    --out "$dir/eval" "${GPU_FLAG[@]}" || return 1
  say "$dir: $(grep -m 1 '^BLEU' "$dir/eval.log" 2>/dev/null)"
}

# analyse_model RUN_DIR DATA_DIR: stability 1 - S, ECE and entropy on the test split
analyse_model() {
  local dir=$1 data=$2
  once "$dir/eval/stability-test.done" "$dir/stability.log" "$dir/checkpoint_last.pt" "$data/prep.json" -- \
    lskd-eval stability --checkpoint "$dir/checkpoint_last.pt" --data "$data" --split test --out "$dir/eval" || return 1
  say "$dir: $(grep -m 1 '^1 - S' "$dir/stability.log" 2>/dev/null)"
}

# score_and_analyse RUN_DIR DATA_DIR BEAM: BLEU on the test split, then stability and calibration
score_and_analyse() { evaluate_bleu "$1" "$2" "$3" && analyse_model "$1" "$2"; }

# measure_speed RUN_DIR DATA_DIR BEAM ENGINE...: words/s, latency, memory, size and BLEU of
# RUN_DIR/checkpoint_last.pt with each ENGINE (fairseq, ct2-int8, ...) at 1 thread, on the test split
measure_speed() {
  local dir=$1 data=$2 beam=$3; shift 3
  once "$dir/eval/speed-test.done" "$dir/speed.log" "$dir/checkpoint_last.pt" "$data/prep.json" -- \
    lskd-eval speed --checkpoint "$dir/checkpoint_last.pt" --data "$data" --split test --beam "$beam" \
    --engines "$@" --threads 1 --latency-sentences 50 --out "$dir/eval" "${GPU_FLAG[@]}" || return 1
  say "$dir: $(grep -m 1 '^ct2-int8' "$dir/speed.log" 2>/dev/null)"
}

# --- The Bible recipes (quickstart, temperature sweep): small models, jobs side by side on CPU cores --

# share_cores: LSKD_JOBS jobs side by side, LSKD_THREADS_PER_JOB threads each. On this class of
# machine two single-threaded fairseq processes get ~1.3x the throughput of one two-threaded process.
# (nproc honours OMP_NUM_THREADS, so count the cores without it.)
share_cores() {
  LSKD_CORES=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
  LSKD_THREADS_PER_JOB=${LSKD_THREADS_PER_JOB:-$(( LSKD_CORES > 2 ? LSKD_CORES / 2 : 1 ))}
  LSKD_JOBS=$(( LSKD_CORES / LSKD_THREADS_PER_JOB > 1 ? LSKD_CORES / LSKD_THREADS_PER_JOB : 1 ))
  export OMP_NUM_THREADS=$LSKD_THREADS_PER_JOB MKL_NUM_THREADS=$LSKD_THREADS_PER_JOB
}

# A small Transformer that learns fast on CPU: 3+3 pre-norm layers, 256 dims, shared embeddings.
TEACHER_ARCH=(--arch transformer --encoder-layers 3 --decoder-layers 3
  --encoder-embed-dim 256 --decoder-embed-dim 256 --encoder-ffn-embed-dim 1024 --decoder-ffn-embed-dim 1024
  --encoder-attention-heads 4 --decoder-attention-heads 4 --share-all-embeddings
  --encoder-normalize-before --decoder-normalize-before --dropout 0.1)
# A smaller student: same depth, half the width. Most of a training step on CPU is the output layer
# and the embeddings (V x dim), so this is ~2.5x cheaper per update than the teacher.
STUDENT_ARCH=(--arch transformer --encoder-layers 3 --decoder-layers 3
  --encoder-embed-dim 128 --decoder-embed-dim 128 --encoder-ffn-embed-dim 512 --decoder-ffn-embed-dim 512
  --encoder-attention-heads 4 --decoder-attention-heads 4 --share-all-embeddings
  --encoder-normalize-before --decoder-normalize-before --dropout 0.1)
# share_embeddings_like DATA_DIR: a corpus prepared with separate source and target dictionaries (a
# teacher's vocabulary, `lskd-prepare --teacher`) cannot share all embeddings: its models share the
# decoder's input and output embeddings only. (lskd.prepared needs no installed package.)
share_embeddings_like() {
  [ -f "$1/prep.json" ] || return 0
  local sharing
  sharing=$(PYTHONPATH="$LSKD_ROOT" python3 -c 'import sys; from lskd.prepared import load_prepared
print("--share-all-embeddings" if load_prepared(sys.argv[1]).joined_dictionary else "--share-decoder-input-output-embed")' "$1") || return 1
  TEACHER_ARCH=("${TEACHER_ARCH[@]/#--share-all-embeddings/$sharing}")
  STUDENT_ARCH=("${STUDENT_ARCH[@]/#--share-all-embeddings/$sharing}")
}
OPTIMIZATION=(--optimizer adam --adam-betas '(0.9,0.98)' --lr 2e-3 --lr-scheduler inverse_sqrt
  --warmup-updates 200 --max-tokens 2048 --required-batch-size-multiple 1)

# train_model BIN_DIR SAVE_DIR UPDATES SEED FAIRSEQ_ARGS...: fairseq-train. A killed run, or one asked
# for other UPDATES, resumes from checkpoint_last.pt (fairseq's rule); the stamp records the
# command only, so a student whose teacher changed keeps its checkpoint (delete SAVE_DIR to redo it).
train_model() {
  local bin=$1 dir=$2 updates=$3 seed=$4; shift 4
  once "$dir/train.done" "$dir/train.log" -- fairseq-train "$bin" --user-dir "$LSKD_ROOT/fairseq_plugins" \
    "${CPU_FLAG[@]}" "$@" "${OPTIMIZATION[@]}" --max-update "$updates" --save-dir "$dir" --no-epoch-checkpoints \
    --save-interval-updates 200 --keep-interval-updates 1 --seed "$seed" --num-workers 0 \
    --log-format simple --log-interval 50
}

# train_teacher BIN_DIR SAVE_DIR LABEL_SMOOTHING UPDATES [SEED]: SEED 1 unless given
train_teacher() {
  train_model "$1" "$2" "$4" "${5:-1}" "${TEACHER_ARCH[@]}" --criterion label_smoothed_cross_entropy --label-smoothing "$3"
}

# train_student BIN_DIR SAVE_DIR UPDATES SEED [CRITERION_ARGS...]: the student architecture, without
# label smoothing of its own (so the teacher is the only difference between students); no criterion
# arguments = cross-entropy on BIN_DIR's targets (gold data, or a distilled corpus).
train_student() {
  local bin=$1 dir=$2 updates=$3 seed=$4; shift 4
  [ $# -gt 0 ] || set -- --criterion label_smoothed_cross_entropy
  train_model "$bin" "$dir" "$updates" "$seed" "${STUDENT_ARCH[@]}" "$@" --label-smoothing 0
}

# word_kd_args ARRAY TEACHER_CHECKPOINT TEMPERATURE ALPHA: set ARRAY to the criterion arguments of an
# online word-level KD student
word_kd_args() {
  local -n into=$1
  into=(--criterion label_smoothed_cross_entropy_with_kd --teacher-path "$2" --kd-temperature "$3" --kd-alpha "$4")
}

# distill_corpus TEACHER_DIR DATA_DIR OUT_DIR BEAM [ENGINE_ARGS...]: sequence-level KD data from
# TEACHER_DIR/checkpoint_last.pt, e.g. ENGINE_ARGS "--engine ctranslate2 --quantization int8" (a changed
# checkpoint runs it again, and --overwrite makes lskd-distill-corpus start over)
distill_corpus() {
  local teacher=$1 data=$2 out=$3 beam=$4; shift 4
  once "$out/distill.done" "$out.log" "$teacher/checkpoint_last.pt" "$data/prep.json" -- \
    lskd-distill-corpus --data "$data" --teacher-path "$teacher/checkpoint_last.pt" --out "$out" \
    --beam "$beam" --batch-size 128 --workers 1 --overwrite "$@" "${GPU_FLAG[@]}" || return 1
  say "$out: $(tail -n 1 "$out.log" 2>/dev/null)"
}

# penultimate_picture OUT.png DATA_DIR "TOKEN TOKEN TOKEN" CHECKPOINT... : Müller-style projection of
# three target tokens (SentencePiece pieces, e.g. "▁God ▁Lord ▁water")
# check_picture_tokens DATA "a b c": the picture's three pieces must be in DATA's target dictionary;
# checked as soon as the data exists, not at the last stage (after the whole run) as lskd-eval project would.
check_picture_tokens() {
  local data=$1 tokens missing=() token tgt; read -r -a tokens <<< "$2"
  tgt=$(python -c 'import json, sys; print(json.load(open(sys.argv[1]))["options"]["tgt"])' "$data/prep.json")
  for token in "${tokens[@]}"; do
    awk -v t="$token" '$1 == t {found = 1} END {exit !found}' "$data/bin/dict.$tgt.txt" || missing+=("$token")
  done
  if [ ${#tokens[@]} -ne 3 ] || [ ${#missing[@]} -gt 0 ]; then
    echo "$(basename "$0"): error: LSKD_PICTURE_TOKENS='$2' must be three pieces of $data/bin/dict.$tgt.txt" \
      "(SentencePiece pieces that begin a word start with ▁)${missing[*]:+; not there: ${missing[*]}}" >&2
    exit 2
  fi
}

penultimate_picture() {
  local out=$1 data=$2 tokens; read -r -a tokens <<< "$3"; shift 3
  once "${out%.png}.done" "${out%.png}.log" "$@" "$data/prep.json" -- lskd-eval project --checkpoints "$@" \
    --data "$data" --split test --tokens "${tokens[@]}" --out "$out" || return 1
  say "$out"
}

# --- Seeds: every student per seed (LSKD_SEEDS), and with LSKD_TEACHER_SEEDS the teachers too ----------
# The paper's claim is about teachers: one student per teacher compares two trained models, whose
# difference training variance can exceed; lskd-report tests the LS-vs-non-LS gap over seeds instead.

# student_seeds DEFAULT [OLD]: the array SEEDS from LSKD_SEEDS (default DEFAULT), or with OLD ("old") from
# SEEDS, the recipe's old name for it (still read, with a deprecation line); SEEDS_KNOB names the variable
# it came from. Seeds are non-negative integers, none repeated (two jobs would train into one directory).
student_seeds() {
  local default=$1 old="" seed seen=" "
  [ "${2:-}" != old ] || old=${SEEDS:-}
  SEEDS_KNOB=LSKD_SEEDS
  if [ -n "$old" ]; then
    echo "$(basename "$0"): SEEDS is deprecated and will be removed: use LSKD_SEEDS" >&2
    [ -n "${LSKD_SEEDS:-}" ] || { default=$old; SEEDS_KNOB=SEEDS; }
  fi
  read -r -a SEEDS <<< "${LSKD_SEEDS:-$default}"
  knobs integer "$SEEDS_KNOB" "${SEEDS[@]}"
  for seed in "${SEEDS[@]}"; do
    [[ $seen != *" $seed "* ]] || { echo "$(basename "$0"): error: $SEEDS_KNOB repeats seed $seed" >&2; exit 2; }
    seen+="$seed "
  done
}

# teacher_seeds DEFAULT_STUDENT_SEEDS [OLD]: SEEDS (as student_seeds) and TEACHER_SEEDS, the seeds teachers are
# trained with: "1" (default: the seed-1 teachers teach the students of every seed), or with
# LSKD_TEACHER_SEEDS the students' own seeds (the students of seed s learn from the teachers of seed s, so
# a seed is one replicate of the whole experiment); LSKD_SEEDS then defaults to LSKD_TEACHER_SEEDS and any
# other list is refused. PER_SEED_TEACHERS is 1 in that case.
teacher_seeds() {
  local default=$1 old=${2:-} seeds
  PER_SEED_TEACHERS=0; TEACHER_SEEDS=(1)
  if [ -n "${LSKD_TEACHER_SEEDS:-}" ]; then
    read -r -a seeds <<< "$LSKD_TEACHER_SEEDS"
    knobs integer LSKD_TEACHER_SEEDS "${seeds[@]}"
    default=$LSKD_TEACHER_SEEDS
  fi
  student_seeds "$default" "$old"
  if [ -n "${LSKD_TEACHER_SEEDS:-}" ]; then
    if [ "${seeds[*]}" != "${SEEDS[*]}" ]; then
      echo "$(basename "$0"): error: LSKD_TEACHER_SEEDS='${seeds[*]}' must be the students' seeds ($SEEDS_KNOB='${SEEDS[*]}'): the students of seed s learn from the teachers of seed s" >&2
      exit 2
    fi
    PER_SEED_TEACHERS=1; TEACHER_SEEDS=("${SEEDS[@]}")
  fi
}

# teacher_seed_of SEED: the seed of the teachers the students of SEED learn from
teacher_seed_of() { if [ "$PER_SEED_TEACHERS" = 1 ]; then echo "$1"; else echo 1; fi; }

# seeded DIR SEED: DIR for seed 1 (the paths of a one-seed run, so an existing run is not redone),
# DIR_seedSEED otherwise (lskd-report takes a trailing _seedN for the seed of one setting)
seeded() { if [ "$2" = 1 ]; then echo "$1"; else echo "$1_seed$2"; fi; }

# seed_design RUN_DIR: one run directory holds one design for seeds other than 1: students taught by the
# seed-1 teachers, or by the teachers of their own seed. A student directory keeps its checkpoint when
# its teacher changes (train_model), so a switch would silently keep students of the other teachers: it
# is refused. The design is recorded in RUN_DIR/seed_design; a directory without it that has students of
# another seed than 1 was made by the seed-1 teachers. Seed 1 alone is the same under both: not checked.
seed_design() {
  local run=$1 design="students of every seed taught by the seed-1 teachers" recorded
  [ "$PER_SEED_TEACHERS" = 0 ] || design="students of seed s taught by the teachers of seed s (LSKD_TEACHER_SEEDS)"
  [ "$LSKD_DRY_RUN" != 1 ] && [ "${SEEDS[*]}" != 1 ] || return 0  # seed 1 alone is the same under both designs
  if [ -f "$run/seed_design" ]; then
    recorded=$(< "$run/seed_design")
  elif [ -n "$(find "$run" -maxdepth 1 -name 'student_*_seed*' ! -name '*_seed1' 2>/dev/null | head -n 1)" ]; then
    recorded="students of every seed taught by the seed-1 teachers"
  fi
  if [ -n "${recorded:-}" ] && [ "$recorded" != "$design" ]; then
    echo "$(basename "$0"): error: $run holds $recorded ($run/seed_design); for $design give another LSKD_RUN_DIR" >&2
    exit 2
  fi
  mkdir -p "$run" && echo "$design" > "$run/seed_design"
}

# Shared stages of the NMT recipes on the Bible data. Sourced after env.sh; every stage is skipped
# when its output exists, so a recipe can be re-run (or resumed after a kill) without redoing
# finished work. With LSKD_DRY_RUN=1 each stage prints its command instead: nothing runs.
LSKD_DRY_RUN=${LSKD_DRY_RUN:-0}

# One core per job when two jobs run side by side: on this class of machine two single-threaded
# fairseq processes get ~1.3x the throughput of one two-threaded process.
# (nproc honours OMP_NUM_THREADS, so count the cores without it.)
LSKD_CORES=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
LSKD_THREADS_PER_JOB=${LSKD_THREADS_PER_JOB:-$(( LSKD_CORES > 2 ? LSKD_CORES / 2 : 1 ))}
LSKD_JOBS=$(( LSKD_CORES / LSKD_THREADS_PER_JOB > 1 ? LSKD_CORES / LSKD_THREADS_PER_JOB : 1 ))
export OMP_NUM_THREADS=$LSKD_THREADS_PER_JOB MKL_NUM_THREADS=$LSKD_THREADS_PER_JOB
LSKD_DEVICE=${LSKD_DEVICE:-cpu}
device_flag() { [ "$LSKD_DEVICE" = gpu ] || echo --cpu; }
gpu_flag() { [ "$LSKD_DEVICE" != gpu ] || echo --gpu; }

# glibc returns freed blocks of >= 32 MiB to the OS at once, so every step pays page faults on fresh
# (tokens x V) tensors; keeping them is ~10 % faster for every criterion (benchmarks/kd_throughput.py).
export GLIBC_TUNABLES=${GLIBC_TUNABLES:-glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967296}

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

stage() { [ "$LSKD_DRY_RUN" = 1 ] || printf '\n== %s\n' "$*"; }
say() { [ "$LSKD_DRY_RUN" = 1 ] || echo "   $*"; }

# invoke LOG COMMAND...: run COMMAND with its output in LOG (- : on the terminal), showing LOG's
# tail if it fails; a dry run prints the command, shell-quoted, on one line.
invoke() {
  local log=$1; shift
  if [ "$LSKD_DRY_RUN" = 1 ]; then printf '%q ' "$@" | sed 's/ $//'; echo; return 0; fi
  [ "$log" != - ] || { "$@"; return; }
  mkdir -p "$(dirname "$log")"
  "$@" > "$log" 2>&1 || { echo "   $1 failed; last lines of $log:"; tail -n 20 "$log"; return 1; }
}

# done_already OUTPUT INPUT...: OUTPUT exists and is newer than every INPUT (never in a dry run)
done_already() {
  local out=$1 input; shift
  [ "$LSKD_DRY_RUN" != 1 ] && [ -e "$out" ] || return 1
  for input in "$@"; do [ "$out" -nt "$input" ] || return 1; done
}

# train_model BIN_DIR SAVE_DIR UPDATES SEED FAIRSEQ_ARGS...: fairseq-train (a killed run resumes
# from checkpoint_last.pt); SAVE_DIR/trained records the updates, so a finished run is skipped.
train_model() {
  local bin=$1 dir=$2 updates=$3 seed=$4; shift 4
  if [ "$LSKD_DRY_RUN" != 1 ] && [ "$(cat "$dir/trained" 2>/dev/null)" = "$updates" ]; then
    say "$dir: already trained ($updates updates), skipping"; return 0
  fi
  say "$dir: training (log: $dir/train.log); a killed run resumes from checkpoint_last.pt"
  invoke "$dir/train.log" fairseq-train "$bin" --user-dir "$LSKD_ROOT/fairseq_plugins" $(device_flag) "$@" \
    "${OPTIMIZATION[@]}" --max-update "$updates" --save-dir "$dir" --no-epoch-checkpoints \
    --save-interval-updates 200 --keep-interval-updates 1 --seed "$seed" --num-workers 0 \
    --log-format simple --log-interval 50 || return 1
  [ "$LSKD_DRY_RUN" = 1 ] || echo "$updates" > "$dir/trained"
}

# train_teacher BIN_DIR SAVE_DIR LABEL_SMOOTHING UPDATES
train_teacher() {
  train_model "$1" "$2" "$4" 1 "${TEACHER_ARCH[@]}" --criterion label_smoothed_cross_entropy --label-smoothing "$3"
}

# train_student BIN_DIR SAVE_DIR UPDATES SEED [CRITERION_ARGS...]: the student architecture, without
# label smoothing of its own (so the teacher is the only difference between students); no criterion
# arguments = cross-entropy on BIN_DIR's targets (gold data, or a distilled corpus).
train_student() {
  local bin=$1 dir=$2 updates=$3 seed=$4; shift 4
  [ $# -gt 0 ] || set -- --criterion label_smoothed_cross_entropy
  train_model "$bin" "$dir" "$updates" "$seed" "${STUDENT_ARCH[@]}" "$@" --label-smoothing 0
}

# word_kd_args TEACHER_CHECKPOINT TEMPERATURE ALPHA: criterion arguments of an online word-level KD student
word_kd_args() {
  echo --criterion label_smoothed_cross_entropy_with_kd --teacher-path "$1" --kd-temperature "$2" --kd-alpha "$3"
}

# distill_corpus TEACHER_DIR DATA_DIR OUT_DIR BEAM: sequence-level KD data from TEACHER_DIR/checkpoint_last.pt
distill_corpus() {
  local teacher=$1 data=$2 out=$3 beam=$4
  if done_already "$out/distill.json" "$teacher/checkpoint_last.pt"; then
    say "$out: already distilled, skipping"; return 0
  fi
  say "$out: decoding the training sources with $teacher (beam $beam; log: $out.log)"
  invoke "$out.log" lskd-distill-corpus --data "$data" --teacher-path "$teacher/checkpoint_last.pt" --out "$out" \
    --beam "$beam" --batch-size 128 --workers 1 --overwrite $(gpu_flag) || return 1
  say "$out: $(tail -n 1 "$out.log" 2>/dev/null)"
}

# evaluate_bleu RUN_DIR DATA_DIR BEAM: decode the test split with RUN_DIR/checkpoint_last.pt
evaluate_bleu() {
  local dir=$1 data=$2 beam=$3
  if done_already "$dir/eval/bleu-test.json" "$dir/checkpoint_last.pt"; then
    say "$dir: already scored, skipping"; return 0
  fi
  invoke "$dir/eval.log" lskd-eval bleu --checkpoint "$dir/checkpoint_last.pt" --data "$data" --split test \
    --beam "$beam" --out "$dir/eval" $(gpu_flag) || return 1
  say "$dir: $(grep -m 1 '^BLEU' "$dir/eval.log" 2>/dev/null)"
}

# analyse_model RUN_DIR DATA_DIR: stability 1 - S, ECE and entropy on the test split
analyse_model() {
  local dir=$1 data=$2
  if done_already "$dir/eval/stability-test.json" "$dir/checkpoint_last.pt"; then
    say "$dir: already analysed, skipping"; return 0
  fi
  invoke "$dir/stability.log" lskd-eval stability --checkpoint "$dir/checkpoint_last.pt" --data "$data" \
    --split test --out "$dir/eval" || return 1
  say "$dir: $(grep -m 1 '^1 - S' "$dir/stability.log" 2>/dev/null)"
}

# score_and_analyse RUN_DIR DATA_DIR BEAM: BLEU on the test split, then stability and calibration
score_and_analyse() { evaluate_bleu "$1" "$2" "$3" && analyse_model "$1" "$2"; }

# penultimate_picture OUT.png DATA_DIR "TOKEN TOKEN TOKEN" CHECKPOINT... : Müller-style projection of
# three target tokens (SentencePiece pieces, e.g. "▁God ▁Lord ▁water")
penultimate_picture() {
  local out=$1 data=$2 tokens; read -r -a tokens <<< "$3"; shift 3
  if done_already "$out" "$@"; then say "$out: already drawn, skipping"; return 0; fi
  invoke "${out%.png}.log" lskd-eval project --checkpoints "$@" --data "$data" --split test \
    --tokens "${tokens[@]}" --out "$out" || return 1
  say "$out"
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

# at_most N: block until fewer than N of this shell's background jobs run (a job pool)
at_most() {
  while [ "$(jobs -rp | wc -l)" -ge "$1" ]; do sleep 2; done
}

# wait_all WHAT [LOG...]: wait for the background jobs, showing progress from the logs every
# minute; fail if any job failed.
wait_all() {
  local what=$1; shift
  local waited=0 log
  while [ -n "$(jobs -rp)" ]; do
    sleep 2; waited=$((waited + 2))
    [ $((waited % 60)) = 0 ] || continue
    for log in "$@"; do
      [ -f "$log" ] && { grep -o 'num_updates[ =][0-9]*' "$log" | tail -n 1 | sed "s|^|   $(dirname "$log"): |"; } || true
    done
  done
  local failed=0 pid
  for pid in "${LSKD_PIDS[@]}"; do wait "$pid" || failed=1; done
  LSKD_PIDS=()
  [ "$failed" = 0 ] || { echo "== $what failed (see the logs above)" >&2; exit 1; }
}

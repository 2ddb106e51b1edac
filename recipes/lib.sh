# Shared stages of the NMT recipes. Sourced after env.sh; every stage is skipped when its output
# exists, so a recipe can be re-run (or resumed after a kill) without redoing finished work.

# One core per job when two jobs run side by side: on this class of machine two single-threaded
# fairseq processes get ~1.3x the throughput of one two-threaded process.
LSKD_THREADS_PER_JOB=${LSKD_THREADS_PER_JOB:-$(( $(nproc) > 2 ? $(nproc) / 2 : 1 ))}
LSKD_DEVICE=${LSKD_DEVICE:-cpu}
device_flag() { [ "$LSKD_DEVICE" = gpu ] || echo --cpu; }

# A small Transformer that learns fast on CPU: 3+3 pre-norm layers, 256 dims, shared embeddings.
TEACHER_ARCH=(--arch transformer --encoder-layers 3 --decoder-layers 3
  --encoder-embed-dim 256 --decoder-embed-dim 256 --encoder-ffn-embed-dim 1024 --decoder-ffn-embed-dim 1024
  --encoder-attention-heads 4 --decoder-attention-heads 4 --share-all-embeddings
  --encoder-normalize-before --decoder-normalize-before --dropout 0.1)
OPTIMIZATION=(--optimizer adam --adam-betas '(0.9,0.98)' --lr 2e-3 --lr-scheduler inverse_sqrt
  --warmup-updates 200 --max-tokens 2048 --required-batch-size-multiple 1)

stage() { printf '\n== %s\n' "$*"; }

# train_teacher BIN_DIR SAVE_DIR LABEL_SMOOTHING UPDATES
train_teacher() {
  local bin=$1 dir=$2 ls=$3 updates=$4
  if [ "$(cat "$dir/trained" 2>/dev/null)" = "$updates" ]; then
    echo "   $dir: already trained ($updates updates), skipping"; return 0
  fi
  mkdir -p "$dir"
  echo "   $dir: training (log: $dir/train.log); a killed run resumes from checkpoint_last.pt"
  OMP_NUM_THREADS=$LSKD_THREADS_PER_JOB MKL_NUM_THREADS=$LSKD_THREADS_PER_JOB \
  fairseq-train "$bin" --user-dir "$LSKD_ROOT/fairseq_plugins" $(device_flag) \
    "${TEACHER_ARCH[@]}" "${OPTIMIZATION[@]}" \
    --criterion label_smoothed_cross_entropy --label-smoothing "$ls" \
    --max-update "$updates" --save-dir "$dir" --no-epoch-checkpoints --save-interval-updates 200 \
    --keep-interval-updates 1 --seed 1 --num-workers 0 --log-format simple --log-interval 50 \
    > "$dir/train.log" 2>&1 || { echo "   $dir: fairseq-train failed; last lines of $dir/train.log:"; tail -n 20 "$dir/train.log"; return 1; }
  echo "$updates" > "$dir/trained"
}

# evaluate_bleu RUN_DIR DATA_DIR BEAM: decode the test split with RUN_DIR/checkpoint_last.pt
evaluate_bleu() {
  local dir=$1 data=$2 beam=$3
  if [ "$dir/eval/bleu-test.json" -nt "$dir/checkpoint_last.pt" ]; then
    echo "   $dir: already scored, skipping"; return 0
  fi
  OMP_NUM_THREADS=$LSKD_THREADS_PER_JOB MKL_NUM_THREADS=$LSKD_THREADS_PER_JOB \
  lskd-eval bleu --checkpoint "$dir/checkpoint_last.pt" --data "$data" --split test --beam "$beam" \
    --out "$dir/eval" $([ "$LSKD_DEVICE" = gpu ] && echo --gpu) > "$dir/eval.log" 2>&1 \
    || { echo "   $dir: evaluation failed:"; tail -n 20 "$dir/eval.log"; return 1; }
  echo "   $dir: $(grep -m 1 '^BLEU' "$dir/eval.log")"
}

# wait_all WHAT [LOG...]: wait for this shell's background jobs, showing progress from the logs
# every minute; fail if any job failed.
wait_all() {
  local what=$1; shift
  local pids; pids=$(jobs -p)
  local waited=0
  while [ -n "$(jobs -rp)" ]; do
    sleep 2; waited=$((waited + 2))
    [ $((waited % 60)) = 0 ] || continue
    for log in "$@"; do
      [ -f "$log" ] && { grep -o 'num_updates[ =][0-9]*' "$log" | tail -n 1 | sed "s|^|   $(dirname "$log"): |"; } || true
    done
  done
  local failed=0
  for pid in $pids; do wait "$pid" || failed=1; done
  [ "$failed" = 0 ] || { echo "== $what failed (see the logs above)" >&2; exit 1; }
}

# analyse_teacher RUN_DIR DATA_DIR: stability 1 - S, ECE and entropy on the test split
analyse_teacher() {
  local dir=$1 data=$2
  if [ "$dir/eval/stability-test.json" -nt "$dir/checkpoint_last.pt" ]; then
    echo "   $dir: already analysed, skipping"; return 0
  fi
  OMP_NUM_THREADS=$LSKD_THREADS_PER_JOB MKL_NUM_THREADS=$LSKD_THREADS_PER_JOB \
  lskd-eval stability --checkpoint "$dir/checkpoint_last.pt" --data "$data" --split test --out "$dir/eval" \
    > "$dir/stability.log" 2>&1 || { echo "   $dir: analysis failed:"; tail -n 20 "$dir/stability.log"; return 1; }
  echo "   $dir: $(grep -m 1 '^1 - S' "$dir/stability.log")"
}

# penultimate_picture OUT.png DATA_DIR "TOKEN TOKEN TOKEN" CHECKPOINT... : Müller-style projection of
# three target tokens (SentencePiece pieces, e.g. "▁God ▁Lord ▁water")
penultimate_picture() {
  local out=$1 data=$2 tokens; read -r -a tokens <<< "$3"; shift 3
  local newer=1
  for ckpt in "$@"; do [ "$out" -nt "$ckpt" ] || newer=0; done
  if [ "$newer" = 1 ]; then echo "   $out: already drawn, skipping"; return 0; fi
  lskd-eval project --checkpoints "$@" --data "$data" --split test --tokens "${tokens[@]}" --out "$out" \
    > "${out%.png}.log" 2>&1 || { echo "   picture failed:"; tail -n 20 "${out%.png}.log"; return 1; }
  echo "   $out"
}

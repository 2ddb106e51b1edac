# Sourced by the recipes: make (once) and activate a virtual environment in the checkout with LSKD
# and its pinned dependencies. Idempotent: re-installs only when setup.py changes or an extra is new.
#   LSKD_VENV    where the environment lives (default: .venv in the checkout)
#   LSKD_PYTHON  interpreter to build it from (default: python3; fairseq wheels exist for 3.11/3.12)
# A GPU user installs their own CUDA torch into the environment first; it is kept (see README).
set -euo pipefail
LSKD_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export LSKD_ROOT
# A dry run (LSKD_DRY_RUN=1: the recipes only print their commands) needs no environment.
if [ "${LSKD_DRY_RUN:-0}" = 1 ]; then return 0; fi
LSKD_VENV=${LSKD_VENV:-$LSKD_ROOT/.venv}
lskd_extras=${1:-}

if [ ! -x "$LSKD_VENV/bin/python" ]; then
  echo "[lskd] creating virtual environment $LSKD_VENV"
  "${LSKD_PYTHON:-python3}" -m venv "$LSKD_VENV"
fi
# The marker holds setup.py's hash and the extras installed so far ("HASH plots,test"): a recipe that
# needs [plots] after the tests installed [test] adds it once, instead of reinstalling every switch.
lskd_hash=$(sha256sum "$LSKD_ROOT/setup.py" | cut -c1-16)
lskd_have_hash="" lskd_have_extras=""
read -r lskd_have_hash lskd_have_extras 2>/dev/null < "$LSKD_VENV/.lskd-installed" || true
lskd_have_extras=${lskd_have_extras#extras=[}; lskd_have_extras=${lskd_have_extras%]}  # the old "extras=[x]" form
lskd_extras=$(printf "%s\n" ${lskd_have_extras//,/ } ${lskd_extras//,/ } | sort -u | paste -sd, -)
if [ "$lskd_have_hash" != "$lskd_hash" ] || [ "$lskd_extras" != "$lskd_have_extras" ]; then
  # torch is named in the same pip command as fairseq, or pip resolves a multi-GB CUDA build.
  # An already installed torch (e.g. a user's CUDA build) is kept at its version.
  lskd_torch=$("$LSKD_VENV/bin/python" -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null || echo 2.13.0)
  echo "[lskd] installing LSKD${lskd_extras:+[$lskd_extras]} and its dependencies into $LSKD_VENV (torch==$lskd_torch)"
  if ! "$LSKD_VENV/bin/python" -m pip install --disable-pip-version-check \
      "torch==$lskd_torch" -e "$LSKD_ROOT${lskd_extras:+[$lskd_extras]}" > "$LSKD_VENV/install.log" 2>&1; then
    tail -n 30 "$LSKD_VENV/install.log"
    echo "[lskd] installation failed; full log: $LSKD_VENV/install.log" >&2
    exit 1
  fi
  echo "$lskd_hash $lskd_extras" > "$LSKD_VENV/.lskd-installed"
fi
export PATH="$LSKD_VENV/bin:$PATH"

#!/usr/bin/env bash
# The test suite, on a fresh machine or an old one: installs what it needs, then runs pytest.
# Extra arguments go to pytest, e.g. `bash recipes/test.sh -m "not slow"` for the fast tests only.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh" plots,test,hf  # plots: the quickstart test runs recipes; hf: Hugging Face teachers
source "$LSKD_ROOT/recipes/fashion_mnist.sh"  # the image-classification tests' data (installed as root)
cd "$LSKD_ROOT"
exec python -m pytest "$@"

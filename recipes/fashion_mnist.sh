# Sourced by test.sh and fmnist_ls_kd.sh: make sure Fashion-MNIST is installed (the Debian package
# dataset-fashion-mnist puts its IDX files in /usr/share/datasets/fashion-mnist). As root with
# apt-get (CI), it installs the package; otherwise it says how. It never fails the caller: tests
# that need the data then skip, naming the command, and lskd-train stops with the same message.
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
    lskd_apt_log=${TMPDIR:-/tmp}/lskd-apt-fashion-mnist.log
    echo "[lskd] installing Fashion-MNIST: apt-get update && apt-get install -y dataset-fashion-mnist (log: $lskd_apt_log)"
    if ! { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        dataset-fashion-mnist; } > "$lskd_apt_log" 2>&1; then
      tail -n 5 "$lskd_apt_log"
      echo "[lskd] could not install dataset-fashion-mnist; the tests that need it will skip" >&2
    fi
  else
    echo "[lskd] Fashion-MNIST not found; install it with: sudo apt-get update && sudo apt-get install dataset-fashion-mnist" >&2
  fi
fi

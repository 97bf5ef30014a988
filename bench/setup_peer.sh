#!/usr/bin/env bash
# Build a separate virtualenv holding the peer, phenaki-pytorch 0.5.0, for side-by-side benchmarks.
# It is never a dependency of tokvid: only bench/peer_harness.py runs inside it.
#
#   bash bench/setup_peer.sh [VENV_DIR]      (default: bench/.peer-venv, gitignored)
#
# Idempotent: a venv that already holds the pinned versions is checked and left alone.
# Pins (see the design notes): CPU torch 2.13.0 (a local wheel here; the constraints file keeps pip
# from swapping it for a CUDA build), transformers 4.57.6 (5.x removed batch_encode_plus, which the
# peer's T5 path calls), torchvision 0.28.0 (pairs with torch 2.13; bench/peer_harness.py copes with
# its CUDA-only C++ ops).
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV_DIR="${1:-$BENCH_DIR/.peer-venv}"
PYTHON="${PYTHON:-python3}"
PEER_PY="$VENV_DIR/bin/python"

pinned_versions_present() {
    [ -x "$PEER_PY" ] || return 1
    "$PEER_PY" - <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version
wanted = {"phenaki-pytorch": "0.5.0", "torch": "2.13.0", "torchvision": "0.28.0", "transformers": "4.57.6"}
try:
    ok = all(version(name).split("+")[0] == pin for name, pin in wanted.items())
except PackageNotFoundError:
    ok = False
sys.exit(0 if ok else 1)
EOF
}

if pinned_versions_present; then
    echo "peer venv $VENV_DIR already has the pinned versions"
else
    if [ ! -x "$PEER_PY" ]; then
        echo "creating venv $VENV_DIR"
        "$PYTHON" -m venv "$VENV_DIR"
    fi
    # CPU torch first, on its own, so the resolver below sees it installed and keeps it
    "$VENV_DIR/bin/pip" install --quiet "torch==2.13.0"
    CONSTRAINTS="$VENV_DIR/peer-constraints.txt"
    printf '%s\n' "torch==2.13.0" "torchvision==0.28.0" "transformers==4.57.6" > "$CONSTRAINTS"
    "$VENV_DIR/bin/pip" install --quiet -c "$CONSTRAINTS" \
        "phenaki-pytorch==0.5.0" "torchvision==0.28.0" "transformers==4.57.6"
    "$VENV_DIR/bin/pip" check
fi

case "$("$PEER_PY" -c 'import torch; print(torch.__version__)')" in
    *+cpu) ;;
    *) echo "warning: the peer venv's torch is not the CPU build; timings would not be comparable" >&2 ;;
esac
# Build the peer's models once (tiny sizes) through the harness, so a broken venv shows up now
"$PEER_PY" "$BENCH_DIR/peer_harness.py" --check
echo "peer venv ready: $PEER_PY"

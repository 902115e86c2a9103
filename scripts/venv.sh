#!/usr/bin/env bash
# Create or reuse .venv in the repository root and install hubaudit into it (editable).
# Sourced by run.sh and test.sh. Installs torch first from TORCH_SPEC (default torch==2.13.0, a CPU
# wheel here) so that no other package pulls a different torch; reinstalls only when pyproject.toml
# or the requested extras change.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
EXTRAS="${1:-}"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "hubaudit: creating $VENV" >&2
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.hubaudit-installed"
hash="$(sha256sum < "$ROOT/pyproject.toml" | cut -c1-16)"
# Up to date when the stamp has this pyproject's hash and every requested extra (a venv set up by
# test.sh, with more extras, also serves run.sh).
have=""
[ -f "$stamp" ] && have="$(cat "$stamp")"
uptodate=1
case "$have" in "$hash extras="*) ;; *) uptodate=0 ;; esac
if [ "$uptodate" = 1 ]; then
  for x in ${EXTRAS//,/ }; do
    case ",${have#*extras=}," in *",$x,"*) ;; *) uptodate=0 ;; esac
  done
fi
if [ "$uptodate" = 0 ]; then
  echo "hubaudit: installing into $VENV (first time: a few minutes)" >&2
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
    "$VENV/bin/python" -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
  fi
  target="$ROOT"
  [ -n "$EXTRAS" ] && target="$ROOT[$EXTRAS]"
  # Keep the torch that is installed: some extras would otherwise pull a newer one (GBs of CUDA).
  constraint="$VENV/.torch-constraint.txt"
  "$VENV/bin/python" -c "import torch; print('torch==' + torch.__version__)" > "$constraint"
  "$VENV/bin/python" -m pip install -q -c "$constraint" -e "$target"
  echo "$hash extras=$EXTRAS" > "$stamp"
fi
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"

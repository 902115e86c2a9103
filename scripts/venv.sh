#!/usr/bin/env bash
# Create or reuse a virtual environment in the repository root and install hubaudit into it (editable),
# at the exact versions of requirements/lock.txt. Sourced by run.sh and test.sh:
#   source scripts/venv.sh "test,quant,space"
# Settings (environment):
#   HUBAUDIT_INSTALL=lock    (default) .venv, every package at its locked version; a package installed
#                            that the lock does not pin is reported (an error when HUBAUDIT_STRICT_LOCK=1)
#   HUBAUDIT_INSTALL=latest  .venv-compat, the newest releases of everything (torch stays as below)
#   HUBAUDIT_WITH="transformers==5.23.0 ..."  .venv-compat, the lock with these packages swapped
#   TORCH_SPEC               the torch requirement (default: the lock's, a CPU wheel on this machine)
# Exports VENV. Reinstalls only when pyproject.toml, the constraints or the requested extras change
# (always in latest mode, to pick up new releases).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EXTRAS="${1:-}"
# The Python the venv is made from: $PYTHON, else python3 when it is 3.11-3.13 (the versions the lock resolves
# on, scripts/lock_pythons.sh), else python3.11 / python3.12 / python3.13 from PATH.
pick_python() {
  local c
  for c in ${PYTHON:-} python3 python3.11 python3.12 python3.13; do
    if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; sys.exit(not ((3, 11) <= sys.version_info[:2] <= (3, 13)))' 2>/dev/null; then
      echo "$c"; return 0
    fi
    if [ -n "${PYTHON:-}" ] && [ "$c" = "$PYTHON" ]; then
      echo "hubaudit: PYTHON=$PYTHON is not Python 3.11, 3.12 or 3.13 (the versions requirements/lock.txt resolves on)" >&2
      return 1
    fi
  done
  echo "hubaudit: needs Python 3.11, 3.12 or 3.13 (found $(python3 --version 2>&1 || echo 'no python3')); install one, or set PYTHON=/path/to/python3.11" >&2
  return 1
}
PY="$(pick_python)" || exit 2
MODE="${HUBAUDIT_INSTALL:-lock}"
WITH="${HUBAUDIT_WITH:-}"
case "$MODE" in lock|latest) ;; *) echo "hubaudit: HUBAUDIT_INSTALL must be lock or latest, got '$MODE'" >&2; exit 2 ;; esac
VENV="$ROOT/.venv"
if [ "$MODE" = latest ] || [ -n "$WITH" ]; then VENV="$ROOT/.venv-compat"; fi
export VENV

if [ ! -x "$VENV/bin/python" ]; then
  echo "hubaudit: creating $VENV" >&2
  "$PY" -m venv "$VENV"
fi
cons="$VENV/.constraints.txt"
swaps=()
for req in $WITH; do swaps+=(--with "$req"); done
[ -n "${TORCH_SPEC:-}" ] && swaps+=(--with "$TORCH_SPEC")
nolock=()
[ "$MODE" = latest ] && nolock=(--no-lock)
"$PY" "$ROOT/scripts/constraints.py" write "$cons" ${swaps[@]+"${swaps[@]}"} ${nolock[@]+"${nolock[@]}"}

stamp="$VENV/.hubaudit-installed"
hash="$(cat "$ROOT/pyproject.toml" "$cons" "$ROOT/requirements/build.txt" | sha256sum | cut -c1-16)"
# Up to date when the stamp has this hash and every requested extra (a venv set up by test.sh, with
# more extras, also serves run.sh).
have=""
[ -f "$stamp" ] && have="$(cat "$stamp")"
uptodate=1
case "$have" in "$hash extras="*) ;; *) uptodate=0 ;; esac
if [ "$uptodate" = 1 ]; then
  for x in ${EXTRAS//,/ }; do
    case ",${have#*extras=}," in *",$x,"*) ;; *) uptodate=0 ;; esac
  done
fi
[ "$MODE" = latest ] && uptodate=0
if [ "$uptodate" = 0 ]; then
  echo "hubaudit: installing into $VENV ($MODE${WITH:+ with $WITH}; first time: a few minutes)" >&2
  pipi() { "$VENV/bin/python" -m pip install -q --progress-bar off "$@"; }
  # pip and setuptools themselves at the lock's versions (latest mode: the newest)
  pipi -c "$cons" --upgrade pip setuptools
  # torch first, so that no other package pulls another build (the lock's version: a CPU wheel here)
  if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
    pipi -c "$cons" "${TORCH_SPEC:-torch}"
  fi
  # Then keep exactly that torch, whatever an extra asks for.
  torch_now="torch==$("$VENV/bin/python" -c "import torch; print(torch.__version__)")"
  "$PY" "$ROOT/scripts/constraints.py" write "$cons.final" ${swaps[@]+"${swaps[@]}"} ${nolock[@]+"${nolock[@]}"} --with "$torch_now"
  target="$ROOT"
  [ -n "$EXTRAS" ] && target="$ROOT[$EXTRAS]"
  upgrade=()
  [ "$MODE" = latest ] && upgrade=(--upgrade --upgrade-strategy eager)
  # Packages without wheels build from source with the locked build tools of requirements/build.txt (their
  # own [build-system] ranges; the lock's setuptools is too new for some); latest mode: their own ranges.
  build=(--build-constraint "$ROOT/requirements/build.txt")
  # latest mode, or pip's build isolation turned off (PIP_NO_BUILD_ISOLATION): no build constraints
  if [ "$MODE" = latest ] || [ -n "${PIP_NO_BUILD_ISOLATION:-}" ]; then build=(); fi
  pipi -c "$cons.final" ${build[@]+"${build[@]}"} ${upgrade[@]+"${upgrade[@]}"} -e "$target"
  if [ "$MODE" = lock ] && [ -z "$WITH" ]; then
    if ! "$PY" "$ROOT/scripts/constraints.py" check "$VENV/bin/python" && [ "${HUBAUDIT_STRICT_LOCK:-0}" = 1 ]; then
      exit 1
    fi
  fi
  echo "$hash extras=$EXTRAS" > "$stamp"
fi
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"

#!/usr/bin/env bash
# Set up .venv at the exact versions of requirements/lock.txt, with the test extras, every quantization
# backend, the Space's packages and Ray (the sweep extra), and Debian's chromium for the browser tests
# when missing; then run the whole test suite (slow tests included).
#   bash test.sh                          # everything, from the lock
#   bash test.sh -m "not slow" -x         # extra arguments go to pytest
#   bash test.sh --latest                 # the newest releases instead of the lock (in .venv-compat)
#   bash test.sh --with transformers==5.23.0   # the lock with one package swapped (in .venv-compat)
set -euo pipefail
cd "$(dirname "$0")"
args=()
while [ "$#" -gt 0 ]; do
  case "$1" in
    --latest) export HUBAUDIT_INSTALL=latest; shift ;;
    --with) export HUBAUDIT_WITH="${HUBAUDIT_WITH:-} $2"; shift 2 ;;
    --with=*) export HUBAUDIT_WITH="${HUBAUDIT_WITH:-} ${1#--with=}"; shift ;;
    *) args+=("$1"); shift ;;
  esac
done
export HUBAUDIT_STRICT_LOCK="${HUBAUDIT_STRICT_LOCK:-1}"
source scripts/venv.sh "test,quant,space,sweep,attacks,docs"
source scripts/chromium.sh
"$VENV/bin/python" -c "import transformers, torch; print(f'hubaudit tests: {\"$VENV\".rsplit(\"/\", 1)[-1]}, transformers {transformers.__version__}, torch {torch.__version__}')"
exec "$VENV/bin/python" -m pytest ${args[@]+"${args[@]}"}

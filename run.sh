#!/usr/bin/env bash
# The main job: set up .venv (the exact versions of requirements/lock.txt), then run hubaudit. With no
# arguments, the offline demo:
#   bash run.sh                                  # build a tiny world and audit it (about 10 min, 2 CPU cores)
#   bash run.sh audit MODEL_DIR --reference ORIGINAL_DIR --backends rtn:4,rtn:8
set -euo pipefail
cd "$(dirname "$0")"
source scripts/venv.sh ""
if [ "$#" -eq 0 ]; then
  set -- demo
fi
exec "$VENV/bin/hubaudit" "$@"

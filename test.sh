#!/usr/bin/env bash
# Set up .venv with the test extras, every quantization backend and the Space's packages (and Debian's
# chromium for the browser tests, when missing), then run the whole test suite (slow tests included).
#   bash test.sh            # everything
#   bash test.sh -m "not slow" -x   # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")"
source scripts/venv.sh "test,quant,space"
source scripts/chromium.sh
exec .venv/bin/python -m pytest "$@"

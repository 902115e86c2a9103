#!/usr/bin/env bash
# Refresh requirements/lock.txt (and space/requirements.txt): install the newest releases of every
# dependency and extra into .venv-compat (torch stays at TORCH_SPEC or the lock's version), run the
# whole test suite there, and only when it passes write the new lock from what was installed.
#   bash scripts/lock.sh                 # extra arguments go to pytest (keep the whole suite for a real lock)
# Then: review `git diff requirements/`, run `bash test.sh` (installs the new lock into .venv), commit.
set -euo pipefail
cd "$(dirname "$0")/.."
bash test.sh --latest "$@"
py=.venv-compat/bin/python
python3 scripts/constraints.py freeze "$py" > requirements/lock.txt.new
mv requirements/lock.txt.new requirements/lock.txt
python3 scripts/constraints.py space "$py" > space/requirements.txt.new
mv space/requirements.txt.new space/requirements.txt
echo "hubaudit: wrote requirements/lock.txt and space/requirements.txt; the suite passed with them" >&2

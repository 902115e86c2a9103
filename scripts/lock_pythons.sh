#!/usr/bin/env bash
# Check that requirements/lock.txt (with every extra) resolves on each Python the two commands accept
# (3.11, 3.12, 3.13; Linux x86_64), to exactly the locked versions: uv resolves hubaudit[test,quant,space,sweep,attacks,docs]
# under the lock as constraints for each Python (a dry run: nothing is installed, no Python of that version
# is needed), and every package it picks must be pinned in the lock (a package only some Python needs gets a
# pin with a marker, such as `audioop-lts==0.2.2 ; python_version >= "3.13"`). CUDA-only packages of torch's
# PyPI build (nvidia-*, triton, cuda-*) are not pinned. Called by .ci/run; about 15 s with an empty cache.
#   bash scripts/lock_pythons.sh             # all three
#   bash scripts/lock_pythons.sh 3.13        # one
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
UV_VERSION="0.13.9"
pythons=("$@")
[ "${#pythons[@]}" -gt 0 ] || pythons=(3.11 3.12 3.13)
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m pip install -q --disable-pip-version-check --target "$tmp/uv" "uv==$UV_VERSION" >/dev/null
python3 "$ROOT/scripts/constraints.py" write "$tmp/lock.txt"
echo "hubaudit[test,quant,space,sweep,attacks,docs] @ file://$ROOT" > "$tmp/req.in"
fail=0
for v in "${pythons[@]}"; do
  if ! (cd "$tmp" && "$tmp/uv/bin/uv" pip compile --no-config --quiet --python-version "$v" \
        --python-platform x86_64-manylinux_2_28 -c "$tmp/lock.txt" --build-constraints "$ROOT/requirements/build.txt" \
        --cache-dir "$tmp/cache" "$tmp/req.in" -o "$tmp/resolved-$v.txt"); then
    echo "hubaudit: the lock does not resolve on Python $v (above: why)" >&2
    fail=1
    continue
  fi
  if ! python3 - "$tmp/resolved-$v.txt" "$ROOT/requirements/lock.txt" "$v" <<'PY'
import re, sys
canon = lambda n: re.sub(r"[-_.]+", "-", n).lower()
def pins(path):
    out = {}
    for line in open(path, encoding="utf-8"):
        line = line.split("#", 1)[0].strip()
        m = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", line)
        if m:
            out[canon(m.group(1))] = m.group(2)
    return out
got, lock, py = pins(sys.argv[1]), pins(sys.argv[2]), sys.argv[3]
cuda = re.compile(r"^(nvidia-.*|triton|cuda-.*)$")
bad = [f"{n}=={v}" for n, v in sorted(got.items()) if not cuda.match(n) and n != "hubaudit" and lock.get(n) != v]
if bad:
    print(f"hubaudit: on Python {py} the lock resolves to packages it does not pin: {', '.join(bad)}; add each to "
          "requirements/lock.txt (with a python_version marker when only that Python needs it)", file=sys.stderr)
    sys.exit(1)
print(f"hubaudit: the lock resolves on Python {py} ({len(got)} packages, all pinned)")
PY
  then fail=1; fi
done
exit "$fail"

#!/usr/bin/env bash
# Debian's chromium for the Space's browser tests (Playwright drives it; it never downloads a browser).
# Sourced by test.sh: installs the package when it is missing and we may (root with apt-get).
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "hubaudit: installing Debian's chromium for the browser tests" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "hubaudit: could not install chromium; the browser tests will fail (apt-get install chromium)" >&2
  else
    echo "hubaudit: chromium is not installed; the browser tests need it (sudo apt-get install chromium)" >&2
  fi
fi

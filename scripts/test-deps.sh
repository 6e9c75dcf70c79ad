#!/usr/bin/env bash
# System packages the tests need beyond Python: headless Chromium (the HTML report test).
set -euo pipefail
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "warning: could not install chromium; the report test will be skipped" >&2
  else
    echo "warning: chromium missing and not root; the report test will be skipped" >&2
  fi
fi

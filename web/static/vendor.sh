#!/usr/bin/env bash
# Vendors the page's two scripts from the npm registry (no Node build step: the files are
# committed and compiled into the binary): htmx and its server-sent-events extension.
#   web/static/vendor.sh    # then commit web/static/*.js
set -euo pipefail
cd "$(dirname "$0")"
HTMX=2.0.11 SSE=2.2.4
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack -q "htmx.org@$HTMX" "htmx-ext-sse@$SSE" >/dev/null)
tar xzf "$tmp/htmx.org-$HTMX.tgz" -C "$tmp" package/dist/htmx.min.js package/LICENSE
cp "$tmp/package/dist/htmx.min.js" htmx.min.js
cp "$tmp/package/LICENSE" htmx.LICENSE
tar xzf "$tmp/htmx-ext-sse-$SSE.tgz" -C "$tmp" package/dist/sse.min.js
cp "$tmp/package/dist/sse.min.js" sse.min.js
echo "htmx $HTMX, htmx-ext-sse $SSE"

#!/usr/bin/env bash
# Lints proto/ with buf and checks wire/JSON compatibility against the committed image of the
# published contract (proto/steer-v1.binpb). After an intended, compatible change, refresh it:
#   buf build proto -o proto/steer-v1.binpb
set -euo pipefail
cd "$(dirname "$0")/.."
BUF=${BUF:-.tools/node_modules/.bin/buf}
if [ ! -x "$BUF" ]; then
  npm install --silent --no-audit --no-fund --prefix .tools @bufbuild/buf >/dev/null
fi
"$BUF" lint proto
"$BUF" breaking proto --against proto/steer-v1.binpb
echo "proto: buf lint and buf breaking passed"

#!/usr/bin/env bash
# The whole test suite: Rust (unit, parity, end-to-end, multi-process), the contract, the
# deployment manifests, the dashboard in a real browser, the Python client, and the fuzz targets.
# Needs: cargo; npm (buf and playwright-core come from the npm registry); Debian's chromium;
# python3 with grpcio, grpcio-tools, protobuf, pytest, kubernetes-validate, pyyaml
# (.ci/run installs them).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --workspace --locked

# cargo-fuzz targets for a fixed time each (FUZZ_SECS, default 30); skipped with a notice where
# no nightly toolchain exists (the stable proptest fallback ran above).
bash scripts/fuzz.sh

# The contract: buf lint, and no wire-breaking change against the published image.
bash scripts/check_proto.sh

# Deployment manifests, validated offline.
bash scripts/check_deploy.sh

# The dashboard in headless Chromium (Debian's /usr/bin/chromium, driven by playwright-core);
# the screenshot lands in artifacts/dashboard.png.
(cd clients/web && npm ci --silent --no-audit --no-fund && STEER_BIN="$PWD/../../target/debug/steer" node --test test/)

# Python client: stubs generated from proto/, tests against a real `steer serve` (tiny model).
python3 clients/python/generate.py
STEER_BIN="$PWD/target/debug/steer" PYTHONPATH="$PWD/clients/python/src" python3 -m pytest -q clients/python/tests

#!/usr/bin/env bash
# The whole test suite: Rust (unit, parity, end-to-end, multi-process), the contract, the
# deployment manifests, the dashboard in a real browser, the Python client, and the fuzz targets.
# Needs: cargo; npm (buf and playwright-core come from the npm registry); Debian's chromium;
# python3 with grpcio, grpcio-tools 1.85.1, protobuf, pytest, kubernetes-validate, pyyaml, setuptools, wheel, openai,
# numpy and gguf (llama.cpp's GGUF reader/writer, for the control-vector round trips); checkov; lm_eval (lm-evaluation-harness,
# its own venv, on PATH); Debian's nginx
# (.ci/run installs them, the Python ones into a venv).
set -euo pipefail
cd "$(dirname "$0")/.."

# Style first (cheap, and a failure here says what to fix): one format (rustfmt.toml) and no
# clippy warnings, on every target.
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings

cargo test --workspace --locked
cat artifacts/soak.txt  # the soak's figures (clients/cli/tests/soak.rs)
# The model's tests again on the AVX2 kernels that AVX2-only hosts run (on an AVX-512 host the
# run above took the 512-bit ones; the kernels' own tests cover both either way): the test
# binaries the run above built, run as cargo runs them, from the package's directory
# (`cargo test -p steer-model` would build its dependencies again, with other features).
cargo test --workspace --locked --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json, sys
found = [m["executable"] for m in map(json.loads, sys.stdin)
         if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]
         and m["manifest_path"].endswith("services/model/Cargo.toml")]
sys.exit("no steer-model test binaries found") if not found else print("\n".join(found))' \
  | (cd services/model && while read -r t; do STEER_NO_AVX512=1 "$t"; done)

# cargo-fuzz targets for a fixed time each (FUZZ_SECS, default 30); skipped with a notice where
# no nightly toolchain exists (the stable proptest fallback ran above).
bash scripts/fuzz.sh

# The contract: buf lint, and no wire-breaking change against the published image.
bash scripts/check_proto.sh

# The dashboard's field numbers are generated from proto/ (and must be current).
python3 scripts/gen_web_fields.py --check

# Deployment manifests, validated offline.
bash scripts/check_deploy.sh

# The dashboard in headless Chromium (Debian's /usr/bin/chromium, driven by playwright-core);
# the screenshot lands in artifacts/dashboard.png.
(cd clients/web && npm ci --silent --no-audit --no-fund && STEER_BIN="$PWD/../../target/debug/steer" node --test test/)

# Python client: installed as a user installs it (clients/python/install.sh: stubs generated from
# proto/ and the wheel built in a temporary copy, the source tree untouched) into a venv of its
# own (seeing the packages of the python3 that runs this, which .ci/run installs into a venv),
# then tested against a real `steer serve` (tiny model).
rm -rf target/py-wheel target/py-venv
python3 -m venv --system-site-packages target/py-venv
# A venv made from a venv's python sees the base interpreter's packages, not that venv's: point
# it at the running python3's site-packages too (numpy, gguf, grpcio from .ci/run's venv).
target/py-venv/bin/python -c 'import sys, sysconfig; print(sys.argv[1], file=open(sysconfig.get_paths()["purelib"] + "/parent-site.pth", "w"))' \
  "$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
before=$(git status --porcelain --ignored clients/python)
PYTHON=target/py-venv/bin/python PIP_ARGS="--no-deps --no-build-isolation" bash clients/python/install.sh
after=$(git status --porcelain --ignored clients/python)
[ "$before" = "$after" ] || { echo "clients/python/install.sh wrote into the source tree:"; diff <(echo "$before") <(echo "$after"); exit 1; }
(cd clients/python/tests && STEER_BIN="$OLDPWD/target/debug/steer" "$OLDPWD/target/py-venv/bin/python" -m pytest -q -p no:cacheprovider .)

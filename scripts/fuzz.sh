#!/usr/bin/env bash
# Runs each cargo-fuzz target for FUZZ_SECS seconds (default 30). cargo-fuzz needs a nightly
# toolchain: where there is none, or cargo-fuzz cannot be installed, this says so and exits 0;
# the stable property tests (proto/tests/wire_props.rs, run by the main suite) always run.
set -uo pipefail
cd "$(dirname "$0")/.."
secs="${FUZZ_SECS:-30}"
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz: SKIPPED: no nightly toolchain here (the stable proptest fallback runs in the main suite)"
    exit 0
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    if ! cargo install --locked cargo-fuzz >/tmp/cargo-fuzz-install.log 2>&1; then
        echo "fuzz: SKIPPED: cargo-fuzz could not be installed (see /tmp/cargo-fuzz-install.log)"
        exit 0
    fi
fi
status=0
for target in tensor_wire generate_request; do
    echo "fuzz: $target for ${secs}s"
    cargo +nightly fuzz run "$target" -- -max_total_time="$secs" -rss_limit_mb=4096 >"/tmp/fuzz-$target.log" 2>&1
    rc=$?
    tail -n 4 "/tmp/fuzz-$target.log"
    if [ "$rc" != 0 ]; then
        echo "fuzz: $target FAILED (rc $rc; crash inputs under fuzz/artifacts/$target)"
        status=1
    fi
done
exit $status

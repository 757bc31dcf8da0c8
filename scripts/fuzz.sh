#!/usr/bin/env bash
# The fuzz targets: always compiled on stable (so a change that breaks them fails here), then,
# where a nightly toolchain and cargo-fuzz exist, each run for FUZZ_SECS seconds (default 30).
# A run fails the suite when libFuzzer writes a crash, leak, timeout or OOM input; where the
# fuzzer itself cannot be built or started (no nightly, cargo-fuzz not installable, too little
# disk for its sanitizer build, a toolchain fault) this says so, shows why, and goes on: the
# stable property tests (proto/tests/wire_props.rs, run by the main suite) always run.
set -uo pipefail
cd "$(dirname "$0")/.."
secs="${FUZZ_SECS:-30}"

echo "fuzz: compiling the targets on stable"
if ! cargo check --quiet --locked --manifest-path fuzz/Cargo.toml --bins; then
    echo "fuzz: FAILED: the fuzz targets do not compile"
    exit 1
fi
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz: SKIPPED running: no nightly toolchain here (the stable proptest fallback runs in the main suite)"
    exit 0
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    if ! cargo install --locked cargo-fuzz >/tmp/cargo-fuzz-install.log 2>&1; then
        echo "fuzz: SKIPPED running: cargo-fuzz could not be installed:"
        tail -n 20 /tmp/cargo-fuzz-install.log
        exit 0
    fi
fi
free_kb=$(df -Pk fuzz | awk 'NR == 2 {print $4}')
if [ "${free_kb:-0}" -lt $((6 * 1024 * 1024)) ]; then
    echo "fuzz: SKIPPED running: $((free_kb / 1024)) MiB free on disk; the sanitizer build needs about 6 GiB"
    exit 0
fi
status=0
for target in tensor_wire generate_request; do
    echo "fuzz: $target for ${secs}s"
    mkdir -p "fuzz/artifacts/$target"
    before=$(ls "fuzz/artifacts/$target" | wc -l)
    cargo +nightly fuzz run "$target" -- -max_total_time="$secs" -rss_limit_mb=4096 >"/tmp/fuzz-$target.log" 2>&1
    rc=$?
    after=$(ls "fuzz/artifacts/$target" | wc -l)
    if [ "$rc" = 0 ]; then
        grep -E "^Done [0-9]+ runs" "/tmp/fuzz-$target.log" || tail -n 2 "/tmp/fuzz-$target.log"
    elif [ "$after" -gt "$before" ]; then
        tail -n 40 "/tmp/fuzz-$target.log"
        echo "fuzz: $target FAILED (rc $rc): libFuzzer wrote $(ls -t "fuzz/artifacts/$target" | head -n 1) under fuzz/artifacts/$target"
        status=1
    else
        tail -n 40 "/tmp/fuzz-$target.log"
        echo "fuzz: SKIPPED $target: cargo fuzz exited with $rc before fuzzing and wrote no input (a build or toolchain fault, shown above)"
    fi
done
exit $status

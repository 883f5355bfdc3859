#!/usr/bin/env bash
# The large scenarios of docs/benchmarks.md: a durable queue holding 10 GB (COUNT messages of
# SIZE bytes, default 10,000 x 1,000,000) and a single message of the maximum size (100 MiB).
# Each starts `keybus serve --data-dir` with one queue, sends with `keybus bench --phases
# send`, then receives and completes everything (`--phases receive`), sampling the broker's
# RSS every 0.5 s; it prints the broker's RSS before, the largest sample and VmHWM.
#
#   scripts/bench-large.sh [deep|max|all]
#
# Environment: KEYBUS_BIN (default target/release/keybus), COUNT, SIZE, WORK (default a new
# temporary directory, removed at the end unless KEEP=1; needs room for the 10 GB).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
WHAT="${1:-all}"
KEYBUS_BIN="${KEYBUS_BIN:-$PWD/target/release/keybus}"
COUNT="${COUNT:-10000}"
SIZE="${SIZE:-1000000}"
WORK="${WORK:-$(mktemp -d -t keybus-large.XXXXXX)}"
PID=""
SAMPLER=""

cleanup() {
    [[ -n "$SAMPLER" ]] && kill "$SAMPLER" 2>/dev/null || true
    if [[ -n "$PID" ]] && kill -0 "$PID" 2>/dev/null; then
        kill -INT "$PID" 2>/dev/null || true
        wait "$PID" 2>/dev/null || true
    fi
    if [[ "${KEEP:-0}" != 1 ]]; then rm -rf "$WORK"; else echo "kept $WORK"; fi
}
trap cleanup EXIT

status_mb() { awk -v k="$2:" '$1 == k { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }

# run NAME MAX_MESSAGE_SIZE MAX_SIZE_MB MESSAGES BODY_BYTES INFLIGHT
run() {
    local name=$1 max_msg=$2 max_mb=$3 n=$4 size=$5 inflight=$6
    local dir="$WORK/$name" cs port
    mkdir -p "$dir"
    cat >"$dir/keybus.toml" <<TOML
[namespace]
name = "keybus-bench"
max_message_size = $max_msg

[[sas_policies]]
name = "RootManageSharedAccessKey"
key = "bench-only-not-a-secret"
rights = ["Manage", "Send", "Listen"]

[[queues]]
name = "bench-1"
lock_duration = "300s"
max_size_in_megabytes = $max_mb
max_message_size = $max_msg
TOML
    "$KEYBUS_BIN" serve --data-dir "$dir/data" --config "$dir/keybus.toml" --amqp-port 0 \
        --http-port 0 >"$dir/serve.log" 2>&1 &
    PID=$!
    for _ in $(seq 300); do grep -q "connection string:" "$dir/serve.log" && break; sleep 0.1; done
    cs=$(sed -n 's/.*connection string: //p' "$dir/serve.log" | head -1)
    [[ -n "$cs" ]] || { tail "$dir/serve.log"; exit 1; }
    local before
    before=$(status_mb "$PID" VmRSS)
    ( max=0; while kill -0 "$PID" 2>/dev/null; do
        r=$(awk '/^VmRSS:/ { print $2 }' "/proc/$PID/status" 2>/dev/null || echo 0)
        (( r > max )) && max=$r && echo "$max" >"$dir/max_rss_kib"
        sleep 0.5
      done ) &
    SAMPLER=$!
    echo "==> $name: $n x $size bytes, $inflight in flight ($(date -u +%Y-%m-%dT%H:%M:%SZ), $(git rev-parse --short HEAD 2>/dev/null || echo unknown))"
    local t0=$SECONDS
    "$KEYBUS_BIN" bench --connection-string "$cs" --broker-pid "$PID" --queues bench-1 \
        --queue-counts 1 --phases send,receive --messages "$n" --size "$size" \
        --connections 1 --inflight "$inflight" --credit "$inflight" --timeout-secs 1800 2>&1 |
        grep -E '^(phase|send|receive)'
    echo "$name: broker RSS before ${before} MB, largest sample $(awk '{ printf "%.1f", $1 / 1024 }' "$dir/max_rss_kib") MB, VmHWM $(status_mb "$PID" VmHWM) MB, data dir peak after send: see above; $((SECONDS - t0)) s"
    kill "$SAMPLER" 2>/dev/null || true
    SAMPLER=""
    kill -INT "$PID"
    wait "$PID" 2>/dev/null || true
    PID=""
    rm -rf "$dir/data"
}

case "$WHAT" in
deep | all) run deep 1048576 12000 "$COUNT" "$SIZE" 8 ;;&
max | all) run max 104857600 1024 1 104857000 1 ;;
deep) ;;
*) echo "usage: $0 [deep|max|all]" >&2; exit 2 ;;
esac

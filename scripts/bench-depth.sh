#!/usr/bin/env bash
# The queue-depth scenario (docs/benchmarks.md): start `keybus serve --data-dir` with one
# queue, fill it with MESSAGES 1 KB messages (`keybus bench --phases depth`: fill rate and
# the broker's RSS), then RESTARTS times: stop the broker (SIGNAL), start it again on the
# same data dir, time process start → `/ready` answering 200, read its RSS, and time a fresh
# connection's first delivery (`keybus bench --phases first-receive`, which completes that
# one message).
#
#   scripts/bench-depth.sh [MESSAGES] [RESTARTS]
#
# Environment: KEYBUS_BIN (default target/release/keybus), DATA_DIR (default a new temporary
# directory, removed at the end unless KEEP=1), AMQP_PORT (5682), HTTP_PORT (5310),
# SIGNAL (INT: a clean shutdown; KILL: a crash), LIMITS (TOML lines for `[limits]`, e.g.
# "body_window_bytes = 8388608").
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
MESSAGES="${1:-1000000}"
RESTARTS="${2:-3}"
KEYBUS_BIN="${KEYBUS_BIN:-$PWD/target/release/keybus}"
AMQP_PORT="${AMQP_PORT:-5682}"
HTTP_PORT="${HTTP_PORT:-5310}"
SIGNAL="${SIGNAL:-INT}"
WORK="$(mktemp -d -t keybus-depth.XXXXXX)"
DATA_DIR="${DATA_DIR:-$WORK/data}"
CONFIG="$WORK/depth.toml"
CS="Endpoint=sb://127.0.0.1:$AMQP_PORT;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=bench-only-not-a-secret;UseDevelopmentEmulator=true;"
PID=""
READY_MS=""

cleanup() {
    if [[ -n "$PID" ]] && kill -0 "$PID" 2>/dev/null; then
        kill -INT "$PID" 2>/dev/null || true
        wait "$PID" 2>/dev/null || true
    fi
    if [[ "${KEEP:-0}" != 1 ]]; then rm -rf "$WORK"; else echo "kept $WORK"; fi
}
trap cleanup EXIT

die() {
    echo "bench-depth: $*" >&2
    [[ -f "$WORK/serve.log" ]] && tail -20 "$WORK/serve.log" >&2
    exit 1
}

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
rss_mb() { awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$PID/status"; }

# Start the broker (PID); READY_MS: milliseconds from process start to /ready answering 200.
start_broker() {
    local t0 t1
    t0=$(now_ms)
    "$KEYBUS_BIN" serve --data-dir "$DATA_DIR" --config "$CONFIG" \
        --amqp-port "$AMQP_PORT" --http-port "$HTTP_PORT" >>"$WORK/serve.log" 2>&1 &
    PID=$!
    until curl -fsS -o /dev/null "http://127.0.0.1:$HTTP_PORT/ready" 2>/dev/null; do
        kill -0 "$PID" 2>/dev/null || die "the broker exited while starting"
        (( $(now_ms) - t0 < 600000 )) || die "not ready after 600 s"
        sleep 0.02
    done
    t1=$(now_ms)
    READY_MS=$(( t1 - t0 ))
}

stop_broker() {
    kill "-$SIGNAL" "$PID"
    wait "$PID" 2>/dev/null || true
    PID=""
}

# 1 KB bodies plus headers: about 1.2 KB of queue size per message, and room to spare.
MB=$(( MESSAGES * 2 / 1024 + 1024 ))
"$KEYBUS_BIN" bench config --queues 1 --queue-max-size-mb "$MB" >"$CONFIG"
if [[ -n "${LIMITS:-}" ]]; then
    # Into the generated [limits] table.
    awk -v extra="$LIMITS" '{ print } /^\[limits\]/ { print extra }' "$CONFIG" >"$CONFIG.new"
    mv "$CONFIG.new" "$CONFIG"
fi
[[ -x "$KEYBUS_BIN" ]] || die "no $KEYBUS_BIN (cargo build --release -p keybus)"

echo "==> depth: $MESSAGES messages, $RESTARTS restarts (SIGNAL=$SIGNAL), data dir $DATA_DIR ($(date -u +%Y-%m-%dT%H:%M:%SZ), $(git rev-parse --short HEAD 2>/dev/null || echo unknown))"
start_broker
echo "first start to /ready: $READY_MS ms"
"$KEYBUS_BIN" bench --connection-string "$CS" --broker-pid "$PID" --queues bench-1 --queue-counts 1 \
    --phases depth --messages "$MESSAGES" --timeout-secs 1200
echo "data dir: $(du -sm "$DATA_DIR" | cut -f1) MB"
for i in $(seq 1 "$RESTARTS"); do
    stop_broker
    start_broker
    echo "restart $i: /ready after $READY_MS ms, broker RSS $(rss_mb) MB"
    "$KEYBUS_BIN" bench --connection-string "$CS" --broker-pid "$PID" --queues bench-1 --queue-counts 1 \
        --phases first-receive
done

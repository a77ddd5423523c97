#!/usr/bin/env bash
# Runs ROUNDS waves of STREAMS concurrent SSE streams through one gate process and prints the
# gate's peak RSS and open file descriptors after each wave: whether memory returns between
# waves, and where it settles.
#
# Usage: bench/rss_rounds.sh [LAMEDUCK] [ROUNDS] [STREAMS] [TOKENS]
# (defaults: target/release/lameduck, 6 rounds, 1000 streams, 30 tokens at 10 tokens/s).
# Build first: cargo build --release -p lameduck && \
#              cargo build --release -p lameduck-gate --example sse_load
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/lameduck}
rounds=${2:-6}
streams=${3:-1000}
tokens=${4:-30}
load=target/release/examples/sse_load
for f in "$bin" "$load"; do
  [ -x "$f" ] || { echo "rss_rounds: $f is not an executable; build it (see the header of $0) or give the path of a lameduck binary" >&2; exit 2; }
done
up=28201 gate=28210 admin=28211

taskset -c 0 "$bin" engine-sim --listen "127.0.0.1:$up" --tokens-per-second 10 --ttft 100ms \
  >/dev/null 2>&1 &
engine_pid=$!
taskset -c 1 "$bin" gate --listen "127.0.0.1:$gate" --admin "127.0.0.1:$admin" \
  --upstream "http://127.0.0.1:$up" >/dev/null 2>&1 &
gate_pid=$!
trap 'kill -9 $gate_pid $engine_pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$admin/ready" >/dev/null && break
  sleep 0.1
done

rss() { awk '/^VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$gate_pid/status"; }
echo "before: rss $(rss) MiB"
for i in $(seq "$rounds"); do
  taskset -c 0 "$load" "http://127.0.0.1:$gate/v1/chat/completions" "$streams" "$tokens" 10 1 \
    >/tmp/rss_rounds.$$.json &
  load_pid=$!
  peak=0
  # Bounded: the load client itself gives up after its streams' length plus a minute.
  while kill -0 "$load_pid" 2>/dev/null; do
    peak=$(awk -v a="$peak" -v b="$(rss)" 'BEGIN { print (b > a ? b : a) }')
    sleep 0.2
  done
  wait "$load_pid"
  sleep 1
  ok=$(python3 -c "import json, sys; print(json.load(open(sys.argv[1]))['streams_ok'])" \
    /tmp/rss_rounds.$$.json)
  echo "round $i: $ok/$streams streams ok, peak rss $peak MiB, idle rss $(rss) MiB," \
    "open fds $(ls "/proc/$gate_pid/fd" | wc -l)"
done
rm -f /tmp/rss_rounds.$$.json

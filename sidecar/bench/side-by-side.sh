#!/usr/bin/env bash
# The sidecar next to nginx as a plain reverse proxy, measured in one run
# (DESIGN.md section 10): the same fake upstream behind both, closed loops at
# 1 and 16 connections, the four targets (upstream direct, sidecar, nginx, and
# the floor: policybind-sidecar's `bare_proxy` example, the sidecar's own
# stack with no policy work) taking turns in 5-second slices for DURATION
# seconds each, and each proxy's CPU time per request from /proc. nginx runs unprivileged on loopback with the
# config next to this script (upstream keep-alive, no access log, one worker per
# core).
#
#   DURATION=120 bash sidecar/bench/side-by-side.sh
#   SIDECAR_ARGS="--workers 1" bash sidecar/bench/side-by-side.sh   # one worker thread
#   PROFILE=dist bash sidecar/bench/side-by-side.sh   # the LTO build (Cargo.toml)
#
# Needs a release build (cargo build --release -p policybind -p policybind-sidecar
# --bins --example bare_proxy) and nginx (apt-get install -y nginx).
set -euo pipefail
cd "$(dirname "$0")/../.."
target="${CARGO_TARGET_DIR:-target}/${PROFILE:-release}"
duration="${DURATION:-60}"
work="$(mktemp -d /tmp/pb-side-by-side.XXXXXX)"
chmod 0777 "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 1
  rm -rf "$work"   # the audit trail of a long run is hundreds of megabytes
}
trap cleanup EXIT

"$target/fake-upstream" --listen 127.0.0.1:18000 --no-record > "$work/upstream.log" &
pids+=($!)
env RUST_LOG=warn ${SIDECAR_ENV:-} "$target/policybind" serve --config sidecar/bench --upstream http://127.0.0.1:18000 \
  --audit-dir "$work/audit" --listen 127.0.0.1:18080 --health-listen 127.0.0.1:18081 \
  --no-decide-api ${SIDECAR_ARGS:-} > "$work/sidecar.log" 2>&1 &
sidecar=$!
pids+=($sidecar)
# As many worker threads as the sidecar (its --workers default: one per core).
"$target/examples/bare_proxy" 127.0.0.1:18095 http://127.0.0.1:18000 "${FLOOR_WORKERS:-$(nproc)}" > "$work/floor.log" 2>&1 &
floor=$!
pids+=($floor)
sed "s|@WORK@|$work|g" sidecar/bench/nginx.conf > "$work/nginx.conf"
# Unprivileged: as nobody, which owns nothing but the scratch directory.
setpriv --reuid=nobody --regid=nogroup --clear-groups nginx -c "$work/nginx.conf" -e "$work/nginx-error.log" &
nginx=$!
pids+=($nginx)
for _ in $(seq 50); do
  curl -sf http://127.0.0.1:18081/readyz >/dev/null && curl -s -o /dev/null http://127.0.0.1:18090/ &&
    curl -s -o /dev/null http://127.0.0.1:18095/ && break
  sleep 0.2
done
echo "sidecar pid $sidecar, nginx master pid $nginx, $duration s per target and connection count"
"$target/policybind" bench --upstream http://127.0.0.1:18000 --sidecar http://127.0.0.1:18080 \
  --nginx http://127.0.0.1:18090 --floor http://127.0.0.1:18095 --token pb-bench-0000-DEMO-ONLY --connections 1,16 \
  --duration-secs "$duration" --slice-secs 5 --warmup-secs 3 \
  --sidecar-pid "$sidecar" --nginx-pid "$nginx" --floor-pid "$floor" "$@"
echo "sidecar memory: $(grep -E 'VmRSS|VmHWM' /proc/$sidecar/status | tr -s ' ' | tr '\n' ' ')"

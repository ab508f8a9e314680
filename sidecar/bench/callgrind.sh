#!/usr/bin/env bash
# Instructions the sidecar executes per forwarded request, counted by
# valgrind's callgrind: repeatable on a shared machine where wall-clock
# figures are not. The sidecar (`policybind serve`, the bench config, audit
# trail to a directory) runs under callgrind with instrumentation off; after
# WARMUP requests on one keep-alive connection instrumentation is switched on,
# REQUESTS more are sent, and the total is divided by REQUESTS. Background
# work during the measured requests (the audit writer's flushes) is included.
#
#   bash sidecar/bench/callgrind.sh                 # prints instructions/request
#   REQUESTS=5000 KEEP=/tmp/cg bash sidecar/bench/callgrind.sh   # keep the profile
#
# SIDECAR_ARGS adds options (e.g. "--workers 1"); PROFILE picks the build
# (default release; dist for the LTO profile). FLOOR=1 counts the same
# requests through the policy-free floor proxy (policybind-sidecar's
# bare_proxy example) instead. Needs that build (cargo build --release -p
# policybind -p policybind-sidecar --bins --example bare_proxy) and valgrind
# (apt-get install -y valgrind).
set -euo pipefail
cd "$(dirname "$0")/../.."
target="${CARGO_TARGET_DIR:-target}/${PROFILE:-release}"
requests="${REQUESTS:-2000}"
warmup="${WARMUP:-300}"
work="$(mktemp -d /tmp/pb-callgrind.XXXXXX)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 1
  rm -rf "$work"
}
trap cleanup EXIT

"$target/fake-upstream" --listen 127.0.0.1:18100 --no-record > "$work/upstream.log" 2>&1 &
pids+=($!)
if [ -n "${FLOOR:-}" ]; then
  # The floor: the same requests through the policy-free bare_proxy example.
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$work/callgrind.out" \
    "$target/examples/bare_proxy" 127.0.0.1:18180 http://127.0.0.1:18100 "${FLOOR_WORKERS:-$(nproc)}" \
    > "$work/sidecar.log" 2>&1 &
  ready=http://127.0.0.1:18180/
  ok="curl -s -o /dev/null"   # any answer (the upstream's 404 for /) means it is up
else
  env RUST_LOG=warn ${SIDECAR_ENV:-} valgrind --tool=callgrind --instr-atstart=no \
    --callgrind-out-file="$work/callgrind.out" \
    "$target/policybind" serve --config sidecar/bench --upstream http://127.0.0.1:18100 \
    --audit-dir "$work/audit" --listen 127.0.0.1:18180 --health-listen 127.0.0.1:18181 \
    --no-decide-api ${SIDECAR_ARGS:-} > "$work/sidecar.log" 2>&1 &
  ready=http://127.0.0.1:18181/readyz
  ok="curl -sf -o /dev/null"
fi
sidecar=$!
pids+=($sidecar)
for _ in $(seq 300); do
  $ok "$ready" && break
  sleep 0.2
done

python3 - "$warmup" "$requests" "$sidecar" <<'EOF'
import http.client, json, subprocess, sys
warmup, requests, pid = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
body = json.dumps({"model": "gpt-4o-mini", "max_tokens": 16,
    "messages": [{"role": "user", "content": "Summarise the plot of Hamlet in one sentence."}]})
headers = {"authorization": "Bearer pb-bench-0000-DEMO-ONLY", "content-type": "application/json"}
conn = http.client.HTTPConnection("127.0.0.1", 18180)
def send(n):
    for _ in range(n):
        conn.request("POST", "/v1/chat/completions", body, headers)
        r = conn.getresponse()
        r.read()
        if r.status != 200:
            sys.exit(f"status {r.status}")
send(warmup)
subprocess.run(["callgrind_control", "-i", "on", pid], check=True, capture_output=True)
send(requests)
subprocess.run(["callgrind_control", "-d", pid], check=True, capture_output=True)
subprocess.run(["callgrind_control", "-i", "off", pid], check=True, capture_output=True)
EOF

sleep 1
out="$(ls -t "$work"/callgrind.out* | head -1)"
total="$(callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ && !done {gsub(",","",$1); print $1; done=1}')"
echo "requests $requests, instructions $total, per request $((total / requests))"
if [ -n "${KEEP:-}" ]; then cp "$out" "$KEEP"; echo "profile kept in $KEEP"; fi

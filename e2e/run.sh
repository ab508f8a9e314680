#!/usr/bin/env bash
# Run PolicyBind's end-to-end suite against a real API server.
#
#   e2e/run.sh                 out-of-cluster, against $KUBECONFIG; if no cluster is
#                              reachable and `kind` exists, creates a kind cluster
#   e2e/run.sh --bare          out-of-cluster, against a bare control plane this script
#                              starts (etcd + kube-apiserver + kube-controller-manager,
#                              no nodes) from $POLICYBIND_E2E_BIN_DIR (default
#                              ~/.cache/policybind/e2e-bin) or PATH
#   e2e/run.sh --in-cluster    build the image, load it into kind, `helm install` the
#                              chart, run the suite in-cluster mode
#
# Extra arguments after `--` go to the test binaries (e.g. `-- token_accepted`).
# Environment: see e2e/README.md. Exit status: the suite's.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

MODE=out-of-cluster
BARE=0
TEST_ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --bare) BARE=1 ;;
    --in-cluster) MODE=in-cluster ;;
    --) shift; TEST_ARGS=("$@"); break ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

KIND_CLUSTER=${POLICYBIND_E2E_KIND_CLUSTER:-policybind-e2e}
WORK=$(mktemp -d -t policybind-e2e-XXXXXX)
CREATED_KIND=0
PIDS=()

cleanup() {
  status=$?
  if [ "$MODE" = out-of-cluster ] && [ -n "${KUBECONFIG:-}" ]; then
    # The webhook registers itself by URL; never leave a registration pointing
    # at a process that is gone (its Fail policy would block policy changes).
    kubectl delete validatingwebhookconfiguration,mutatingwebhookconfiguration \
      policybind-e2e-webhook --ignore-not-found >/dev/null 2>&1 || true
  fi
  # Reverse start order (controller manager, API server, etcd); a process that
  # does not stop within 10 s is killed.
  for ((i=${#PIDS[@]}-1; i>=0; i--)); do
    pid=${PIDS[$i]}
    if [ "$pid" = apiserver ]; then pid=$(cat "$WORK/kube-apiserver.pid" 2>/dev/null || true); fi
    [ -n "$pid" ] || continue
    kill "$pid" 2>/dev/null || continue
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  if [ "$CREATED_KIND" = 1 ] && [ "${POLICYBIND_E2E_KEEP:-}" != 1 ]; then
    kind delete cluster --name "$KIND_CLUSTER" >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
  exit "$status"
}
trap cleanup EXIT INT TERM

need() { command -v "$1" >/dev/null 2>&1 || { echo "e2e: $1 is required for this mode" >&2; exit 2; }; }
BIN_DIR=${POLICYBIND_E2E_BIN_DIR:-$HOME/.cache/policybind/e2e-bin}
bin() { # a control-plane binary from $BIN_DIR, else PATH
  if [ -x "$BIN_DIR/$1" ]; then
    echo "$BIN_DIR/$1"
  elif command -v "$1" >/dev/null 2>&1; then
    command -v "$1"
  else
    echo "e2e: $1 not found in $BIN_DIR nor PATH (see e2e/README.md)" >&2
    exit 2
  fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start_bare_control_plane() {
  local etcd apiserver kcm etcd_port peer_port api_port
  etcd_port=$(free_port); peer_port=$(free_port); api_port=$(free_port)
  etcd=$(bin etcd); apiserver=$(bin kube-apiserver)
  kcm=$(bin kube-controller-manager 2>/dev/null || true)
  need openssl
  mkdir -p "$WORK/etcd" "$WORK/pki"
  openssl genrsa -out "$WORK/sa.key" 2048 2>/dev/null
  openssl rsa -in "$WORK/sa.key" -pubout -out "$WORK/sa.pub" 2>/dev/null
  local token; token=$(openssl rand -hex 16)
  echo "$token,e2e-admin,e2e-admin,system:masters" > "$WORK/tokens.csv"

  "$etcd" --data-dir "$WORK/etcd" --listen-client-urls http://127.0.0.1:$etcd_port \
    --advertise-client-urls http://127.0.0.1:$etcd_port --listen-peer-urls http://127.0.0.1:$peer_port \
    > "$WORK/etcd.log" 2>&1 &
  PIDS+=($!)
  # The API server starts through a script, so that the outage scenario
  # (budgets_proof) can stop it and start it again with the same flags, port,
  # certificates (kept in --cert-dir) and etcd; its pid is in a file.
  cat > "$WORK/kube-apiserver.sh" <<EOF
"$apiserver" --etcd-servers=http://127.0.0.1:$etcd_port --bind-address=127.0.0.1 --secure-port=$api_port \\
  --cert-dir="$WORK/pki" --token-auth-file="$WORK/tokens.csv" --authorization-mode=RBAC \\
  --service-account-issuer=https://kubernetes.default.svc \\
  --service-account-key-file="$WORK/sa.pub" --service-account-signing-key-file="$WORK/sa.key" \\
  --service-cluster-ip-range=10.96.0.0/16 >> "$WORK/kube-apiserver.log" 2>&1 &
echo \$! > "$WORK/kube-apiserver.pid"
EOF
  bash "$WORK/kube-apiserver.sh"
  PIDS+=(apiserver)
  export POLICYBIND_E2E_APISERVER_START="$WORK/kube-apiserver.sh"
  export POLICYBIND_E2E_APISERVER_PIDFILE="$WORK/kube-apiserver.pid"

  cat > "$WORK/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
  - name: bare
    cluster:
      server: https://127.0.0.1:$api_port
      insecure-skip-tls-verify: true
users:
  - name: e2e-admin
    user:
      token: $token
contexts:
  - name: bare
    context: {cluster: bare, user: e2e-admin}
current-context: bare
EOF
  export KUBECONFIG="$WORK/kubeconfig"
  for _ in $(seq 1 60); do
    kubectl get --raw /readyz >/dev/null 2>&1 && break
    sleep 1
  done
  kubectl get --raw /readyz >/dev/null || { tail -20 "$WORK/kube-apiserver.log"; exit 1; }
  if [ -n "$kcm" ]; then
    # Namespace deletion and owner-reference garbage collection need it.
    "$kcm" --kubeconfig="$WORK/kubeconfig" --leader-elect=false \
      --service-account-private-key-file="$WORK/sa.key" --use-service-account-credentials=false \
      --root-ca-file="$WORK/pki/apiserver.crt" \
      --controllers='*,-nodeipam,-nodelifecycle' > "$WORK/kube-controller-manager.log" 2>&1 &
    PIDS+=($!)
  else
    echo "e2e: no kube-controller-manager: scenario namespaces will stay Terminating" >&2
  fi
  echo "e2e: bare control plane up (logs in $WORK)"
}

cluster_reachable() { kubectl version --request-timeout=5s >/dev/null 2>&1; }

ensure_cluster() {
  if [ "$BARE" = 1 ]; then
    start_bare_control_plane
    return
  fi
  if cluster_reachable; then
    echo "e2e: using the cluster in ${KUBECONFIG:-~/.kube/config}"
    return
  fi
  need kind
  echo "e2e: no cluster reachable; creating kind cluster $KIND_CLUSTER"
  kind create cluster --name "$KIND_CLUSTER" --wait 120s
  CREATED_KIND=1
  export KUBECONFIG="$WORK/kind-kubeconfig"
  kind get kubeconfig --name "$KIND_CLUSTER" > "$KUBECONFIG"
}

# kubectl from the binaries directory when PATH has none.
if ! command -v kubectl >/dev/null 2>&1 && [ -x "$BIN_DIR/kubectl" ]; then
  export PATH="$BIN_DIR:$PATH"
fi
need cargo
need kubectl
# The harness renders the chart with real Helm (helm-python-sdk) to take every
# identity and argument from it.
PYTHON=${POLICYBIND_E2E_PYTHON:-python3}
if ! "$PYTHON" -c 'import helm_python, yaml' >/dev/null 2>&1; then
  echo "e2e: installing helm-python-sdk and PyYAML for chart rendering"
  "$PYTHON" -m pip install -q --disable-pip-version-check helm-python-sdk==0.2.2 PyYAML==6.0.3
fi
export POLICYBIND_E2E_PYTHON=$PYTHON
echo "e2e: building policybind and the suite"
cargo build -p policybind
cargo build -p policybind-e2e --tests
export POLICYBIND_BIN=${POLICYBIND_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/debug/policybind}
ensure_cluster
export KUBECONFIG=${KUBECONFIG:-$HOME/.kube/config}

if [ "$MODE" = out-of-cluster ]; then
  # The API server must reach the local webhook. In kind it runs in a
  # container: use the docker network's gateway, which is this host.
  if [ -z "${POLICYBIND_E2E_WEBHOOK_HOST:-}" ] && kubectl config current-context | grep -q '^kind-'; then
    POLICYBIND_E2E_WEBHOOK_HOST=$(docker network inspect kind -f '{{(index .IPAM.Config 0).Gateway}}' 2>/dev/null || true)
    export POLICYBIND_E2E_WEBHOOK_HOST
    echo "e2e: webhook reachable from kind at $POLICYBIND_E2E_WEBHOOK_HOST"
  fi
else
  need docker; need helm
  IMAGE=${POLICYBIND_E2E_IMAGE:-ghcr.io/policybind/policybind:e2e}
  docker build -t "$IMAGE" .
  if kubectl config current-context | grep -q '^kind-'; then
    kind load docker-image "$IMAGE" --name "${KIND_CLUSTER}"
  fi
  RELEASE=${POLICYBIND_E2E_RELEASE:-policybind}
  NAMESPACE=${POLICYBIND_E2E_NAMESPACE:-policybind-system}
  # The OpenReports CRD (a test fixture) before the operator starts: it would
  # otherwise find Reports unserved and not ask again for 5 minutes.
  kubectl apply --server-side -f e2e/fixtures/openreports-crd.yaml
  helm upgrade --install "$RELEASE" charts/policybind --namespace "$NAMESPACE" --create-namespace \
    --set image.repository="${IMAGE%:*}" --set image.tag="${IMAGE##*:}" \
    --set reports.intervalSeconds=5 \
    --set image.pullPolicy=IfNotPresent --wait --timeout 5m
  export POLICYBIND_E2E_RELEASE=$RELEASE POLICYBIND_E2E_NAMESPACE=$NAMESPACE
fi
export POLICYBIND_E2E_MODE=$MODE

mkdir -p target/e2e-logs
rm -f target/e2e-logs/measurements.txt
status=0
# Every scenario but uninstall, in parallel, each in its own namespace, against
# one PolicyBind control plane (one test binary).
THREADS=${POLICYBIND_E2E_THREADS:-6}
if [ "${#TEST_ARGS[@]}" = 0 ]; then
  # The enforcement scenarios measure propagation to a running sidecar against
  # the design target; they run first, on their own, so the timing is the
  # control plane's and not the harness's (a 2-core machine running every
  # scenario at once measures its own contention). Then all the others, and
  # the budgets scenario on its own: its three sidecars saturate a token
  # and report every second, which is load the other scenarios should not
  # share; then the budget proofs one at a time (each saturates a token for
  # over a minute). Then the first run (the NOTES and README steps as
  # written): its `kubectl apply -k examples/` adds cluster-wide policies.
  # Last, in its own test process, the proof that stops the API server.
  cargo test -p policybind-e2e --test scenarios -- --ignored --test-threads "$THREADS" enforcement:: || status=$?
  if [ "$status" = 0 ]; then
    cargo test -p policybind-e2e --test scenarios -- --ignored --test-threads "$THREADS" --skip enforcement:: --skip budgets:: --skip budgets_proof:: --skip first_run:: || status=$?
  fi
  if [ "$status" = 0 ]; then
    cargo test -p policybind-e2e --test scenarios -- --ignored --test-threads "$THREADS" budgets:: || status=$?
  fi
  if [ "$status" = 0 ]; then
    cargo test -p policybind-e2e --test scenarios -- --ignored --test-threads 1 budgets_proof:: --skip budgets_proof::api_server_outage || status=$?
  fi
  if [ "$status" = 0 ]; then
    cargo test -p policybind-e2e --test scenarios -- --ignored --test-threads "$THREADS" first_run:: || status=$?
  fi
  if [ "$status" = 0 ]; then
    cargo test -p policybind-e2e --test scenarios -- --ignored budgets_proof::api_server_outage || status=$?
  fi
else
  cargo test -p policybind-e2e --test scenarios -- --ignored --test-threads "$THREADS" "${TEST_ARGS[@]}" || status=$?
fi
if [ "$status" = 0 ] && [ "${POLICYBIND_E2E_SKIP_UNINSTALL:-}" != 1 ]; then
  POLICYBIND_E2E_UNINSTALL=1 cargo test -p policybind-e2e --test uninstall -- --ignored || status=$?
fi
echo "== measurements (propagation to the sidecar, shared budgets)"
cat target/e2e-logs/measurements.txt 2>/dev/null || echo "(no measurement)"
echo "== process logs in target/e2e-logs/"
exit "$status"

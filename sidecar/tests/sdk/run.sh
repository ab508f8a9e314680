#!/usr/bin/env bash
# The official OpenAI and Anthropic Python SDKs (PyPI, versions pinned in
# requirements.txt) against `policybind serve`, in front of a fake provider
# reached over HTTPS with a test CA. Installs the SDKs into a virtualenv
# (default target/sdk-venv, or $POLICYBIND_SDK_VENV), builds the binaries and
# runs pytest. Extra arguments go to pytest.
#
#   bash sidecar/tests/sdk/run.sh        # from the repository root, or anywhere
set -euo pipefail
cd "$(dirname "$0")/../../.."
target="${CARGO_TARGET_DIR:-target}"
venv="${POLICYBIND_SDK_VENV:-$target/sdk-venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r sidecar/tests/sdk/requirements.txt
cargo build -q -p policybind --bin policybind -p policybind-sidecar --bin fake-upstream
POLICYBIND_BIN="$target/debug/policybind" FAKE_UPSTREAM_BIN="$target/debug/fake-upstream" \
  "$venv/bin/python" -m pytest -q -p no:cacheprovider sidecar/tests/sdk "$@"

#!/usr/bin/env bash
# Lint and render the Helm chart with real Helm (the helm-python-sdk wheel embeds
# Helm's Go SDK; no helm binary needed), parse every rendered document into its
# Kubernetes type and assert its important properties (charts/tests/).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --disable-pip-version-check -r charts/tests/requirements.txt
python3 -m pytest -q -p no:cacheprovider charts/tests "$@"

#!/usr/bin/env python3
"""Render charts/policybind with real Helm (the helm-python-sdk wheel embeds
Helm's Go SDK) and print one JSON object: every rendered document
(`documents`, a list) and the rendered NOTES.txt (`notes`, the text
`helm install` prints).

The e2e harness runs this to take PolicyBind's identities (ServiceAccounts,
RBAC, admission policies) and each Deployment's arguments from exactly what
`helm install` would create, so no scenario passes on rights the chart does not
grant.

    render-chart.py --release policybind-e2e --namespace policybind-e2e-system \
        [--values-json '{"webhook": {"certificate": {"mode": "self-signed"}}}']
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

CHART = pathlib.Path(__file__).resolve().parent.parent / "charts" / "policybind"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--release", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--values-json", default="{}")
    args = parser.parse_args()
    try:
        import helm_python as helm
        import yaml
    except ImportError as error:
        print(
            f"render-chart.py: {error}; install with "
            "`python3 -m pip install helm-python-sdk PyYAML` (e2e/run.sh does)",
            file=sys.stderr,
        )
        return 2
    values = json.loads(args.values_json)
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(values)
        files = chart.render(
            values=values, name=args.release, namespace=args.namespace, is_install=True
        )
    documents = []
    notes = ""
    for path, text in sorted(files.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        for document in yaml.safe_load_all(text):
            if document:
                documents.append(document)
    json.dump({"documents": documents, "notes": notes}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())

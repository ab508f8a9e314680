"""Shared helpers: render the chart with real Helm and parse every document
back into its Kubernetes model class.

A document whose kind the `kubernetes` client models is deserialized into that
class and serialized again; any field the model does not know (a typo such as
`matchExpresions`) is dropped on the way, so the round trip must give back the
original document exactly. Kinds from other projects (cert-manager,
Prometheus Operator) are checked against a short list of expected fields.
"""

from __future__ import annotations

import json
import pathlib
from dataclasses import dataclass, field
from typing import Any

import helm_python as helm
import pytest
import yaml
from kubernetes import client

CHART = pathlib.Path(__file__).resolve().parent.parent / "policybind"
RELEASE = "pb"
NAMESPACE = "policybind-system"

_API = client.ApiClient()

# Kinds without a model in the kubernetes client, with the top-level spec
# fields they may carry.
FOREIGN_KINDS = {
    ("cert-manager.io/v1", "Issuer"): {"selfSigned", "ca", "acme", "vault"},
    ("cert-manager.io/v1", "Certificate"): {
        "secretName", "duration", "renewBefore", "commonName", "dnsNames",
        "privateKey", "issuerRef",
    },
    ("monitoring.coreos.com/v1", "ServiceMonitor"): {
        "selector", "namespaceSelector", "endpoints",
    },
    ("monitoring.coreos.com/v1", "PodMonitor"): {
        "selector", "namespaceSelector", "podMetricsEndpoints",
    },
}


def model_name(api_version: str, kind: str) -> str:
    """`apps/v1` + `Deployment` -> `V1Deployment` (the client's naming)."""
    version = api_version.split("/")[-1]
    return version[0].upper() + version[1:] + kind


def _drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def parse_typed(doc: dict[str, Any]) -> Any:
    """Deserialize into the model class and prove nothing was lost."""
    api_version, kind = doc["apiVersion"], doc["kind"]
    if (api_version, kind) in FOREIGN_KINDS:
        allowed = FOREIGN_KINDS[(api_version, kind)]
        unknown = set(doc.get("spec", {})) - allowed
        assert not unknown, f"{kind} has unexpected spec fields {unknown}"
        assert set(doc) <= {"apiVersion", "kind", "metadata", "spec"}
        return doc
    name = model_name(api_version, kind)
    assert hasattr(client, name), f"no model class {name} for {api_version} {kind}"
    obj = _API.deserialize(json.dumps(doc), name, "application/json")
    assert isinstance(obj, getattr(client, name))
    back = _drop_nulls(_API.sanitize_for_serialization(obj))
    assert back == _drop_nulls(doc), (
        f"{kind}/{doc['metadata'].get('name')}: fields lost in the round trip through "
        f"{name} (unknown or misspelled):\n{json.dumps(_diff(doc, back), indent=1)}"
    )
    return obj


def _diff(original: Any, back: Any, path: str = "") -> list[str]:
    if isinstance(original, dict) and isinstance(back, dict):
        out = []
        for key in original:
            if key not in back:
                out.append(f"{path}.{key} dropped")
            else:
                out += _diff(original[key], back[key], f"{path}.{key}")
        return out
    if isinstance(original, list) and isinstance(back, list):
        out = []
        for i, (a, b) in enumerate(zip(original, back)):
            out += _diff(a, b, f"{path}[{i}]")
        return out
    return [] if original == back else [f"{path}: {original!r} -> {back!r}"]


@dataclass
class Rendered:
    """One rendering of the chart: documents by (kind, name), typed objects,
    raw template output (NOTES.txt) and the values used."""

    values: dict[str, Any]
    files: dict[str, str]
    docs: list[dict[str, Any]] = field(default_factory=list)
    typed: dict[tuple[str, str], Any] = field(default_factory=dict)

    def get(self, kind: str, name: str) -> dict[str, Any]:
        for doc in self.docs:
            if doc["kind"] == kind and doc["metadata"]["name"] == name:
                return doc
        raise KeyError(f"{kind}/{name} not rendered; have {sorted(self.names())}")

    def typed_get(self, kind: str, name: str) -> Any:
        return self.typed[(kind, name)]

    def kinds(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def names(self) -> set[str]:
        return {f"{d['kind']}/{d['metadata']['name']}" for d in self.docs}

    @property
    def notes(self) -> str:
        return self.files["policybind/templates/NOTES.txt"]


@pytest.fixture(scope="session")
def chart():
    with helm.Chart.load(CHART) as loaded:
        yield loaded


@pytest.fixture(scope="session")
def render(chart):
    cache: dict[str, Rendered] = {}

    def _render(values: dict[str, Any] | None = None, namespace: str = NAMESPACE,
                release: str = RELEASE) -> Rendered:
        key = json.dumps([values, namespace, release], sort_keys=True)
        if key not in cache:
            chart.validate_schema(values)
            files = chart.render(values=values, name=release, namespace=namespace,
                                 is_install=True)
            out = Rendered(values=values or {}, files=files)
            for path, text in sorted(files.items()):
                if path.endswith("NOTES.txt"):
                    continue
                for doc in yaml.safe_load_all(text):
                    if doc:
                        out.docs.append(doc)
                        out.typed[(doc["kind"], doc["metadata"]["name"])] = parse_typed(doc)
            cache[key] = out
        return cache[key]

    return _render

"""Real processes for the SDK tests: a fake provider serving HTTPS with a
certificate signed by a test CA (it plays OpenAI and Anthropic), a plain fake
model server (the self-hosted default upstream), and `policybind serve` in
front of both, with the provider keys in a mounted-Secret-style directory.

The SDKs are the official `openai` and `anthropic` packages from PyPI; the
tests change only their `base_url` and `api_key`.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import time
import urllib.request
import ssl

import pytest

POLICYBIND = os.environ.get("POLICYBIND_BIN", "target/debug/policybind")
FAKE_UPSTREAM = os.environ.get("FAKE_UPSTREAM_BIN", "target/debug/fake-upstream")

ALICE = "pb-sdk-alice-0000-TEST-ONLY"
BOB = "pb-sdk-bob-0000-TEST-ONLY"
OPENAI_KEY = "sk-openai-sdk-test"
ANTHROPIC_KEY = "sk-ant-sdk-test"

MANIFESTS = """\
apiVersion: policybind.io/v1alpha1
kind: ModelDeployment
metadata: {{name: gpt-4o, namespace: default}}
spec:
  provider: openai
  model: gpt-4o
  aliases: [text-embedding-3-small]
  endpoint: {provider}/v1
  credentials: {{secretRef: {{name: openai-key}}}}
  owner: platform
  team: platform
  pricing: {{inputPer1kTokensUsd: 0.0025, outputPer1kTokensUsd: 0.01}}
---
apiVersion: policybind.io/v1alpha1
kind: ModelDeployment
metadata: {{name: claude-sonnet, namespace: default}}
spec:
  provider: anthropic
  model: claude-test
  endpoint: {provider}
  credentials: {{secretRef: {{name: anthropic-key}}}}
  owner: platform
  team: platform
  pricing: {{inputPer1kTokensUsd: 0.003, outputPer1kTokensUsd: 0.015}}
---
apiVersion: policybind.io/v1alpha1
kind: ModelDeployment
metadata: {{name: llama, namespace: default}}
spec:
  provider: self-hosted
  model: llama-3-8b
  owner: platform
  team: platform
---
apiVersion: policybind.io/v1alpha1
kind: AccessToken
metadata: {{name: alice, namespace: default}}
spec:
  subject: {{kind: User, name: alice}}
  team: support
  allowedModels: [gpt-4o, text-embedding-3-small, claude-test, llama-3-8b]
  budgets: [{{period: Day, maxCostUsd: 100, timeZone: UTC}}]
---
apiVersion: v1
kind: Secret
metadata: {{name: alice-token, namespace: default}}
stringData: {{token: {alice}}}
---
apiVersion: policybind.io/v1alpha1
kind: AccessToken
metadata: {{name: bob, namespace: default}}
spec:
  subject: {{kind: User, name: bob}}
  team: support
  allowedModels: [llama-3-8b]
---
apiVersion: v1
kind: Secret
metadata: {{name: bob-token, namespace: default}}
stringData: {{token: {bob}}}
---
apiVersion: policybind.io/v1alpha1
kind: AIPolicy
metadata: {{name: sdk, namespace: default}}
spec:
  rules:
    - name: no-secrets
      conditions: {{detected: [SECRET]}}
      action: Deny
      code: SECRET_DETECTED
      message: secrets must not pass
    - name: redact-personal-data
      conditions: {{detected: [EMAIL, PHONE]}}
      action: Redact
    - name: allow-support
      match: {{teams: [support]}}
      action: Allow
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_fake(*args: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([FAKE_UPSTREAM, "--listen", "127.0.0.1:0", *args],
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    assert line.startswith("listening on "), line
    return proc, line.removeprefix("listening on ")


class Provider:
    """The fake provider's control endpoints, over HTTPS trusting the test CA."""

    def __init__(self, url: str, ca: pathlib.Path):
        self.url = url
        self.context = ssl.create_default_context(cafile=str(ca))

    def _call(self, method: str, path: str, body: dict | None = None):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"content-type": "application/json"})
        with urllib.request.urlopen(request, context=self.context) as response:
            text = response.read()
            return json.loads(text) if text else None

    def received(self) -> list[dict]:
        return self._call("GET", "/__received")

    def forget(self) -> None:
        self._call("DELETE", "/__received")

    def behave(self, **behaviour) -> None:
        self._call("POST", "/__behaviour", behaviour)


class Stack:
    def __init__(self, base: str, provider: Provider, audit: pathlib.Path, decide: str):
        self.base = base
        self.provider = provider
        self.audit = audit
        self.decide = decide


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("sdk")
    tls_dir = root / "tls"
    provider_proc, provider_addr = start_fake("--tls-dir", str(tls_dir))
    plain_proc, plain_addr = start_fake()
    provider_url = f"https://{provider_addr}"
    config = root / "config"
    config.mkdir()
    (config / "all.yaml").write_text(MANIFESTS.format(provider=provider_url, alice=ALICE, bob=BOB))
    credentials = root / "credentials"
    for secret, value in [("openai-key", OPENAI_KEY), ("anthropic-key", ANTHROPIC_KEY)]:
        (credentials / secret).mkdir(parents=True)
        (credentials / secret / "api-key").write_text(value + "\n")
    listen, health, decide = free_port(), free_port(), free_port()
    audit = root / "audit"
    serve = subprocess.Popen([
        POLICYBIND, "serve", "--config", str(config), "--upstream", f"http://{plain_addr}",
        "--state-dir", str(root / "state"), "--audit-dir", str(audit),
        "--listen", f"127.0.0.1:{listen}",
        "--health-listen", f"127.0.0.1:{health}", "--decide-listen", f"127.0.0.1:{decide}",
        "--upstream-ca-file", str(tls_dir / "ca.pem"), "--credentials-dir", str(credentials),
    ], env={**os.environ, "RUST_LOG": "warn"})
    deadline = time.time() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{health}/readyz") as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        assert serve.poll() is None, "policybind serve exited"
        assert time.time() < deadline, "policybind serve did not become ready"
        time.sleep(0.1)
    yield Stack(f"http://127.0.0.1:{listen}", Provider(provider_url, tls_dir / "ca.pem"), audit,
                f"http://127.0.0.1:{decide}")
    serve.terminate()
    serve.wait(timeout=10)
    for proc in (provider_proc, plain_proc):
        proc.terminate()
        proc.wait(timeout=10)
    # Every decision above is in a trail that verifies, and no secret is in it.
    verified = subprocess.run([POLICYBIND, "audit", "verify", "--dir", str(audit),
                               "--key", str(audit / "signing-key.pem"),
                               "--key-writers", "standalone/*"],
                              capture_output=True, text=True)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    trail = "".join(p.read_text() for p in audit.glob("**/*.json"))
    for secret in (ALICE, BOB, OPENAI_KEY, ANTHROPIC_KEY):
        assert secret not in trail, "a secret reached the audit trail"


@pytest.fixture(autouse=True)
def fresh_provider(stack):
    stack.provider.behave()
    stack.provider.forget()
    yield
    stack.provider.behave()

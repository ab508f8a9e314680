{
  "format": "policybind-report-signature/v1",
  "algorithm": "Ed25519",
  "keyId": "b1e3ff24afcd9ccb",
  "signed": "eu-ai-act.json",
  "sha256": "587e79a4d3ff5f893259cff525fab3e23cd8b62169e2f86a05ff3f06a3d00524",
  "signature": "w+B5tLxKQLCuIhS9XDpmX23Rt807YN+SIOmKqWhqDC0wnW6UWqaCcJVSFANZv7YsMPjicAEd70O/eB00J4ubCw=="
}

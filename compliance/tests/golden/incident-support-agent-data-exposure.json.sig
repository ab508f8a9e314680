{
  "format": "policybind-report-signature/v1",
  "algorithm": "Ed25519",
  "keyId": "b1e3ff24afcd9ccb",
  "signed": "incident-support-agent-data-exposure.json",
  "sha256": "8e6e2b018c1c13fb238312188a207e73a85cffc9f0224d9a8b8cff5f356b9190",
  "signature": "bUwXC8dyytKydgn7Mz6Y3OAUFbGKy9QY0+gR2P6Gy2Lkm15s26FbDGQa3tEc+3sWZrLZgR5ZzBo9VQkumrZpDw=="
}

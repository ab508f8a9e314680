{
  "format": "policybind-report-signature/v1",
  "algorithm": "Ed25519",
  "keyId": "b1e3ff24afcd9ccb",
  "signed": "incident-support-agent-data-exposure.json",
  "sha256": "36fbfedaf3c9da06615dca4531b9cdbdfe34a2b45ff7590fdbe214b966b75b63",
  "signature": "PjJdvJDI1PZpQkV+qeQdOuYAL1djCibBQxanUjRhHyBvEWGVD8iLy+WxTWmNDdf8iE+Pf1RgcuKmI5j03sguBw=="
}

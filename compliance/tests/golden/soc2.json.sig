{
  "format": "policybind-report-signature/v1",
  "algorithm": "Ed25519",
  "keyId": "b1e3ff24afcd9ccb",
  "signed": "soc2.json",
  "sha256": "edb2e2aab0c2b556e4e29429b45b56e47a532e180af6f05712aac004311b2158",
  "signature": "pRPoAB2r/iD3MWbofsrpx9d6JBhbI5Odkkrq+VV7j/EgyoI01hczpfO/P4gKZ1WL2vDMXYJe+C4RJrj9749RAg=="
}

{
  "format": "policybind-report-signature/v1",
  "algorithm": "Ed25519",
  "keyId": "b1e3ff24afcd9ccb",
  "signed": "soc2.json",
  "sha256": "11a67695752d6943658c3eb9a011f0c650c935e655966807bdd5d63891c28500",
  "signature": "5u3s7ttWr0RHg80eUhgxhVdihj4VAL6M2TJEo+ktu8n5EEDNnsjiB7VCydgckIQyv3mJmOWzK8uRY3JJXnetDg=="
}

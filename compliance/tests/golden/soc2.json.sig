{
  "format": "policybind-report-signature/v1",
  "algorithm": "Ed25519",
  "keyId": "b1e3ff24afcd9ccb",
  "signed": "soc2.json",
  "sha256": "f651f36a115fb0cbc05b07f2bbef5a433c48d66e616a1726f3449d0c186460a5",
  "signature": "DU9oHf70RpywGOmaYiIGKlIAHBH9heVcQXk+oAwJDG50FkmukMGxaIsYCcYeXJK+uXbMQgQd4PfYQMGcXpdWCg=="
}

{
  "format": "policybind-report-signature/v1",
  "algorithm": "Ed25519",
  "keyId": "b1e3ff24afcd9ccb",
  "signed": "nist-ai-rmf.json",
  "sha256": "155646b10ef8d7e7e3f789e5e0e6a16526d2ef05f418dad0f6526a8e5b19949d",
  "signature": "zcbgk+9eWnfj5qXDe6Eq2UninoJb+F86ek7ZJpUcYp2uiilYXw0KHzxwQgSpgszP26uODJBEDNxcSnB3/gqXAA=="
}

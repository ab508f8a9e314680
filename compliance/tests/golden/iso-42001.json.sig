{
  "format": "policybind-report-signature/v1",
  "algorithm": "Ed25519",
  "keyId": "b1e3ff24afcd9ccb",
  "signed": "iso-42001.json",
  "sha256": "cc9554aceb4f20461f0e1d75b5711ce811fbd7ff419bdab3241e11c688b0bef0",
  "signature": "YyYVwuacxFOPhSYDid8FbRQSHAlPdCFrNMOVa7CVKY3pGGH2GgKkXRgUK1jFds/n8ts48WkiumrET9WjI6DdAQ=="
}

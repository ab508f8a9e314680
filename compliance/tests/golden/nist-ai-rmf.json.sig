{
  "format": "policybind-report-signature/v1",
  "algorithm": "Ed25519",
  "keyId": "b1e3ff24afcd9ccb",
  "signed": "nist-ai-rmf.json",
  "sha256": "a7bc66c228d661a5e58cd6101b787eff6f75e53d94b3b8f716609756e4b15acc",
  "signature": "iCxm826CWI9cjNZedQaWn/ydrYNqMUDXljjI4LDmwOAMWp//bBf5DGccXNkrUIQ8hKkJTh1YV6uBKdrC5TB+CA=="
}

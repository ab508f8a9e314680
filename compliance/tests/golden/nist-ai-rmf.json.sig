{
  "format": "policybind-report-signature/v1",
  "algorithm": "Ed25519",
  "keyId": "b1e3ff24afcd9ccb",
  "signed": "nist-ai-rmf.json",
  "sha256": "89a78766c6f47dc52cef4e0e862d768614bc5ebe56e88b85b0f1da8cec19de77",
  "signature": "bC3q38toHUw0TAqitBZ0WjU7dgqgCM7dJzXhnqsmSeYIRHCZmWRqfdE6bwrRw45nb7hRRDPdBX1GOGRFrMp+Aw=="
}

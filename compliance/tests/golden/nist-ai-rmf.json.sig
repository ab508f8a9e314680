{
  "format": "policybind-report-signature/v1",
  "algorithm": "Ed25519",
  "keyId": "b1e3ff24afcd9ccb",
  "signed": "nist-ai-rmf.json",
  "sha256": "0e753617d420513ffdcc7e3a4169c930804dbf06c4ad061f46b984d782bee52e",
  "signature": "aDSAzPQ/aWTjuAquKdGgLsYifMJi4KkJwSL2ti0/WI0hELy1jQChiYpiidh3YviPqNUWsYNwHaT72Dbi/0RJDw=="
}

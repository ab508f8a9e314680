{
  "format": "policybind-report-signature/v1",
  "algorithm": "Ed25519",
  "keyId": "b1e3ff24afcd9ccb",
  "signed": "incident-support-agent-data-exposure.json",
  "sha256": "6a74baa9477e25db7a4fc14b52fb4e1a265fed6e8e1ce06c7b7a8906277002dd",
  "signature": "u0QheKQVBUqkHHSylg9zahS1j5qJW1a3XJX7zwWQ4/r1z5eVq0PSff0IfsVWYfy8MBnB91JGgC4nELBwFSEQCg=="
}

{
  "format": "policybind-report-signature/v1",
  "algorithm": "Ed25519",
  "keyId": "b1e3ff24afcd9ccb",
  "signed": "soc2.json",
  "sha256": "d2bdc65a7619974053dcab6011e70d97b735fe20fdd43a2032125be903b9d79c",
  "signature": "D5IX3YYGYzlLz5JLkxK1fU2ZOM5ko0bAyE2uFh9SUfAw+se0K2KFGm9tp96Tq4TENzjLF66dHEaNJsqiDUR/BQ=="
}

{
  "format": "policybind-report-signature/v1",
  "algorithm": "Ed25519",
  "keyId": "b1e3ff24afcd9ccb",
  "signed": "eu-ai-act.json",
  "sha256": "949b77f1bac55de153b8ddd8a93824dca9aea9e1876eb025b0b51ae6005fd68e",
  "signature": "qftOuXh4qR02xMsTV8s6M3Jtxd8qlSrBQcbyh7wLZ0T/DzEEVlbKlFoTR4HB8mp1MWNfjG0EmKBIMBdrkCr3BQ=="
}

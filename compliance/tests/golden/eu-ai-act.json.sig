{
  "format": "policybind-report-signature/v1",
  "algorithm": "Ed25519",
  "keyId": "b1e3ff24afcd9ccb",
  "signed": "eu-ai-act.json",
  "sha256": "be6f6a42b0411237f3f575264167fc194c2d5a9ec8d740c8571c877f5fa10a82",
  "signature": "0/w9t21UgP1acI9LUlIW3F+sHCqRX31ubwrx53g/Bz7AOV2oYbWRerQY+el7vTiqWEonNUG65Xg/VDAwkF7qDw=="
}

{
  "format": "policybind-report-signature/v1",
  "algorithm": "Ed25519",
  "keyId": "b1e3ff24afcd9ccb",
  "signed": "iso-42001.json",
  "sha256": "05e2281359d9b28439af6604ff88be19aba6110cca2c69bb378abc070b07c0b2",
  "signature": "+xhaCYi2se7UicUwIz4dCkw+/JG7MkZtjLnX906JuhA2340vk+gkPOTlExF8nW+uSrShFtTGwX7A9v04RZmmDg=="
}

{
  "format": "policybind-report-signature/v1",
  "algorithm": "Ed25519",
  "keyId": "b1e3ff24afcd9ccb",
  "signed": "iso-42001.json",
  "sha256": "e84eb9d30197713018295bbb762b1b6006a3c8a20346a1730d67c2044d82ed41",
  "signature": "lmhtCCCxKG1i6DkLjuQLdIPKY0LmW1N6ZW9c+u8Or3jCLwA279uBerEVnwGBsa9By4Th7SE4mjJcDzXHT0XRCg=="
}

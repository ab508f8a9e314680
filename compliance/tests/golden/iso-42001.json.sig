{
  "format": "policybind-report-signature/v1",
  "algorithm": "Ed25519",
  "keyId": "b1e3ff24afcd9ccb",
  "signed": "iso-42001.json",
  "sha256": "3ee05c1e915320547f579e76c91562864831014b3779063715c7e92882e3b273",
  "signature": "iPpaptg7Nlz5kZahVSjLGbSqrxSodnWliJy90hskcCGdZQvIu0lwZu7mEigYKnP8yV3mr9k2GzCn9ne2L/QDBg=="
}

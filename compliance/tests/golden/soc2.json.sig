{
  "format": "policybind-report-signature/v1",
  "algorithm": "Ed25519",
  "keyId": "b1e3ff24afcd9ccb",
  "signed": "soc2.json",
  "sha256": "2358989eeb996c16a1c23da5faf51d21e0afa7fc9cbf0df1576b56650ccc4a69",
  "signature": "NMfO0b8SJtXLfIyWp107epB5EehNdcrzZ+DbeDjgtjvE0o+XitlBkAj0WLu4Jxm36R0tNQ17YUX9aqUymX99BQ=="
}

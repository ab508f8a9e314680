{
  "format": "policybind-report-signature/v1",
  "algorithm": "Ed25519",
  "keyId": "b1e3ff24afcd9ccb",
  "signed": "eu-ai-act.json",
  "sha256": "be60e060b14e79c7cd8a83e045e00ed14b5838957aa084915dec99d9f896ecf4",
  "signature": "ZbEwXniHioPxewfIhO11HuHlkUfPm7uUtgwanJuxVFbw5Ef9sOH9D2SXq/LGn55LvulD6CWxg7L109XuDEfHBw=="
}

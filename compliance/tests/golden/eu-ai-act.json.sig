{
  "format": "policybind-report-signature/v1",
  "algorithm": "Ed25519",
  "keyId": "b1e3ff24afcd9ccb",
  "signed": "eu-ai-act.json",
  "sha256": "4fb099b0c3231954e193298dc0648c470977285c4be0efcb0c51dbf5ab546215",
  "signature": "N/1GH2V3TXsBMEAbRJskJSn5hfP1ssQD5nRQPiaF/8u2iCKPdZxyww5Mm+pudO/jO4opojKyVoXYXeUeposVBA=="
}

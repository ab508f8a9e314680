{
  "format": "policybind-report-signature/v1",
  "algorithm": "Ed25519",
  "keyId": "b1e3ff24afcd9ccb",
  "signed": "eu-ai-act.json",
  "sha256": "fe90ee4da260a10ae09be89e7d9a2c9169ec1270be2b88d88a08c3ba7b42bd9d",
  "signature": "aC1I+2dXIXDtoNObr50x9cG2r92SmOTfp/PNmLKllwBBt9Jp03GgyvDBnYli2YNKe7B0kPxcSOX20cnSIj6UCQ=="
}

{
  "format": "policybind-report-signature/v1",
  "algorithm": "Ed25519",
  "keyId": "b1e3ff24afcd9ccb",
  "signed": "iso-42001.json",
  "sha256": "15ef50f04db8eaffff1ed4910a37eaefafbebee40e27f3c80da8efc8a5472dff",
  "signature": "BxeKw30MsLCFXBRWXK0EyQd/8vDk8U87mGL5bd4eunRTejn+X6Q/Uuo8uhhU4sF52pQhKfy34tH7uNTJ9a/YAw=="
}

{
  "format": "policybind-report-signature/v1",
  "algorithm": "Ed25519",
  "keyId": "b1e3ff24afcd9ccb",
  "signed": "nist-ai-rmf.json",
  "sha256": "9b43d701358d4f91f1f3d2ee8021bdc0eca4568fdb0b7022b4f4157c2b5d22a3",
  "signature": "RT96zxU6NdCaWBWnpM5ZpZGs8Zax5mFbyTDUJh+AJSmPsiUIoF+UcMPTIcTIXjBJ+F9hkwySp0S942bXbTScCA=="
}

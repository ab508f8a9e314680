{
  "format": "policybind-report-signature/v1",
  "algorithm": "Ed25519",
  "keyId": "b1e3ff24afcd9ccb",
  "signed": "nist-ai-rmf.json",
  "sha256": "2b476cf5c27c4ec72d7101bfd72eeb89cf8fa6b811f9f6d415593b7a959953c7",
  "signature": "xscBVfTtHOj5lHWL+ZgzYakXM1uv7swHlrASdifVRia8QSbvhouddSpQl6/yvgYPsZfU7f5SigFUJc2BI/HlCQ=="
}

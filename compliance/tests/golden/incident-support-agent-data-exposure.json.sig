{
  "format": "policybind-report-signature/v1",
  "algorithm": "Ed25519",
  "keyId": "b1e3ff24afcd9ccb",
  "signed": "incident-support-agent-data-exposure.json",
  "sha256": "eff702e151dc0c6e0ddc3fc607e5d4800da3e3b1b47739e3713be9359c50baba",
  "signature": "d972L7lv0Cgdv7fHx5BG9RcLt+zBNYDasR8hDaGQcBFLjb5kmGEfW4uaxSCtdGBs4MzA4fUw5VMvp/aD/jzHCQ=="
}

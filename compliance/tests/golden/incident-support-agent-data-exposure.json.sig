{
  "format": "policybind-report-signature/v1",
  "algorithm": "Ed25519",
  "keyId": "b1e3ff24afcd9ccb",
  "signed": "incident-support-agent-data-exposure.json",
  "sha256": "c5c4678be3a06bbe80ca3b791815dad7ec9d28ea54e56474dc4b0d65f3593adf",
  "signature": "H3QecL4W3kfedX6jz3cXDvgsVLWhS190RDQeqOZ+w4CY5dnjMfQsATtjDzeenaz7mNpUFt/s+Eux0cZ+XE7ACg=="
}

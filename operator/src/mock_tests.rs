//! Reconcilers against a mocked API server.

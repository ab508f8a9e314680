//! End-to-end harness: PolicyBind against a real API server (whatever
//! `KUBECONFIG` points at).
//!
//! Two modes, chosen by `POLICYBIND_E2E_MODE`:
//!
//! - `out-of-cluster` (default): the harness starts `policybind controller` and
//!   `policybind webhook` as local processes, registers the webhook by URL with a
//!   CA it generates, and installs the CRDs itself. This works against a bare
//!   control plane (kube-apiserver + etcd, no nodes): pods are admitted and
//!   stored, they just never run.
//! - `in-cluster`: PolicyBind was installed with `helm install` beforehand; the
//!   harness only checks it is there.
//!
//! In both modes the sidecar of a scenario runs as a local process
//! (`policybind sidecar`) in front of a real upstream on loopback
//! ([`upstream::Upstream`]), reading the policy bundle the operator wrote into
//! the scenario's namespace, exactly as an injected sidecar does.
//!
//! Every scenario ([`scenario`]) gets its own temporary namespace, deleted
//! afterwards (`POLICYBIND_E2E_KEEP=1` keeps it for debugging). Processes are
//! tied to the test process through a pipe, so they end with it even when a
//! test panics ([`process`]).
#![forbid(unsafe_code)]

pub mod apiserver;
pub mod fixtures;
pub mod flows;
pub mod http;
pub mod identity;
pub mod kubelet;
pub mod process;
pub mod scenario;
pub mod settings;
pub mod system;
pub mod upstream;
pub mod writes;

pub use scenario::{Scenario, scenario};
pub use settings::{Mode, Settings};

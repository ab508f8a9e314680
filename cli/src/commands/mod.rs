//! One module per subcommand.
pub mod audit;
pub mod bench;
pub mod controller;
pub mod crds;
pub mod eval;
pub mod metrics;
pub mod serve;
pub mod sidecar;
pub mod test;
pub mod webhook;

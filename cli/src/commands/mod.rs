//! One module per subcommand.
pub mod audit;
pub mod bench;
pub mod check;
pub mod cluster;
pub mod compliance_sources;
pub mod controller;
pub mod crds;
pub mod dashboard;
pub mod eval;
pub mod metrics;
pub mod report;
pub mod serve;
pub mod sidecar;
pub mod test;
pub mod token;
pub mod webhook;

//! One module per subcommand.
pub mod audit;
pub mod controller;
pub mod crds;
pub mod eval;
pub mod test;
pub mod webhook;

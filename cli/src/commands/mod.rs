//! One module per subcommand.
pub mod audit;
pub mod crds;
pub mod eval;
pub mod test;

//! Every end-to-end scenario, in one test binary so one PolicyBind control
//! plane serves them all and they run in parallel, each in its own namespace
//! (`e2e/run.sh` runs them with `--test-threads`). All are `#[ignore]`d: a plain
//! `cargo test` only compiles them.
mod admission;
mod audit;
mod budgets;
mod budgets_proof;
mod check;
mod compliance;
mod dashboard;
mod enforcement;
mod first_run;
mod hostile;
mod install;
mod reports;
mod scopes;

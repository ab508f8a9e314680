//! The PolicyBind decision core.
//!
//! Everything that decides lives here, and nothing here does I/O or reads a
//! clock: the operator, webhook, sidecar and CLI feed it facts and time and act
//! on what it returns. That keeps every decision reproducible (`policybind eval`
//! on a laptop gives the answer the sidecar gave in production, for the same
//! bundle fingerprint) and lets the whole core be tested without a cluster.
//!
//! - [`bundle`]: the serializable input (policies, models, token hashes).
//! - [`compile`]: bundle -> indexed, immutable [`PolicySet`] with a fingerprint.
//! - [`decide`]: request facts -> [`Decision`], in a fixed documented order;
//!   `exclude` (a rule's exceptions) is checked in `exclude`.
//! - [`detect`]: content detectors compiled into one automaton; redaction;
//!   scanning streams.
//! - [`injection`]: the PROMPT_INJECTION classifier (weights compiled in).
//! - [`output`]: rules on responses: redact or block, whole or streamed.
//! - [`expr`]: CEL `when` expressions over the request.
//! - [`charges`]: what a request is charged to (its token, AIBudget scopes).
//! - [`schedule`], [`risk`], [`selector`]: time windows and budget periods, model
//!   risk scoring, label selectors and globs.
//! - [`scope`]: what applies in one namespace (tokens, models, policies).
//! - [`manifest`]: reading the YAML users apply, for offline tools and standalone mode.
//! - [`audit`]: audit records, the hash chain, segments, signatures, verification.
//! - [`route`]: where an enforcement point sends a model's requests.
//! - [`tokens`]: token estimates (tiktoken encodings where public, a heuristic otherwise).
//! - [`codes`]: the table of rationale codes.
//! - [`ident`]: the identifier check every ingress shares (length cap, no control characters).
#![forbid(unsafe_code)]

pub mod audit;
pub mod bundle;
pub mod bundle_codec;
pub mod charges;
pub mod codes;
pub mod compile;
pub mod decide;
pub mod detect;
mod exclude;
pub mod expr;
pub mod ident;
pub mod injection;
pub mod manifest;
pub mod output;
pub mod request;
pub mod risk;
pub mod route;
pub mod schedule;
pub mod scope;
pub mod selector;
pub mod tokens;

pub use bundle::{Bundle, hash_token};
pub use compile::{CompileError, CompileErrors, PolicySet};
pub use decide::AuthError;
pub use detect::Findings;
pub use output::{OutputAction, OutputDecision, OutputPlan, StreamOutput, StreamScanner};
pub use request::{Decision, Obligations, Request, RuleTrace, Stage};

//! PolicyBind compliance: what an auditor takes away.
//!
//! PolicyBind already holds what AI governance frameworks ask for: a registry of
//! models with owners and risk, approvals with named approvers, the policies in
//! force, scoped credentials, incidents, and a verifiable audit trail of every
//! decision. This crate turns that into evidence, control by control, and is pure
//! like the engine: objects, audit records and the time come in, reports come out.
//! Reading a cluster or a directory and writing files is the CLI's business.
//!
//! - [`catalog`]: control catalogs as data (EU AI Act, NIST AI RMF, ISO/IEC 42001
//!   Annex A, SOC 2), versioned, extensible with user files; each control names the
//!   [`evidence::EvidenceKind`]s that support it, or says PolicyBind cannot.
//! - [`evidence`]: the snapshot a report is built from and one check per evidence
//!   kind, each naming the objects, audit record ranges and approvers behind it.
//! - [`gates`]: evidence gates, thresholds on evaluation results that must pass
//!   before a model may be approved ([`gates::evaluate`]).
//! - [`assess`]: a model's compliance per framework, for `status.compliance` and the
//!   `Compliant` condition.
//! - [`report`], [`model_card`], [`incident_report`]: the report models.
//! - [`canonical`], [`signing`]: canonical JSON and detached Ed25519 signatures.
//! - [`html`], [`oscal`]: self-contained HTML and OSCAL Assessment Results.
//! - [`token_text`]: an AccessToken from one plain sentence, deterministically.
#![forbid(unsafe_code)]

pub mod assess;
pub mod canonical;
pub mod catalog;
pub mod evidence;
pub mod gates;
pub mod html;
pub mod incident_report;
pub mod model_card;
pub mod oscal;
pub mod report;
pub mod signing;
pub mod token_text;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A catalog file is not valid.
    #[error("catalog {source_name}: {message}")]
    Catalog {
        source_name: String,
        message: String,
    },
    /// No catalog for the framework asked for.
    #[error("no catalog for framework {0:?} (built in: eu-ai-act, nist-ai-rmf, iso-42001, soc2)")]
    UnknownFramework(String),
    /// A report, signature or incident could not be read or does not fit together.
    #[error("{0}")]
    Invalid(String),
    /// JSON encoding or decoding failed.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
}

impl Error {
    /// Short stable label, for metrics and exit-code mapping.
    pub fn label(&self) -> &'static str {
        match self {
            Error::Catalog { .. } => "catalog",
            Error::UnknownFramework(_) => "unknown_framework",
            Error::Invalid(_) => "invalid",
            Error::Json(_) => "json",
        }
    }
}

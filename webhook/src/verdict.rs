//! The outcome of one admission check, before it becomes an AdmissionResponse and
//! an audit record.

use std::collections::BTreeMap;

use policybind_engine::audit::RecordKind;

/// What a check decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub allowed: bool,
    /// Stable rationale code (engine `codes`), `None` when the review concerned
    /// nothing PolicyBind governs.
    pub code: Option<&'static str>,
    /// The message a denied user sees: what is wrong and what to do.
    pub message: String,
    /// Warnings `kubectl` prints even when allowed.
    pub warnings: Vec<String>,
    /// ModelDeployment the workload declared (`namespace/name`).
    pub model: Option<String>,
    /// Audit record kind (Approval for ApprovalRequest decisions).
    pub record_kind: RecordKind,
    /// Extra facts for the audit record.
    pub detail: BTreeMap<String, String>,
}

impl Verdict {
    /// Allowed, with a code for the record.
    pub fn allow(code: &'static str) -> Self {
        Verdict {
            allowed: true,
            code: Some(code),
            message: String::new(),
            warnings: vec![],
            model: None,
            record_kind: RecordKind::Admission,
            detail: BTreeMap::new(),
        }
    }

    /// Allowed, nothing PolicyBind governs was involved.
    pub fn allow_quietly() -> Self {
        Verdict {
            code: None,
            ..Verdict::allow("")
        }
    }

    /// Denied with a code and a message saying what to do.
    pub fn deny(code: &'static str, message: impl Into<String>) -> Self {
        Verdict {
            allowed: false,
            code: Some(code),
            message: message.into(),
            ..Verdict::allow("")
        }
    }

    pub fn with_model(mut self, model: impl Into<String>) -> Self {
        self.model = Some(model.into());
        self
    }

    pub fn with_detail(mut self, key: &str, value: impl Into<String>) -> Self {
        self.detail.insert(key.to_string(), value.into());
        self
    }
}

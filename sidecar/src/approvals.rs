//! Holding requests for a human decision (effect RequireApproval).
//!
//! A RequireApproval decision is answered at once with a reference; the request
//! itself is not kept. The reference names an ApprovalRequest (kind `Request`,
//! with the token, subject, model and deciding rule). A human approves it by
//! writing `spec.decision` (`kubectl edit` in a cluster, a text editor in
//! standalone mode), and the caller repeats the request with the header
//! `x-policybind-approval: <ref>`: if that ApprovalRequest is Approved for the
//! same token and model and has not expired, the decision becomes Allow with
//! `APPROVAL_GRANTED`.
//!
//! Standalone mode keeps one manifest per reference at `<dir>/<ref>.yaml`, in the
//! same format `kubectl apply` takes, so the file can later be applied to a
//! cluster unchanged. In a cluster the ApprovalRequest objects live in the
//! sidecar's namespace and the webhook checks who may approve them.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use kube::api::{Api, ObjectMeta, PostParams};
use policybind_crds::approval_request::{
    ApprovalPhase, ApprovalRequestStatus, ApprovalTarget, ApprovalTargetKind, DecisionState,
};
use policybind_crds::{ApprovalRequest, ApprovalRequestSpec};

/// What a held request is about.
#[derive(Debug, Clone)]
pub struct HeldRequest {
    pub request_id: String,
    /// Unique id the reference is made from (server-generated).
    pub reference_id: String,
    pub token: String,
    pub subject: Option<String>,
    pub model: String,
    pub policy_rule: Option<String>,
    pub reason: String,
    pub namespace: String,
}

/// State of an approval reference for one token and model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApprovalStatus {
    Approved,
    Pending,
    Rejected,
    Expired,
    /// No such reference, or it was made for another token or model.
    NotFound,
}

#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    #[error("approval store: {0}")]
    Io(#[from] std::io::Error),
    #[error("approval manifest {0}: {1}")]
    Yaml(String, String),
    #[error("approval API: {0}")]
    Kube(#[from] kube::Error),
    #[error("approvals are not configured")]
    Disabled,
}

/// Where approvals are kept.
#[derive(Clone)]
pub enum Approvals {
    Directory(PathBuf),
    Cluster {
        api: Box<Api<ApprovalRequest>>,
        requester: String,
    },
    Disabled,
}

/// Whether a header value can be a reference (a Kubernetes name, no path tricks).
pub fn valid_reference(reference: &str) -> bool {
    !reference.is_empty()
        && reference.len() <= 63
        && reference
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !reference.starts_with('-')
}

/// The reference of a held request.
pub fn reference_for(request_id: &str) -> String {
    let id: String = request_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .take(40)
        .collect();
    format!("apr-{id}")
}

fn manifest(
    held: &HeldRequest,
    reference: &str,
    requester: &str,
    now: DateTime<Utc>,
) -> ApprovalRequest {
    let mut request = ApprovalRequest::new(
        reference,
        ApprovalRequestSpec {
            target: ApprovalTarget {
                kind: ApprovalTargetKind::Request,
                name: None,
                request_id: Some(held.request_id.clone()),
                model: Some(held.model.clone()),
                subject: held.subject.clone(),
                token: Some(held.token.clone()),
                policy_rule: held.policy_rule.clone(),
            },
            requester: requester.to_string(),
            reason: Some(held.reason.clone()),
            expires_at: Some(now + chrono::Duration::days(7)),
            decision: None,
        },
    );
    request.metadata = ObjectMeta {
        name: Some(reference.to_string()),
        namespace: Some(held.namespace.clone()),
        ..Default::default()
    };
    request
}

/// The status of an ApprovalRequest for a given token and model.
pub fn status_of(
    request: &ApprovalRequest,
    token: &str,
    model: &str,
    now: DateTime<Utc>,
) -> ApprovalStatus {
    let target = &request.spec.target;
    if target.kind != ApprovalTargetKind::Request
        || target.token.as_deref() != Some(token)
        || target.model.as_deref() != Some(model)
    {
        return ApprovalStatus::NotFound;
    }
    let phase = request.status.as_ref().and_then(|s| s.phase);
    let decided = request.spec.decision.as_ref().map(|d| d.state);
    match (phase, decided) {
        (Some(ApprovalPhase::Rejected), _) | (_, Some(DecisionState::Rejected)) => {
            ApprovalStatus::Rejected
        }
        (Some(ApprovalPhase::Expired), _) => ApprovalStatus::Expired,
        _ if request.spec.expires_at.is_some_and(|e| now >= e) => ApprovalStatus::Expired,
        (Some(ApprovalPhase::Approved), _) | (_, Some(DecisionState::Approved)) => {
            ApprovalStatus::Approved
        }
        _ => ApprovalStatus::Pending,
    }
}

impl Approvals {
    pub fn enabled(&self) -> bool {
        !matches!(self, Approvals::Disabled)
    }

    /// Holds a request: writes an ApprovalRequest with phase Pending and returns its reference.
    pub async fn hold(
        &self,
        held: &HeldRequest,
        now: DateTime<Utc>,
    ) -> Result<String, ApprovalError> {
        let reference = reference_for(&held.reference_id);
        match self {
            Approvals::Directory(dir) => {
                let mut object = manifest(held, &reference, "policybind-standalone", now);
                object.status = Some(ApprovalRequestStatus {
                    phase: Some(ApprovalPhase::Pending),
                    ..Default::default()
                });
                let yaml = serde_yaml::to_string(&object)
                    .map_err(|e| ApprovalError::Yaml(reference.clone(), e.to_string()))?;
                let text = format!(
                    "# Held by policybind: a request needed approval.\n\
                     # To approve, add to `spec` (indented under it):\n\
                     #   decision:\n#     state: Approved\n#     approver: <your name>\n\
                     # then repeat the request with the header `x-policybind-approval: {reference}`.\n{yaml}"
                );
                tokio::fs::create_dir_all(dir).await?;
                let path = dir.join(format!("{reference}.yaml"));
                let tmp = dir.join(format!(".{reference}.yaml.tmp"));
                if tokio::fs::try_exists(&path).await? {
                    return Err(ApprovalError::Io(std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        format!("{} already exists", path.display()),
                    )));
                }
                tokio::fs::write(&tmp, text).await?;
                tokio::fs::rename(&tmp, &path).await?;
            }
            Approvals::Cluster { api, requester } => {
                let object = manifest(held, &reference, requester, now);
                api.create(&PostParams::default(), &object).await?;
            }
            Approvals::Disabled => return Err(ApprovalError::Disabled),
        }
        Ok(reference)
    }

    /// Looks a reference up for a token and model.
    pub async fn status(
        &self,
        reference: &str,
        token: &str,
        model: &str,
        now: DateTime<Utc>,
    ) -> Result<ApprovalStatus, ApprovalError> {
        if !valid_reference(reference) {
            return Ok(ApprovalStatus::NotFound);
        }
        let object: ApprovalRequest = match self {
            Approvals::Directory(dir) => {
                let path = dir.join(format!("{reference}.yaml"));
                let text = match tokio::fs::read_to_string(&path).await {
                    Ok(t) => t,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return Ok(ApprovalStatus::NotFound);
                    }
                    Err(e) => return Err(e.into()),
                };
                serde_yaml::from_str(&text)
                    .map_err(|e| ApprovalError::Yaml(path.display().to_string(), e.to_string()))?
            }
            Approvals::Cluster { api, .. } => match api.get_opt(reference).await? {
                Some(o) => o,
                None => return Ok(ApprovalStatus::NotFound),
            },
            Approvals::Disabled => return Ok(ApprovalStatus::NotFound),
        };
        Ok(status_of(&object, token, model, now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held() -> HeldRequest {
        HeldRequest {
            request_id: "caller-chosen".into(),
            reference_id: "0123abcd".into(),
            token: "default/alice".into(),
            subject: Some("alice".into()),
            model: "gpt-4o".into(),
            policy_rule: Some("default/p/r".into()),
            reason: "needs approval".into(),
            namespace: "default".into(),
        }
    }

    #[tokio::test]
    async fn held_request_is_pending_until_a_human_approves_it_for_that_token_and_model() {
        let dir = tempfile::tempdir().unwrap();
        let approvals = Approvals::Directory(dir.path().to_path_buf());
        let now = Utc::now();
        let reference = approvals.hold(&held(), now).await.unwrap();
        assert_eq!(reference, "apr-0123abcd");
        let check = |token: &'static str, model: &'static str| {
            let approvals = approvals.clone();
            let reference = reference.clone();
            async move {
                approvals
                    .status(&reference, token, model, now)
                    .await
                    .unwrap()
            }
        };
        assert_eq!(
            check("default/alice", "gpt-4o").await,
            ApprovalStatus::Pending
        );

        let path = dir.path().join(format!("{reference}.yaml"));
        let text = std::fs::read_to_string(&path).unwrap();
        let approved = text.replacen(
            "\nspec:\n",
            "\nspec:\n  decision:\n    state: Approved\n    approver: bob\n",
            1,
        );
        std::fs::write(&path, approved).unwrap();
        assert_eq!(
            check("default/alice", "gpt-4o").await,
            ApprovalStatus::Approved
        );
        assert_eq!(
            check("default/mallory", "gpt-4o").await,
            ApprovalStatus::NotFound
        );
        assert_eq!(
            check("default/alice", "other").await,
            ApprovalStatus::NotFound
        );
    }

    #[tokio::test]
    async fn references_that_could_escape_the_directory_are_never_read() {
        let approvals = Approvals::Directory(PathBuf::from("/tmp"));
        for bad in ["../etc/passwd", "a/b", "", "UPPER", "-x"] {
            assert_eq!(
                approvals.status(bad, "t", "m", Utc::now()).await.unwrap(),
                ApprovalStatus::NotFound
            );
        }
    }
}

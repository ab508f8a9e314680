//! The approval queue: pending ApprovalRequests, each with the exact
//! `kubectl` commands that approve or reject it as the viewer.
//!
//! The webhook requires `spec.decision.approver` to be the user who writes the
//! decision, so the commands name the viewer's own user name: they work when
//! run with the same credentials the viewer logged in with (and the viewer
//! holds `approve` on approvalrequests.policybind.io there).
use kube::ResourceExt;
use policybind_crds::ApprovalRequest;
use policybind_crds::approval_request::{ApprovalPhase, ApprovalTargetKind};
use serde_json::json;

use super::Context;
use crate::html::{escape, table, time};

/// Pending: no decision in the spec and no final phase in the status.
pub fn is_pending(request: &ApprovalRequest) -> bool {
    request.spec.decision.is_none()
        && request
            .status
            .as_ref()
            .and_then(|s| s.phase)
            .is_none_or(|phase| phase == ApprovalPhase::Pending)
}

/// Quote `text` for a POSIX shell: single quotes, with `'` written as `'\''`.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

/// The `kubectl patch` that records `state` (Approved or Rejected) as `approver`.
pub fn decide_command(request: &ApprovalRequest, state: &str, approver: &str) -> String {
    let patch = json!({"spec": {"decision": {
        "state": state,
        "approver": approver,
        "comment": "<why>",
    }}});
    format!(
        "kubectl patch approvalrequest {} -n {} --type merge -p {}",
        shell_quote(&request.name_any()),
        shell_quote(&request.namespace().unwrap_or_default()),
        shell_quote(&patch.to_string())
    )
}

fn target(request: &ApprovalRequest) -> String {
    let target = &request.spec.target;
    let mut parts = vec![match target.kind {
        ApprovalTargetKind::ModelDeployment => "ModelDeployment".to_string(),
        ApprovalTargetKind::Request => "Request".to_string(),
    }];
    for (label, value) in [
        ("", &target.name),
        ("model ", &target.model),
        ("subject ", &target.subject),
        ("rule ", &target.policy_rule),
    ] {
        if let Some(value) = value {
            parts.push(format!("{label}{value}"));
        }
    }
    escape(&parts.join(" "))
}

pub fn render(context: &Context<'_>) -> String {
    let pending: Vec<&ApprovalRequest> = context
        .visible(&context.snapshot.approvals)
        .into_iter()
        .filter(|r| is_pending(r))
        .collect();
    let approver = &context.identity.username;
    let rows: Vec<Vec<String>> = pending
        .iter()
        .map(|request| {
            let created = request
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| escape(&t.0.to_string()));
            vec![
                escape(&request.namespace().unwrap_or_default()),
                escape(&request.name_any()),
                target(request),
                escape(&request.spec.requester),
                escape(request.spec.reason.as_deref().unwrap_or("-")),
                created.unwrap_or_else(|| "-".into()),
                request
                    .spec
                    .expires_at
                    .map(time)
                    .unwrap_or_else(|| "never".into()),
                format!(
                    "<b>Approve</b><pre class=\"approve\">{}</pre><b>Reject</b><pre class=\"reject\">{}</pre>",
                    escape(&decide_command(request, "Approved", approver)),
                    escape(&decide_command(request, "Rejected", approver))
                ),
            ]
        })
        .collect();
    let mut out = format!(
        "<p>{} pending approval request(s). Run a command with the credentials you signed in with: \
         the webhook requires the approver to be the user who writes the decision, refuses \
         self-approval, and checks your <code>approve</code> right on approvalrequests.policybind.io.</p>",
        rows.len()
    );
    out.push_str(&table(
        &[
            "Namespace",
            "Name",
            "Target",
            "Requester",
            "Reason",
            "Created",
            "Expires",
            "Decide",
        ],
        &rows,
        "No pending approval request.",
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Snapshot;
    use crate::views::testing::{as_team_a_viewer, now};

    fn request(namespace: &str, name: &str, decided: bool) -> ApprovalRequest {
        let mut value = json!({
            "apiVersion": "policybind.io/v1alpha1", "kind": "ApprovalRequest",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"target": {"kind": "ModelDeployment", "name": "support-agent"},
                     "requester": "lead@example.com", "reason": "go-live"},
        });
        if decided {
            value["spec"]["decision"] = json!({"state": "Approved", "approver": "board"});
        }
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn pending_requests_get_commands_naming_the_viewer_and_quoted_for_the_shell() {
        let mut snapshot = Snapshot::empty(now());
        snapshot.approvals = vec![
            request("team-a", "go-live", false),
            request("team-a", "already", true),
            request("team-b", "hidden", false),
        ];
        let html = as_team_a_viewer(render, &snapshot);
        assert!(html.contains("1 pending approval request(s)"));
        assert!(html.contains("ModelDeployment support-agent"));
        assert!(!html.contains("hidden") && !html.contains("already"));
        let command = decide_command(&request("team-a", "go-live", false), "Approved", "o'brien");
        assert_eq!(
            command,
            "kubectl patch approvalrequest 'go-live' -n 'team-a' --type merge -p \
             '{\"spec\":{\"decision\":{\"approver\":\"o'\\''brien\",\"comment\":\"<why>\",\"state\":\"Approved\"}}}'"
        );
        assert!(html.contains(&escape(&decide_command(
            &request("team-a", "go-live", false),
            "Rejected",
            "system:serviceaccount:team-a:viewer"
        ))));
    }
}

//! One module per page: a pure function from the snapshot, filtered by what the
//! viewer may see, to the page's HTML body.
use chrono::{DateTime, Utc};
use kube::ResourceExt;
use policybind_engine::audit::AuditRecord;

use crate::auth::{Identity, Shown, Visibility};
use crate::data::Snapshot;

pub mod approvals;
pub mod audit;
pub mod budgets;
pub mod decisions;
pub mod denials;
pub mod incidents;
pub mod models;

/// Everything a page is rendered from.
pub struct Context<'a> {
    pub snapshot: &'a Snapshot,
    /// The namespaces the viewer may see for the page's kind.
    pub visible: &'a Visibility,
    pub identity: &'a Identity,
    pub now: DateTime<Utc>,
}

impl Context<'_> {
    /// Objects in namespaces the viewer may see, by namespace then name.
    pub fn visible<'o, K: ResourceExt>(&self, objects: &'o [K]) -> Vec<&'o K> {
        let mut shown: Vec<&K> = objects
            .iter()
            .filter(|o| self.visible.allows(&o.namespace().unwrap_or_default()))
            .collect();
        shown.sort_by_key(|o| (o.namespace(), o.name_any()));
        shown
    }

    /// Audit records of the namespaces the viewer may see, each namespace's
    /// oldest first (no order across namespaces: sorting 100,000 records per
    /// page view is what the pages avoid).
    pub fn records(&self) -> impl Iterator<Item = (&str, &AuditRecord)> + '_ {
        self.visible_trails()
            .flat_map(|(namespace, trail)| trail.records.iter().map(move |r| (namespace, r)))
    }

    /// The audit trails of the namespaces the viewer may see.
    pub fn visible_trails(&self) -> impl Iterator<Item = (&str, &crate::data::Trail)> + '_ {
        self.snapshot
            .trails
            .iter()
            .filter(|(namespace, _)| self.visible.allows(namespace))
            .map(|(namespace, trail)| (namespace.as_str(), trail.as_ref()))
    }
}

/// The pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    Decisions,
    Denials,
    Approvals,
    Models,
    Budgets,
    Incidents,
    Audit,
}

impl View {
    pub const ALL: [View; 7] = [
        View::Decisions,
        View::Denials,
        View::Approvals,
        View::Models,
        View::Budgets,
        View::Incidents,
        View::Audit,
    ];

    pub fn path(self) -> &'static str {
        match self {
            View::Decisions => "/decisions",
            View::Denials => "/denials",
            View::Approvals => "/approvals",
            View::Models => "/models",
            View::Budgets => "/budgets",
            View::Incidents => "/incidents",
            View::Audit => "/audit",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            View::Decisions => "Decisions over time",
            View::Denials => "Recent denials",
            View::Approvals => "Approval queue",
            View::Models => "Models",
            View::Budgets => "Budgets and burn",
            View::Incidents => "Incidents",
            View::Audit => "Audit trail verification",
        }
    }

    /// The kind whose `list` right decides which namespaces the page shows.
    pub fn shown(self) -> Shown {
        match self {
            View::Decisions | View::Denials | View::Audit => Shown::AuditSegments,
            View::Approvals => Shown::ApprovalRequests,
            View::Models => Shown::ModelDeployments,
            View::Budgets => Shown::AccessTokens,
            View::Incidents => Shown::Incidents,
        }
    }

    /// The page body.
    pub fn render(self, context: &Context<'_>) -> String {
        let body = match self {
            View::Decisions => decisions::render(context),
            View::Denials => denials::render(context),
            View::Approvals => approvals::render(context),
            View::Models => models::render(context),
            View::Budgets => budgets::render(context),
            View::Incidents => incidents::render(context),
            View::Audit => audit::render(context),
        };
        format!(
            "<h1>{}</h1>{}{}{body}",
            self.title(),
            scope_note(context, self.shown()),
            problems(context.snapshot)
        )
    }
}

/// Which namespaces the page covers and why.
fn scope_note(context: &Context<'_>, shown: Shown) -> String {
    let scope = match context.visible {
        Visibility::Cluster => "all namespaces".to_string(),
        Visibility::Namespaces(set) if set.is_empty() => "no namespace".to_string(),
        Visibility::Namespaces(set) => {
            let names: Vec<&str> = set.iter().map(String::as_str).collect();
            format!("namespaces {}", names.join(", "))
        }
    };
    format!(
        "<p class=\"note\" id=\"scope\">Showing {} (where you may {}).</p>",
        crate::html::escape(&scope),
        crate::html::escape(&shown.describe())
    )
}

fn problems(snapshot: &Snapshot) -> String {
    snapshot
        .problems
        .iter()
        .map(|p| {
            format!(
                "<p class=\"banner\">Not shown: {}</p>",
                crate::html::escape(p)
            )
        })
        .collect()
}

/// Fixtures for the page tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::collections::{BTreeMap, BTreeSet};

    use chrono::{DateTime, Duration, Utc};
    use policybind_crds::Effect;
    use policybind_engine::audit::{AuditRecord, Hash256, RecordKind, RecordTime};

    use crate::auth::{Identity, Visibility};

    pub fn now() -> DateTime<Utc> {
        "2026-12-01T12:00:00Z".parse().unwrap()
    }

    pub fn viewer() -> Identity {
        Identity {
            username: "system:serviceaccount:team-a:viewer".into(),
            uid: None,
            groups: vec![],
            extra: BTreeMap::new(),
        }
    }

    pub fn only(namespaces: &[&str]) -> Visibility {
        Visibility::Namespaces(
            namespaces
                .iter()
                .map(|n| n.to_string())
                .collect::<BTreeSet<_>>(),
        )
    }

    /// `page` as team-a's [`viewer`] sees it at [`now`] (team-a visible only).
    pub fn as_team_a_viewer(
        page: fn(&super::Context<'_>) -> String,
        snapshot: &crate::data::Snapshot,
    ) -> String {
        page(&super::Context {
            snapshot,
            visible: &only(&["team-a"]),
            identity: &viewer(),
            now: now(),
        })
    }

    /// A decision record `minutes_ago` before [`now`].
    pub fn record(seq: u64, minutes_ago: i64, effect: Effect, codes: &[&str]) -> AuditRecord {
        AuditRecord {
            seq,
            time: RecordTime::new(now() - Duration::minutes(minutes_ago)),
            writer: "sidecar/team-a/pod-1".into(),
            kind: RecordKind::Decision,
            request_id: Some(format!("req-{seq}")),
            subject: Some("user:dana".into()),
            token_id: None,
            model: Some("gpt-4o".into()),
            namespace: Some("team-a".into()),
            effect: Some(effect),
            policy: None,
            rule: None,
            codes: codes.iter().map(|c| c.to_string()).collect(),
            fingerprint: None,
            prompt_hash: None,
            redacted_prompt: None,
            usage: None,
            detail: BTreeMap::new(),
            prev_hash: Hash256::default(),
            hash: Hash256::default(),
        }
    }
}

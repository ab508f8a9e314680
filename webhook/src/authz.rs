//! Rights the webhook checks with SubjectAccessReviews, on behalf of the user who
//! made the request:
//!
//! - `approve` on `approvalrequests` (deciding an ApprovalRequest);
//! - `exempt` on `modeldeployments` named after the model, in the pod's namespace
//!   (running a model pod without the sidecar in an enforced namespace);
//! - `share` on `modeldeployments`, cluster-wide (registering with `scope: Cluster`);
//! - `create` on `accesstokens` in every namespace an AccessToken's
//!   `spec.additionalNamespaces` names.
//!
//! The first three are not verbs Kubernetes uses itself; RBAC accepts any verb, so
//! a platform team grants them explicitly (see docs/webhook.md) and editing rights
//! alone do not confer them. Each review carries the user exactly as the API
//! server authenticated them (name, groups, uid and extra), so group-based grants
//! count. The webhook's service account needs `create` on
//! `subjectaccessreviews.authorization.k8s.io`.

use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::UserInfo;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::PostParams;
use kube::{Api, Client};

/// Longest wait for one answer: well inside the API server's webhook timeout
/// (3 s), so a slow authorizer produces the webhook's clear message rather than
/// the API server's generic one.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// One right on a `policybind.io` resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub verb: String,
    /// Plural resource name, e.g. `modeldeployments`.
    pub resource: String,
    /// `None`: cluster-wide (only a ClusterRoleBinding grants it).
    pub namespace: Option<String>,
    /// `None`: any object of the resource.
    pub name: Option<String>,
}

impl Access {
    pub fn new(verb: &str, resource: &str) -> Self {
        Access {
            verb: verb.to_string(),
            resource: resource.to_string(),
            namespace: None,
            name: None,
        }
    }

    pub fn in_namespace(mut self, namespace: &str) -> Self {
        self.namespace = Some(namespace.to_string());
        self
    }

    pub fn named(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self
    }

    /// How a message names the right: `verb "exempt" on modeldeployments.policybind.io "chat" in namespace team-a`.
    pub fn describe(&self) -> String {
        let mut out = format!(
            "verb {:?} on {}.{}",
            self.verb,
            self.resource,
            policybind_crds::GROUP
        );
        if let Some(name) = &self.name {
            out.push_str(&format!(" {name:?}"));
        }
        match &self.namespace {
            Some(namespace) => out.push_str(&format!(" in namespace {namespace}")),
            None => out.push_str(" cluster-wide"),
        }
        out
    }
}

/// Answers whether a user holds a right.
pub trait Authorizer: Send + Sync {
    /// `Ok(true)` when `user` holds `access`.
    fn allowed<'a>(
        &'a self,
        user: &'a UserInfo,
        access: &'a Access,
    ) -> BoxFuture<'a, Result<bool, crate::Error>>;
}

/// One check, bounded by [`CHECK_TIMEOUT`].
pub async fn check(
    authorizer: &dyn Authorizer,
    user: &UserInfo,
    access: &Access,
) -> Result<bool, crate::Error> {
    tokio::time::timeout(CHECK_TIMEOUT, authorizer.allowed(user, access))
        .await
        .unwrap_or_else(|_| Err(crate::Error::Timeout("SubjectAccessReview".into())))
}

/// The review sent for a user: the identity exactly as the API server
/// authenticated it (groups, uid and extra included, so group-based grants count).
pub fn access_review(user: &UserInfo, access: &Access) -> SubjectAccessReview {
    SubjectAccessReview {
        metadata: Default::default(),
        spec: SubjectAccessReviewSpec {
            user: user.username.clone(),
            groups: user.groups.clone(),
            uid: user.uid.clone(),
            extra: user.extra.clone(),
            resource_attributes: Some(ResourceAttributes {
                group: Some(policybind_crds::GROUP.into()),
                resource: Some(access.resource.clone()),
                verb: Some(access.verb.clone()),
                namespace: access.namespace.clone(),
                name: access.name.clone(),
                ..Default::default()
            }),
            ..Default::default()
        },
        status: None,
    }
}

/// SubjectAccessReview against the API server.
#[derive(Clone)]
pub struct SubjectAccessReviewer {
    client: Client,
}

impl SubjectAccessReviewer {
    pub fn new(client: Client) -> Self {
        Self { client }
    }
}

impl Authorizer for SubjectAccessReviewer {
    fn allowed<'a>(
        &'a self,
        user: &'a UserInfo,
        access: &'a Access,
    ) -> BoxFuture<'a, Result<bool, crate::Error>> {
        Box::pin(async move {
            let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
            let answer = api
                .create(&PostParams::default(), &access_review(user, access))
                .await
                .map_err(crate::Error::Kube)?;
            Ok(answer.status.map(|s| s.allowed).unwrap_or(false))
        })
    }
}

/// One right held by one user or group, for [`StaticAuthorizer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// A user name, or a group when it starts with `group:`.
    pub subject: String,
    pub verb: String,
    pub resource: String,
    /// `None`: every namespace and cluster-wide (a ClusterRoleBinding).
    pub namespace: Option<String>,
}

/// Fixed grants, matched like RBAC without resource names (tests, benchmarks,
/// standalone runs).
#[derive(Debug, Default, Clone)]
pub struct StaticAuthorizer {
    pub grants: Vec<Grant>,
}

impl StaticAuthorizer {
    /// Grants `verb` on `resource` to `subject` in `namespace` (`None`: everywhere).
    pub fn grant(
        mut self,
        subject: &str,
        verb: &str,
        resource: &str,
        namespace: Option<&str>,
    ) -> Self {
        self.grants.push(Grant {
            subject: subject.to_string(),
            verb: verb.to_string(),
            resource: resource.to_string(),
            namespace: namespace.map(str::to_string),
        });
        self
    }

    fn holds(&self, user: &UserInfo, access: &Access) -> bool {
        let groups = user.groups.iter().flatten();
        self.grants.iter().any(|grant| {
            let subject = match grant.subject.strip_prefix("group:") {
                Some(group) => groups.clone().any(|g| g == group),
                None => user.username.as_deref() == Some(grant.subject.as_str()),
            };
            let scope = match (&grant.namespace, &access.namespace) {
                (None, _) => true,
                (Some(granted), Some(asked)) => granted == asked,
                // A namespaced grant never answers a cluster-wide question.
                (Some(_), None) => false,
            };
            subject && scope && grant.verb == access.verb && grant.resource == access.resource
        })
    }
}

impl Authorizer for StaticAuthorizer {
    fn allowed<'a>(
        &'a self,
        user: &'a UserInfo,
        access: &'a Access,
    ) -> BoxFuture<'a, Result<bool, crate::Error>> {
        let allowed = self.holds(user, access);
        Box::pin(async move { Ok(allowed) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, groups: &[&str]) -> UserInfo {
        UserInfo {
            username: Some(name.into()),
            groups: Some(groups.iter().map(|g| g.to_string()).collect()),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn static_grants_match_like_rbac_bindings() {
        let authorizer = StaticAuthorizer::default()
            .grant("alice", "exempt", "modeldeployments", Some("team-a"))
            .grant("group:platform", "share", "modeldeployments", None);
        let exempt = Access::new("exempt", "modeldeployments")
            .in_namespace("team-a")
            .named("chat");
        let alice = user("alice", &[]);
        assert!(check(&authorizer, &alice, &exempt).await.unwrap());
        let elsewhere = exempt.clone().in_namespace("team-b");
        assert!(!check(&authorizer, &alice, &elsewhere).await.unwrap());
        let share = Access::new("share", "modeldeployments");
        assert!(!check(&authorizer, &alice, &share).await.unwrap());
        let bob = user("bob", &["platform"]);
        assert!(check(&authorizer, &bob, &share).await.unwrap());
    }

    #[test]
    fn review_carries_the_whole_identity_and_the_attributes() {
        let mut alice = user("alice", &["dev"]);
        alice.uid = Some("u-1".into());
        let review = access_review(
            &alice,
            &Access::new("create", "accesstokens").in_namespace("team-b"),
        );
        assert_eq!(review.spec.user.as_deref(), Some("alice"));
        assert_eq!(review.spec.uid.as_deref(), Some("u-1"));
        assert_eq!(review.spec.groups, Some(vec!["dev".to_string()]));
        let attributes = review.spec.resource_attributes.unwrap();
        assert_eq!(attributes.group.as_deref(), Some("policybind.io"));
        assert_eq!(attributes.namespace.as_deref(), Some("team-b"));
        assert_eq!(attributes.name, None);
    }
}

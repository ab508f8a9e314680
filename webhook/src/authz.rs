//! Whether a user may decide an ApprovalRequest: a SubjectAccessReview for verb
//! `approve` on `approvalrequests.policybind.io` in the request's namespace.
//!
//! `approve` is not a verb Kubernetes itself uses; RBAC accepts any verb, so a
//! platform team grants it explicitly (see docs/webhook.md) and editing the object
//! (`update`) is not enough to decide it. The webhook's service account needs
//! `create` on `subjectaccessreviews.authorization.k8s.io`.

use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::UserInfo;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::PostParams;
use kube::{Api, Client};

/// RBAC verb that grants deciding ApprovalRequests.
pub const APPROVE_VERB: &str = "approve";
/// Resource the verb applies to.
pub const APPROVAL_RESOURCE: &str = "approvalrequests";

/// Decides whether a user may approve.
pub trait Authorizer: Send + Sync {
    /// `Ok(true)` when `user` may approve `name` in `namespace`.
    fn may_approve<'a>(
        &'a self,
        user: &'a UserInfo,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<bool, crate::Error>>;
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

/// The review sent for a user: the identity exactly as the API server
/// authenticated it (groups, uid and extra included, so group-based grants count).
pub fn access_review(user: &UserInfo, namespace: &str, name: &str) -> SubjectAccessReview {
    SubjectAccessReview {
        metadata: Default::default(),
        spec: SubjectAccessReviewSpec {
            user: user.username.clone(),
            groups: user.groups.clone(),
            uid: user.uid.clone(),
            extra: user.extra.clone(),
            resource_attributes: Some(ResourceAttributes {
                group: Some(policybind_crds::GROUP.into()),
                resource: Some(APPROVAL_RESOURCE.into()),
                verb: Some(APPROVE_VERB.into()),
                namespace: Some(namespace.into()),
                name: Some(name.into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        status: None,
    }
}

impl Authorizer for SubjectAccessReviewer {
    fn may_approve<'a>(
        &'a self,
        user: &'a UserInfo,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<bool, crate::Error>> {
        Box::pin(async move {
            let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
            let review = access_review(user, namespace, name);
            let answer = api
                .create(&PostParams::default(), &review)
                .await
                .map_err(crate::Error::Kube)?;
            Ok(answer.status.map(|s| s.allowed).unwrap_or(false))
        })
    }
}

/// A fixed answer per user name (tests, benchmarks, standalone runs).
#[derive(Debug, Default, Clone)]
pub struct StaticAuthorizer {
    pub approvers: Vec<String>,
}

impl Authorizer for StaticAuthorizer {
    fn may_approve<'a>(
        &'a self,
        user: &'a UserInfo,
        _namespace: &'a str,
        _name: &'a str,
    ) -> BoxFuture<'a, Result<bool, crate::Error>> {
        let allowed = user
            .username
            .as_ref()
            .is_some_and(|u| self.approvers.contains(u));
        Box::pin(async move { Ok(allowed) })
    }
}

//! Who is looking and what they may see.
//!
//! Authentication is the API server's: a bearer token (from the login form or
//! an `Authorization` header) is checked with a TokenReview and never kept:
//! a login creates a server-side session that holds only the user's name,
//! groups and extra attributes. Authorization is the API server's too: before
//! a page shows a namespace's objects of one kind, a SubjectAccessReview asks
//! whether the viewer may `list` that kind there (audit segments are
//! ConfigMaps, so `list configmaps`). A viewer allowed to list a kind in every
//! namespace (a cluster-wide review) sees every namespace. Any failure to ask
//! counts as "no": the dashboard fails closed.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::Client;
use kube::api::{Api, PostParams};
use policybind_crds::{AccessToken, ApprovalRequest, Incident, ModelDeployment};
use sha2::{Digest, Sha256};

/// The authenticated viewer, as the TokenReview described them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub username: String,
    pub uid: Option<String>,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

impl Identity {
    /// A stable key for caching authorization answers: everything a
    /// SubjectAccessReview is asked about.
    fn cache_key(&self) -> String {
        let text = format!(
            "{}\n{:?}\n{:?}\n{:?}",
            self.username, self.uid, self.groups, self.extra
        );
        hex::encode(Sha256::digest(text.as_bytes()))
    }
}

/// Asks the API server whether `token` is valid. `Ok(None)`: it is not.
pub async fn review_token(client: &Client, token: &str) -> Result<Option<Identity>, kube::Error> {
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.to_string()),
            audiences: None,
        },
        ..TokenReview::default()
    };
    let answer = Api::<TokenReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await?;
    let Some(status) = answer.status else {
        return Ok(None);
    };
    if status.authenticated != Some(true) {
        return Ok(None);
    }
    let Some(user) = status.user else {
        return Ok(None);
    };
    let Some(username) = user.username.filter(|u| !u.is_empty()) else {
        return Ok(None);
    };
    Ok(Some(Identity {
        username,
        uid: user.uid,
        groups: user.groups.unwrap_or_default(),
        extra: user.extra.unwrap_or_default().into_iter().collect(),
    }))
}

/// The kinds a page shows, each checked with its own SubjectAccessReview.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Shown {
    /// Audit segment ConfigMaps: decisions, denials, trail verification.
    AuditSegments,
    ApprovalRequests,
    ModelDeployments,
    AccessTokens,
    Incidents,
}

impl Shown {
    /// API group and plural resource name the review asks about.
    pub fn resource(self) -> (String, String) {
        fn of<K: kube::Resource<DynamicType = ()>>() -> (String, String) {
            (K::group(&()).into_owned(), K::plural(&()).into_owned())
        }
        match self {
            Shown::AuditSegments => (String::new(), "configmaps".to_string()),
            Shown::ApprovalRequests => of::<ApprovalRequest>(),
            Shown::ModelDeployments => of::<ModelDeployment>(),
            Shown::AccessTokens => of::<AccessToken>(),
            Shown::Incidents => of::<Incident>(),
        }
    }

    /// How the docs and pages name the check.
    pub fn describe(self) -> String {
        let (group, resource) = self.resource();
        if group.is_empty() {
            format!("list {resource}")
        } else {
            format!("list {resource}.{group}")
        }
    }
}

/// The namespaces a viewer may see for one kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Visibility {
    /// Allowed cluster-wide: every namespace.
    Cluster,
    /// Only these.
    Namespaces(BTreeSet<String>),
}

impl Visibility {
    pub fn allows(&self, namespace: &str) -> bool {
        match self {
            Visibility::Cluster => true,
            Visibility::Namespaces(set) => set.contains(namespace),
        }
    }
}

/// How long an authorization answer is reused: a removed RoleBinding hides
/// its namespace within this time.
pub const ACCESS_CACHE_TTL: Duration = Duration::from_secs(30);
/// Cached answers kept at most (then the cache starts over).
const ACCESS_CACHE_MAX: usize = 50_000;
/// SubjectAccessReviews in flight at once for one page.
const REVIEWS_IN_FLIGHT: usize = 16;

type AccessKey = (String, Shown, Option<String>);

/// Asks SubjectAccessReviews and remembers the answers briefly.
pub struct Authorizer {
    client: Client,
    cache: Mutex<HashMap<AccessKey, (bool, Instant)>>,
}

impl Authorizer {
    pub fn new(client: Client) -> Self {
        Authorizer {
            client,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The namespaces among `candidates` (those holding objects of the kind)
    /// the viewer may list `shown` in, or all when allowed cluster-wide.
    pub async fn visibility(
        &self,
        identity: &Identity,
        shown: Shown,
        candidates: &BTreeSet<String>,
    ) -> Visibility {
        if self.may_list(identity, shown, None).await {
            return Visibility::Cluster;
        }
        let answers: Vec<(String, bool)> = futures::stream::iter(candidates.iter().cloned())
            .map(|namespace: String| async move {
                let allowed = self.may_list(identity, shown, Some(&namespace)).await;
                (namespace, allowed)
            })
            .buffer_unordered(REVIEWS_IN_FLIGHT)
            .collect()
            .await;
        Visibility::Namespaces(
            answers
                .into_iter()
                .filter_map(|(namespace, allowed)| allowed.then_some(namespace))
                .collect(),
        )
    }

    /// May the viewer `list` `shown` in `namespace` (cluster-wide when `None`)?
    pub async fn may_list(
        &self,
        identity: &Identity,
        shown: Shown,
        namespace: Option<&str>,
    ) -> bool {
        let key = (identity.cache_key(), shown, namespace.map(str::to_string));
        if let Some(answer) = self.cached(&key) {
            return answer;
        }
        let answer = match self.review(identity, shown, namespace).await {
            Ok(allowed) => allowed,
            Err(error) => {
                // Fail closed: a review we could not make hides the namespace.
                tracing::warn!(%error, ?shown, ?namespace, "SubjectAccessReview failed; hiding");
                return false;
            }
        };
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= ACCESS_CACHE_MAX {
            cache.clear();
        }
        cache.insert(key, (answer, Instant::now()));
        answer
    }

    fn cached(&self, key: &AccessKey) -> Option<bool> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .get(key)
            .filter(|(_, at)| at.elapsed() < ACCESS_CACHE_TTL)
            .map(|(answer, _)| *answer)
    }

    async fn review(
        &self,
        identity: &Identity,
        shown: Shown,
        namespace: Option<&str>,
    ) -> Result<bool, kube::Error> {
        let (group, resource) = shown.resource();
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(identity.username.clone()),
                uid: identity.uid.clone(),
                groups: Some(identity.groups.clone()),
                extra: (!identity.extra.is_empty())
                    .then(|| identity.extra.clone().into_iter().collect()),
                resource_attributes: Some(ResourceAttributes {
                    namespace: namespace.map(str::to_string),
                    verb: Some("list".to_string()),
                    group: Some(group),
                    resource: Some(resource),
                    ..ResourceAttributes::default()
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        let answer = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await?;
        Ok(answer
            .status
            .is_some_and(|s| s.allowed && s.denied != Some(true)))
    }
}

/// Server-side sessions: a random id in a cookie maps to an identity. Only the
/// SHA-256 of the id is kept, so a memory dump does not hand out sessions.
pub struct Sessions {
    entries: Mutex<HashMap<String, (Identity, Instant)>>,
    ttl: Duration,
    max: usize,
}

impl Sessions {
    pub fn new(ttl: Duration, max: usize) -> Self {
        Sessions {
            entries: Mutex::new(HashMap::new()),
            ttl,
            max,
        }
    }

    /// A new session for `identity`; returns the id for the cookie.
    pub fn create(&self, identity: Identity) -> Result<String, crate::Error> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| crate::Error::Random(e.to_string()))?;
        let id = hex::encode(bytes);
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let ttl = self.ttl;
        entries.retain(|_, (_, created)| created.elapsed() < ttl);
        if entries.len() >= self.max {
            // Full of live sessions: drop the oldest rather than refuse logins.
            if let Some(oldest) = entries
                .iter()
                .min_by_key(|(_, (_, created))| *created)
                .map(|(key, _)| key.clone())
            {
                entries.remove(&oldest);
            }
        }
        entries.insert(Self::key(&id), (identity, Instant::now()));
        Ok(id)
    }

    /// The identity of a live session.
    pub fn get(&self, id: &str) -> Option<Identity> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(&Self::key(id))
            .filter(|(_, created)| created.elapsed() < self.ttl)
            .map(|(identity, _)| identity.clone())
    }

    pub fn remove(&self, id: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.remove(&Self::key(id));
    }

    fn key(id: &str) -> String {
        hex::encode(Sha256::digest(id.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Identity {
        Identity {
            username: "alice".into(),
            uid: None,
            groups: vec!["team-a".into()],
            extra: BTreeMap::new(),
        }
    }

    #[test]
    fn sessions_are_found_by_id_and_end_on_logout() {
        let sessions = Sessions::new(Duration::from_secs(60), 10);
        let id = sessions.create(alice()).unwrap();
        assert_eq!(id.len(), 64);
        assert_eq!(sessions.get(&id), Some(alice()));
        assert_eq!(sessions.get("not-a-session"), None);
        sessions.remove(&id);
        assert_eq!(sessions.get(&id), None);
    }

    #[test]
    fn expired_sessions_are_not_honoured() {
        let sessions = Sessions::new(Duration::ZERO, 10);
        let id = sessions.create(alice()).unwrap();
        assert_eq!(sessions.get(&id), None);
    }

    #[test]
    fn a_full_session_table_drops_the_oldest() {
        let sessions = Sessions::new(Duration::from_secs(60), 2);
        let first = sessions.create(alice()).unwrap();
        let second = sessions.create(alice()).unwrap();
        let third = sessions.create(alice()).unwrap();
        assert_eq!(sessions.get(&first), None);
        assert!(sessions.get(&second).is_some() && sessions.get(&third).is_some());
    }

    #[test]
    fn reviews_ask_about_the_kind_each_page_shows() {
        assert_eq!(Shown::AuditSegments.describe(), "list configmaps");
        assert_eq!(
            Shown::ApprovalRequests.describe(),
            "list approvalrequests.policybind.io"
        );
        assert_eq!(Shown::Incidents.describe(), "list incidents.policybind.io");
    }
}

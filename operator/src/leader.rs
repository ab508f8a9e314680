//! Leader election over a `coordination.k8s.io/v1` Lease, so that two replicas
//! never act at once.
//!
//! kube-rs 5 has no leader election helper, so this is the usual protocol in a
//! few lines: a replica holds the Lease while it renews it within
//! `leaseDurationSeconds`; another replica takes it over only after it expired.
//! Every write carries the Lease's `resourceVersion`, so two replicas racing for
//! an expired Lease cannot both win (the loser gets 409 Conflict). A leader that
//! fails to renew before its own Lease would expire stops acting (the process
//! exits and is restarted as a follower) rather than risk two leaders.
//! [`decide`] is the pure part.

use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, PostParams};
use tokio_util::sync::CancellationToken;

use crate::context::{from_jiff, to_jiff};
use crate::error::{Error, Result};

/// Lease timing.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    /// How long a Lease stays valid without renewal.
    pub duration: Duration,
    /// How often the holder renews (well inside `duration`).
    pub renew_every: Duration,
}

impl LeaseSettings {
    pub fn new(namespace: &str, name: &str, identity: &str) -> Self {
        LeaseSettings {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
        }
    }
}

/// What to do with the Lease as found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseStep {
    /// No Lease yet: create it, holding it.
    Create,
    /// We hold it: renew.
    Renew,
    /// Someone else held it and it expired: take it over.
    TakeOver,
    /// Someone else holds it: wait.
    Wait,
}

/// Decides the next step from the Lease as read.
pub fn decide(lease: Option<&Lease>, identity: &str, now: DateTime<Utc>) -> LeaseStep {
    let Some(lease) = lease else {
        return LeaseStep::Create;
    };
    let spec = lease.spec.clone().unwrap_or_default();
    match spec.holder_identity.as_deref() {
        Some(holder) if holder == identity => LeaseStep::Renew,
        None | Some("") => LeaseStep::TakeOver,
        Some(_) => {
            let renewed = spec.renew_time.map(|t| from_jiff(t.0));
            let duration =
                chrono::Duration::seconds(i64::from(spec.lease_duration_seconds.unwrap_or(15)));
            match renewed {
                Some(t) if now < t + duration => LeaseStep::Wait,
                _ => LeaseStep::TakeOver,
            }
        }
    }
}

/// The Lease spec we write for `step`.
pub fn desired_spec(
    lease: Option<&Lease>,
    step: LeaseStep,
    settings: &LeaseSettings,
    now: DateTime<Utc>,
) -> LeaseSpec {
    let old = lease.and_then(|l| l.spec.clone()).unwrap_or_default();
    let now_micro = MicroTime(to_jiff(now));
    let (acquire_time, transitions) = match step {
        LeaseStep::Renew => (old.acquire_time.clone(), old.lease_transitions),
        LeaseStep::TakeOver => (
            Some(now_micro.clone()),
            Some(old.lease_transitions.unwrap_or(0) + 1),
        ),
        _ => (Some(now_micro.clone()), Some(0)),
    };
    LeaseSpec {
        holder_identity: Some(settings.identity.clone()),
        lease_duration_seconds: Some(settings.duration.as_secs() as i32),
        acquire_time,
        renew_time: Some(now_micro),
        lease_transitions: transitions,
        ..Default::default()
    }
}

/// One attempt to acquire or renew. `Ok(true)` when we hold the Lease after it.
pub async fn try_acquire(api: &Api<Lease>, settings: &LeaseSettings) -> Result<bool> {
    let now = Utc::now();
    let current = api.get_opt(&settings.name).await?;
    let step = decide(current.as_ref(), &settings.identity, now);
    if step == LeaseStep::Wait {
        return Ok(false);
    }
    let spec = desired_spec(current.as_ref(), step, settings, now);
    let result = match current {
        None => {
            let mut lease = Lease {
                spec: Some(spec),
                ..Default::default()
            };
            lease.metadata.name = Some(settings.name.clone());
            lease.metadata.namespace = Some(settings.namespace.clone());
            api.create(&PostParams::default(), &lease).await
        }
        Some(mut lease) => {
            // resourceVersion stays set: a concurrent writer makes this fail.
            lease.spec = Some(spec);
            api.replace(&settings.name, &PostParams::default(), &lease)
                .await
        }
    };
    match result {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(error) => Err(error.into()),
    }
}

/// Waits until this replica holds the Lease (or shutdown is requested).
pub async fn acquire(
    api: &Api<Lease>,
    settings: &LeaseSettings,
    shutdown: &CancellationToken,
) -> Result<bool> {
    loop {
        match try_acquire(api, settings).await {
            Ok(true) => return Ok(true),
            Ok(false) => {}
            Err(error) => tracing::warn!(%error, "leader election attempt failed"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(false),
            _ = tokio::time::sleep(settings.renew_every) => {}
        }
    }
}

/// Renews the Lease until shutdown; returns an error when it could not be
/// renewed before it would expire (another replica may then take over).
pub async fn hold(
    api: Api<Lease>,
    settings: LeaseSettings,
    shutdown: CancellationToken,
) -> Result<()> {
    let mut last_renewal = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                release(&api, &settings).await;
                return Ok(());
            }
            _ = tokio::time::sleep(settings.renew_every) => {}
        }
        // A renewal that hangs (a connection to an API server that went away
        // without closing it) must not keep this loop from seeing the
        // deadline: it fails after `renew_every` like any other.
        let attempt = tokio::time::timeout(settings.renew_every, try_acquire(&api, &settings))
            .await
            .unwrap_or_else(|_| {
                Err(Error::Timeout(format!(
                    "renewing the Lease took over {:?}",
                    settings.renew_every
                )))
            });
        match attempt {
            Ok(true) => last_renewal = tokio::time::Instant::now(),
            Ok(false) => return Err(Error::LostLeadership(settings.name.clone())),
            Err(error) => {
                tracing::warn!(%error, "could not renew the leader Lease");
                // Stop before the Lease could expire: a little margin for clocks.
                if last_renewal.elapsed() + settings.renew_every >= settings.duration {
                    return Err(Error::LostLeadership(settings.name.clone()));
                }
            }
        }
    }
}

/// Gives the Lease up on clean shutdown so a standby takes over at once.
async fn release(api: &Api<Lease>, settings: &LeaseSettings) {
    let Ok(Some(mut lease)) = api.get_opt(&settings.name).await else {
        return;
    };
    let Some(spec) = lease.spec.as_mut() else {
        return;
    };
    if spec.holder_identity.as_deref() != Some(settings.identity.as_str()) {
        return;
    }
    spec.holder_identity = None;
    spec.renew_time = None;
    if let Err(error) = api
        .replace(&settings.name, &PostParams::default(), &lease)
        .await
    {
        tracing::warn!(%error, "could not release the leader Lease");
    }
}

/// Leadership held by this replica: the task renewing the Lease, and the token
/// that releases it once the controllers have stopped.
pub struct Leadership {
    renewal: Option<tokio::task::JoinHandle<Result<()>>>,
    release: CancellationToken,
}

impl Leadership {
    /// Leadership without a Lease (leader election off: the only replica acts).
    pub fn alone() -> Self {
        Leadership {
            renewal: None,
            release: CancellationToken::new(),
        }
    }

    /// Releases the Lease (after the controllers stopped, so a standby never
    /// acts while an in-flight reconcile of ours still runs) and reports a lost
    /// Lease as an error.
    pub async fn release(self) -> Result<()> {
        self.release.cancel();
        match self.renewal {
            Some(task) => task.await.unwrap_or(Ok(())),
            None => Ok(()),
        }
    }
}

/// Waits for the Lease of `settings` and holds it. `Ok(None)`: shutdown came
/// first. Losing the Lease later cancels `shutdown`, so the controllers stop.
pub async fn lead(
    client: &kube::Client,
    settings: &crate::context::Settings,
    shutdown: &CancellationToken,
) -> Result<Option<Leadership>> {
    let api: Api<Lease> = Api::namespaced(client.clone(), &settings.namespace);
    let lease = LeaseSettings::new(
        &settings.namespace,
        &settings.lease_name,
        &settings.identity,
    );
    tracing::info!(lease = %settings.lease_name, identity = %settings.identity, "waiting for leadership");
    if !acquire(&api, &lease, shutdown).await? {
        return Ok(None);
    }
    tracing::info!("leadership acquired");
    let release = CancellationToken::new();
    let stop_on_loss = shutdown.clone();
    let held = release.clone();
    let renewal = tokio::spawn(async move {
        let result = hold(api, lease, held).await;
        if result.is_err() {
            stop_on_loss.cancel();
        }
        result
    });
    Ok(Some(Leadership {
        renewal: Some(renewal),
        release,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn lease(holder: &str, renewed: &str) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                lease_duration_seconds: Some(15),
                renew_time: Some(MicroTime(to_jiff(at(renewed)))),
                lease_transitions: Some(3),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn missing_lease_is_created_and_own_lease_is_renewed() {
        assert_eq!(
            decide(None, "a", at("2026-11-22T12:00:00Z")),
            LeaseStep::Create
        );
        let own = lease("a", "2026-11-22T11:00:00Z");
        assert_eq!(
            decide(Some(&own), "a", at("2026-11-22T12:00:00Z")),
            LeaseStep::Renew
        );
    }

    #[test]
    fn live_lease_of_another_replica_is_respected_until_it_expires() {
        let other = lease("b", "2026-11-22T12:00:00Z");
        assert_eq!(
            decide(Some(&other), "a", at("2026-11-22T12:00:14Z")),
            LeaseStep::Wait
        );
        assert_eq!(
            decide(Some(&other), "a", at("2026-11-22T12:00:15Z")),
            LeaseStep::TakeOver
        );
    }

    #[test]
    fn released_lease_is_taken_over_at_once_counting_the_transition() {
        let mut released = lease("b", "2026-11-22T12:00:00Z");
        released.spec.as_mut().unwrap().holder_identity = None;
        let now = at("2026-11-22T12:00:01Z");
        assert_eq!(decide(Some(&released), "a", now), LeaseStep::TakeOver);
        let spec = desired_spec(
            Some(&released),
            LeaseStep::TakeOver,
            &LeaseSettings::new("ns", "l", "a"),
            now,
        );
        assert_eq!(spec.holder_identity.as_deref(), Some("a"));
        assert_eq!(spec.lease_transitions, Some(4));
    }
}

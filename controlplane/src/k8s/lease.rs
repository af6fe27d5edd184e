//! Leader election with a `coordination.k8s.io/v1` Lease: the replica named in
//! `holderIdentity` whose `renewTime + leaseDurationSeconds` lies in the future is the leader
//! and the only one that writes. Every replica [`Elector::tick`]s every third of the lease
//! duration: the holder renews, the others take the Lease once it has expired. Updates carry
//! the observed `resourceVersion`, so of two replicas racing for an expired Lease only one
//! wins (the other gets 409 Conflict). A leader that fails to renew stops writing when its own
//! last renewal is a lease duration old, whatever the API server says. A leader that shuts
//! down [`Elector::release`]s the Lease (no holder, one-second duration, as client-go's
//! `ReleaseOnCancel` does), so a follower watching it takes over at once instead of after the
//! lease duration.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube::api::PostParams;
use tokio::time::Instant;

/// What to do about the observed Lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// There is none: create it, held by us.
    Create,
    /// We hold it: renew it.
    Renew,
    /// Nobody holds it, or the holder let it expire: take it.
    Take,
    /// Someone else holds it.
    Follow,
}

/// Decides from the observed Lease (`None`: it does not exist), at wall-clock `now`.
pub fn decide(observed: Option<&Lease>, identity: &str, now: Timestamp) -> Decision {
    let Some(lease) = observed else {
        return Decision::Create;
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.unwrap_or_default();
    if holder == identity {
        return Decision::Renew;
    }
    if holder.is_empty() {
        return Decision::Take;
    }
    let secs = i64::from(spec.lease_duration_seconds.unwrap_or(0).max(0));
    match spec.renew_time.or(spec.acquire_time) {
        Some(MicroTime(t)) => match t.checked_add(SignedDuration::from_secs(secs)) {
            Ok(expiry) if expiry > now => Decision::Follow,
            _ => Decision::Take,
        },
        None => Decision::Take,
    }
}

/// One replica's view of the election.
#[derive(Debug)]
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    /// When we last renewed (while we hold the Lease).
    renewed: Option<Instant>,
}

impl Elector {
    /// An elector for the Lease `name` reached through `api`, as `identity` (the pod name),
    /// with leases of `duration` (whole seconds, at least 1).
    pub fn new(api: Api<Lease>, name: &str, identity: &str, duration: Duration) -> Self {
        Self {
            api,
            name: name.to_owned(),
            identity: identity.to_owned(),
            duration: duration.max(Duration::from_secs(1)),
            renewed: None,
        }
    }

    /// How often to [`Elector::tick`]: a third of the lease duration.
    pub fn interval(&self) -> Duration {
        self.duration / 3
    }

    /// Whether this replica may write now.
    pub fn is_leader(&self) -> bool {
        self.renewed.is_some_and(|at| at.elapsed() < self.duration)
    }

    fn lease(&self, now: Timestamp, base: Option<Lease>, take: bool) -> Lease {
        let mut lease = base.unwrap_or_else(|| Lease {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                ..Default::default()
            },
            spec: None,
        });
        let mut spec = lease.spec.take().unwrap_or_default();
        let duration = i32::try_from(self.duration.as_secs()).unwrap_or(i32::MAX);
        if take || spec.acquire_time.is_none() {
            spec.acquire_time = Some(MicroTime(now));
            if spec.holder_identity.is_some() {
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            }
        }
        spec.holder_identity = Some(self.identity.clone());
        spec.lease_duration_seconds = Some(duration);
        spec.renew_time = Some(MicroTime(now));
        lease.spec = Some(spec);
        lease
    }

    /// Reads the Lease and creates, renews or takes it if this replica may. Returns whether
    /// this replica leads afterwards. An API error ends leadership at once.
    pub async fn tick(&mut self) -> Result<bool, kube::Error> {
        let started = Instant::now();
        let result = self.try_tick().await;
        match result {
            Ok(true) => self.renewed = Some(started),
            Ok(false) | Err(_) => self.renewed = None,
        }
        result
    }

    /// Gives the Lease up if this replica holds it: clears `holderIdentity` and sets a
    /// one-second duration, with the observed `resourceVersion` (a Lease another replica took
    /// meanwhile is left alone). This replica stops leading whatever the outcome.
    pub async fn release(&mut self) -> Result<(), kube::Error> {
        self.renewed = None;
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let mut spec = lease.spec.take().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        lease.spec = Some(spec);
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Whether `observed` (a watch event of the Lease) is free for this replica to take now.
    pub fn may_take(&self, observed: &Lease) -> bool {
        decide(Some(observed), &self.identity, Timestamp::now()) == Decision::Take
    }

    async fn try_tick(&mut self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let observed = self.api.get_opt(&self.name).await?;
        let decision = decide(observed.as_ref(), &self.identity, now);
        let result = match decision {
            Decision::Follow => return Ok(false),
            Decision::Create => {
                let lease = self.lease(now, None, true);
                self.api.create(&PostParams::default(), &lease).await
            }
            Decision::Renew | Decision::Take => {
                let lease = self.lease(now, observed, decision == Decision::Take);
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match result {
            Ok(_) => Ok(true),
            // another replica got there first
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;

    fn lease(holder: &str, renewed: Timestamp, secs: i32) -> Lease {
        Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: (!holder.is_empty()).then(|| holder.to_owned()),
                lease_duration_seconds: Some(secs),
                renew_time: Some(MicroTime(renewed)),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn decisions() {
        let now = Timestamp::from_second(1_700_000_000).expect("time");
        let ago = |s: i64| now.checked_sub(SignedDuration::from_secs(s)).expect("time");
        assert_eq!(decide(None, "a", now), Decision::Create);
        assert_eq!(
            decide(Some(&lease("a", ago(100), 15)), "a", now),
            Decision::Renew
        );
        assert_eq!(
            decide(Some(&lease("b", ago(5), 15)), "a", now),
            Decision::Follow
        );
        assert_eq!(
            decide(Some(&lease("b", ago(16), 15)), "a", now),
            Decision::Take
        );
        assert_eq!(
            decide(Some(&lease("", ago(1), 15)), "a", now),
            Decision::Take
        );
    }
}

//! Choosing the one publisher of a cluster with a `coordination.k8s.io/v1` Lease.
//!
//! The algorithm is client-go's `leaderelection`, written against the Lease API directly
//! (read, then replace with the `resourceVersion` read: the API server refuses a write that
//! raced another):
//! - a candidate takes the lease when it has no holder, or when its record has not changed for
//!   `leaseDurationSeconds` *by the candidate's own clock* (no clock comparison across nodes);
//! - the holder renews every `duration / 4`; the other candidates look every `duration / 2`
//!   (±20 %: a DaemonSet's pods must not read the lease in step — with a thousand nodes that
//!   is already ~130 reads a second at the default 15 s, see README "Scale");
//! - a holder that has not renewed successfully for `2/3 · duration` stops being leader by
//!   itself, before any other candidate can take the lease (which takes `duration` without a
//!   change). That is the fence: the old leader stops before a new one starts.
//!
//! Every acquisition increments `leaseTransitions`; its value is the leadership's **epoch**,
//! carried by every published message, so subscribers can tell a deposed leader's late
//! message from the new leader's.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub name: String,
    pub identity: String,
    pub duration: Duration,
}

/// One leadership: valid while the lease keeps being renewed.
#[derive(Clone, Debug)]
pub struct Term {
    pub epoch: u64,
    deadline: Arc<Mutex<Instant>>,
}

impl Term {
    /// Whether this instance may still act as leader. Checked before every publish.
    pub fn valid(&self) -> bool {
        Instant::now() < *self.deadline.lock().expect("term deadline lock")
    }

    fn extend(&self, to: Instant) {
        *self.deadline.lock().expect("term deadline lock") = to;
    }
}

/// The last change of the lease record this candidate saw, and when (its own clock).
struct Observed {
    resource_version: Option<String>,
    at: Instant,
}

/// Campaigns for the lease until `stop`; `tx` carries the current term while leader. On stop
/// a leader first says it is no longer leader, then releases the lease so that another
/// candidate takes over at once.
pub async fn run(
    api: Api<Lease>,
    settings: LeaseSettings,
    tx: watch::Sender<Option<Term>>,
    stop: CancellationToken,
) {
    let renew_every = (settings.duration / 4).max(Duration::from_millis(100));
    let look_every = settings.duration / 2;
    let renew_deadline = settings.duration * 2 / 3;
    let mut observed = Observed {
        resource_version: None,
        at: Instant::now(),
    };
    let mut term: Option<Term> = None;
    loop {
        let started = Instant::now();
        match try_acquire_or_renew(&api, &settings, &mut observed, term.is_some()).await {
            Ok(Some(epoch)) => match &term {
                Some(t) if t.epoch == epoch => t.extend(started + renew_deadline),
                _ => {
                    info!(lease = %settings.name, epoch, "became the publisher");
                    let t = Term {
                        epoch,
                        deadline: Arc::new(Mutex::new(started + renew_deadline)),
                    };
                    term = Some(t.clone());
                    tx.send_replace(Some(t));
                }
            },
            Ok(None) => {
                if term.take().is_some() {
                    warn!(lease = %settings.name, "another instance holds the lease: no longer the publisher");
                    tx.send_replace(None);
                }
            }
            Err(e) => {
                debug!(lease = %settings.name, error = %e, "lease not renewed");
                if term.as_ref().is_some_and(|t| !t.valid()) {
                    warn!(lease = %settings.name, error = %e, "lease not renewed in time: no longer the publisher");
                    term = None;
                    tx.send_replace(None);
                }
            }
        }
        let wait = match term {
            Some(_) => renew_every.saturating_sub(started.elapsed()),
            None => look_every.mul_f64(0.8 + 0.4 * fastrand::f64()),
        };
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    if term.is_some() {
        tx.send_replace(None);
        match release(&api, &settings).await {
            Ok(()) => info!(lease = %settings.name, "lease released"),
            Err(e) => {
                warn!(lease = %settings.name, error = %e, "could not release the lease (it expires by itself)")
            }
        }
    }
}

fn now() -> Option<MicroTime> {
    Some(MicroTime(Timestamp::now()))
}

/// One round: `Some(epoch)` when this instance holds the lease afterwards.
async fn try_acquire_or_renew(
    api: &Api<Lease>,
    s: &LeaseSettings,
    observed: &mut Observed,
    leading: bool,
) -> Result<Option<u64>, kube::Error> {
    let duration_secs = s.duration.as_secs().max(1) as i32;
    let Some(mut lease) = api.get_opt(&s.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(s.name.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(s.identity.clone()),
                lease_duration_seconds: Some(duration_secs),
                acquire_time: now(),
                renew_time: now(),
                lease_transitions: Some(1),
                ..LeaseSpec::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(created) => {
                note(observed, &created);
                Ok(Some(1))
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(None),
            Err(e) => Err(e),
        };
    };
    note(observed, &lease);
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty());
    let mine = holder == Some(s.identity.as_str());
    let their_duration =
        Duration::from_secs(spec.lease_duration_seconds.unwrap_or(duration_secs).max(0) as u64);
    let free = holder.is_none() || observed.at.elapsed() >= their_duration;
    if !mine && !free {
        return Ok(None);
    }
    spec.renew_time = now();
    spec.lease_duration_seconds = Some(duration_secs);
    // Held by this identity but not by this process (a restart with the same pod name): a
    // new term all the same, since the sequence numbers start again.
    if !(mine && leading) {
        spec.holder_identity = Some(s.identity.clone());
        spec.acquire_time = now();
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
    }
    match api.replace(&s.name, &PostParams::default(), &lease).await {
        Ok(written) => {
            note(observed, &written);
            let epoch = written
                .spec
                .and_then(|s| s.lease_transitions)
                .unwrap_or(0)
                .max(0) as u64;
            Ok(Some(epoch))
        }
        // Someone else wrote first.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(None),
        Err(e) => Err(e),
    }
}

fn note(observed: &mut Observed, lease: &Lease) {
    if observed.resource_version != lease.metadata.resource_version {
        observed.resource_version = lease.metadata.resource_version.clone();
        observed.at = Instant::now();
    }
}

/// Gives the lease up if this instance still holds it (client-go's `ReleaseOnCancel`).
async fn release(api: &Api<Lease>, s: &LeaseSettings) -> Result<(), kube::Error> {
    let Some(mut lease) = api.get_opt(&s.name).await? else {
        return Ok(());
    };
    let Some(spec) = lease.spec.as_mut() else {
        return Ok(());
    };
    if spec.holder_identity.as_deref() != Some(s.identity.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = now();
    api.replace(&s.name, &PostParams::default(), &lease)
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fake_apiserver::FakeApiServer;

    async fn leases(api: &FakeApiServer) -> Api<Lease> {
        let kc = kube::config::Kubeconfig::from_yaml(&api.kubeconfig_yaml("t")).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap();
        Api::namespaced(kube::Client::try_from(config).unwrap(), "meshdns")
    }

    fn settings(identity: &str) -> LeaseSettings {
        LeaseSettings {
            name: "meshdns-publisher".into(),
            identity: identity.into(),
            duration: Duration::from_secs(1),
        }
    }

    /// Starts a candidate; its watch says when it leads.
    fn candidate(
        api: Api<Lease>,
        identity: &str,
    ) -> (
        watch::Receiver<Option<Term>>,
        CancellationToken,
        tokio::task::JoinHandle<()>,
    ) {
        let (tx, rx) = watch::channel(None);
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(api, settings(identity), tx, stop.clone()));
        (rx, stop, task)
    }

    async fn leads(rx: &mut watch::Receiver<Option<Term>>) -> Term {
        let term = tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|t| t.is_some()))
            .await
            .expect("became leader in time")
            .unwrap();
        term.clone().unwrap()
    }

    fn holder(api: &FakeApiServer) -> (Option<String>, i64) {
        let lease = api
            .get(
                "coordination.k8s.io/v1",
                "Lease",
                Some("meshdns"),
                "meshdns-publisher",
            )
            .unwrap();
        (
            lease["spec"]["holderIdentity"].as_str().map(str::to_string),
            lease["spec"]["leaseTransitions"].as_i64().unwrap_or(0),
        )
    }

    /// One leader at a time; a crashed leader's term has run out before another one starts,
    /// and the new term has a higher epoch.
    #[tokio::test]
    async fn a_crashed_leader_has_stopped_before_the_next_one_starts() {
        let api = FakeApiServer::start().await.unwrap();
        let (mut a, _a_stop, a_task) = candidate(leases(&api).await, "a");
        let term_a = leads(&mut a).await;
        assert_eq!(term_a.epoch, 1);
        let (mut b, b_stop, b_task) = candidate(leases(&api).await, "b");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(b.borrow().is_none(), "b waits while a renews");
        assert!(term_a.valid());

        // a dies without releasing the lease.
        a_task.abort();
        let term_b = leads(&mut b).await;
        assert!(!term_a.valid(), "a stopped before b started");
        assert_eq!(term_b.epoch, 2);
        assert_eq!(holder(&api), (Some("b".into()), 2));

        // A clean stop releases the lease and says so first.
        b_stop.cancel();
        b_task.await.unwrap();
        assert!(b.borrow().is_none());
        assert_eq!(holder(&api).0, None);
    }

    /// A leader that cannot reach its API server stops leading by itself, within two thirds
    /// of the lease duration (plus one renewal period).
    #[tokio::test]
    async fn a_leader_that_cannot_renew_steps_down() {
        let api = FakeApiServer::start().await.unwrap();
        let (mut a, _stop, _task) = candidate(leases(&api).await, "a");
        let term = leads(&mut a).await;
        api.set_down(true).await;
        let lost = tokio::time::timeout(Duration::from_secs(5), a.wait_for(|t| t.is_none()))
            .await
            .is_ok();
        assert!(lost, "stepped down");
        assert!(!term.valid());
        // Back up: it takes the lease again, in a new term.
        api.set_down(false).await;
        let again = leads(&mut a).await;
        assert_eq!(again.epoch, 2);
    }
}

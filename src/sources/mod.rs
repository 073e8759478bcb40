//! Sources: each owns exactly one cluster's slice and tells the catalog about it.
//!
//! - [`file`]: a YAML file, hot-reloaded (the demo, VMs, managed databases).
//! - [`kube`]: a cluster's API server, in-cluster or through a kubeconfig.
//! - [`pubsub`]: a peer cluster's slice as its publisher writes it to Pub/Sub.
//!
//! Every source runs in its own task under a supervisor: a panic is logged, the cluster is
//! marked stale (its last data keeps serving) and the source restarts. Nothing a source does
//! can touch another cluster's slice or the DNS front end.

pub mod file;
pub mod kube;
pub mod pubsub;

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use ::kube::runtime::utils::ResetTimerBackoff;
use ::kube::runtime::watcher::ExponentialBackoff;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::catalog::{CatalogSender, SourceHandle, Update, unix_now};
use crate::config::{ClusterConfig, Config, ConfigError, SourceConfig};
use crate::model::{ClusterId, Slice, SourceState};

/// Checks what can be checked before serving: every file source parses and validates.
/// Returns the number of services found in files.
pub fn check(config: &Config) -> Result<usize, ConfigError> {
    let mut services = 0;
    for (i, c) in config.clusters.iter().enumerate() {
        if let SourceConfig::File(path) = &c.source {
            services += match file::load(path) {
                Ok(slice) => slice.len(),
                // A file that cannot be read at all is the config's error: say where it is named.
                Err(ConfigError::Read { path, source }) => {
                    return Err(ConfigError::Invalid {
                        path: config.path.clone(),
                        line: c.source_at.0,
                        column: c.source_at.1,
                        key: format!("clusters[{i}].source.file"),
                        message: format!("cannot read {}: {source}", path.display()),
                    });
                }
                Err(e) => return Err(e),
            };
        }
    }
    Ok(services)
}

/// The running sources, one per cluster.
pub struct Sources {
    catalog: CatalogSender,
    stop: CancellationToken,
    running: HashMap<ClusterId, Running>,
    tasks: JoinSet<()>,
}

struct Running {
    source: SourceConfig,
    stop: CancellationToken,
}

impl Sources {
    pub fn new(catalog: CatalogSender) -> Sources {
        Sources {
            catalog,
            stop: CancellationToken::new(),
            running: HashMap::new(),
            tasks: JoinSet::new(),
        }
    }

    /// Makes the running sources those of `config`: clusters removed (or whose source
    /// changed) stop, clusters added (or changed) start, the others are not touched. A
    /// restarted cluster keeps serving its last data until its new source has synced.
    pub fn reconcile(&mut self, config: &Config) {
        self.running.retain(|name, r| {
            let keep = config
                .clusters
                .iter()
                .any(|c| c.name == *name && c.source == r.source);
            if !keep {
                r.stop.cancel();
            }
            keep
        });
        for c in &config.clusters {
            if !self.running.contains_key(&c.name) {
                let stop = self.stop.child_token();
                self.start(c, stop.clone());
                self.running.insert(
                    c.name.clone(),
                    Running {
                        source: c.source.clone(),
                        stop,
                    },
                );
            }
        }
    }

    fn start(&mut self, c: &ClusterConfig, stop: CancellationToken) {
        let handle = self.catalog.source(&c.name);
        match &c.source {
            SourceConfig::File(path) => {
                let span = info_span!("source", cluster = %c.name, file = %path.display());
                let path = path.clone();
                let (h, s) = (handle.clone(), stop.clone());
                self.tasks.spawn(supervise(span, handle, stop, move || {
                    file::run(path.clone(), h.clone(), s.clone())
                }));
            }
            SourceConfig::Kube(k) => {
                let target = match (&k.inline_kubeconfig, &k.kubeconfig) {
                    (Some(_), _) => c.origin.to_string(),
                    (None, Some(p)) => p.display().to_string(),
                    (None, None) => "in-cluster".to_string(),
                };
                let span = info_span!("source", cluster = %c.name, kube = %target);
                let k = k.clone();
                let (h, s) = (handle.clone(), stop.clone());
                self.tasks.spawn(supervise(span, handle, stop, move || {
                    kube::run(k.clone(), h.clone(), s.clone())
                }));
            }
            SourceConfig::PubSub(p) => {
                let span = info_span!("source", cluster = %c.name, pubsub = %p.topic);
                let (p, name) = (p.clone(), c.name.to_string());
                let (h, s) = (handle.clone(), stop.clone());
                self.tasks.spawn(supervise(span, handle, stop, move || {
                    pubsub::run(name.clone(), p.clone(), h.clone(), s.clone())
                }));
            }
        }
    }

    /// Stops every source and waits for them.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// How sources, discovery and the publisher pace retries (and what kube's watchers use): 250 ms
/// doubling to 10 s with jitter, starting again after a minute without failures.
pub(crate) fn backoff() -> ResetTimerBackoff<ExponentialBackoff> {
    ResetTimerBackoff::new(
        ExponentialBackoff::from(
            backon::ExponentialBuilder::new()
                .with_min_delay(Duration::from_millis(250))
                .with_max_delay(Duration::from_secs(10))
                .with_factor(2.0)
                .with_jitter()
                .without_max_times(),
        ),
        Duration::from_secs(60),
    )
}

/// Waits the next delay of `retry`; `false` when `stop` came first.
pub(crate) async fn pause(
    retry: &mut impl Iterator<Item = Duration>,
    stop: &CancellationToken,
) -> bool {
    let wait = retry.next().unwrap_or(Duration::from_secs(10));
    tokio::select! {
        _ = tokio::time::sleep(wait) => true,
        _ = stop.cancelled() => false,
    }
}

/// A source's state as last told to the catalog: tells only changes, logs each once.
pub(crate) struct Status {
    pub handle: SourceHandle,
    pub state: SourceState,
}

impl Status {
    pub fn new(handle: SourceHandle) -> Status {
        Status {
            handle,
            state: SourceState::Syncing,
        }
    }

    pub fn set(&mut self, state: SourceState) {
        let same = matches!(
            (self.state, state),
            (SourceState::Stale { .. }, SourceState::Stale { .. })
        ) || self.state == state;
        if same {
            return;
        }
        match state {
            SourceState::Stale { .. } => warn!("source is stale: serving its last data"),
            other => info!(state = other.name(), "source state"),
        }
        self.state = state;
        self.handle.send(Update::State(state));
    }

    pub fn is_stale(&self) -> bool {
        matches!(self.state, SourceState::Stale { .. })
    }

    /// A whole slice: the catalog marks the cluster synced on it.
    pub fn replace(&mut self, slice: Slice) {
        self.handle.send(Update::Replace(slice));
        self.state = SourceState::Synced;
    }

    /// The last data turns stale from now, if there is any (a source that never synced is
    /// syncing, not stale).
    pub fn stale(&mut self) {
        if self.state != SourceState::Syncing {
            self.set(SourceState::Stale {
                since_unix: unix_now(),
            });
        }
    }

    /// A failure: counted and shown; the source turns stale if it had data.
    pub fn error(&mut self, error: String) {
        debug!(%error, "source error");
        self.handle.send(Update::Error(error));
        self.stale();
    }
}

/// Runs `make()` in its own task until it returns; restarts it after a panic.
async fn supervise<F, Fut>(
    span: tracing::Span,
    handle: SourceHandle,
    stop: CancellationToken,
    make: F,
) where
    F: Fn() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        match tokio::spawn(make().instrument(span.clone())).await {
            Err(e) if e.is_panic() => {
                span.in_scope(|| error!("source panicked: restarting it in 1 s"));
                handle.send(Update::Error("source panicked".into()));
                handle.send(Update::State(SourceState::Stale {
                    since_unix: unix_now(),
                }));
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.cancelled() => return,
                }
            }
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;
    use crate::model::Slice;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A source that panics is restarted; its cluster turns stale meanwhile and the other
    /// cluster never notices.
    #[tokio::test]
    async fn a_panicking_source_is_restarted_and_others_are_untouched() {
        let config = Config::parse(
            std::path::Path::new("/t/m.yaml"),
            "clusters:\n  - { name: a, source: { file: a.yaml } }\n  - { name: b, source: { file: b.yaml } }\n",
        )
        .unwrap();
        let catalog = Catalog::new(&config);
        let reader = catalog.reader();
        let a = catalog.sender().source(&"a".into());
        let b = catalog.sender().source(&"b".into());
        tokio::spawn(catalog.run());
        b.send(Update::Replace(Slice::new()));
        let runs = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let (r, h) = (runs.clone(), a.clone());
        let sup = tokio::spawn(supervise(
            tracing::Span::none(),
            a,
            stop.clone(),
            move || {
                let (r, h) = (r.clone(), h.clone());
                async move {
                    let n = r.fetch_add(1, Ordering::SeqCst);
                    h.send(Update::Replace(Slice::new()));
                    if n == 0 {
                        panic!("boom");
                    }
                }
            },
        ));
        sup.await.unwrap();
        assert_eq!(
            runs.load(Ordering::SeqCst),
            2,
            "restarted once after the panic"
        );
        let snap = reader
            .wait_for(|s| {
                s.cluster("a")
                    .is_some_and(|c| c.errors == 1 && c.relists == 2)
            })
            .await;
        assert_eq!(snap.cluster("a").unwrap().last_error, None, "synced again");
        let b = snap.cluster("b").unwrap();
        assert_eq!((b.state, b.errors), (SourceState::Synced, 0));
    }
}

//! Sources: each owns exactly one cluster's slice and tells the catalog about it.
//!
//! - [`file`]: a YAML file, hot-reloaded (the demo, VMs, managed databases).
//! - `kube`: a cluster's API server (in-cluster or through a kubeconfig).

pub mod file;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span};

use crate::catalog::Catalog;
use crate::config::{Config, ConfigError, SourceConfig};

/// Checks what can be checked before serving: every file source parses and validates.
/// Returns the number of services found in files.
pub fn check(config: &Config) -> Result<usize, ConfigError> {
    let mut services = 0;
    for c in &config.clusters {
        if let SourceConfig::File(path) = &c.source {
            services += file::load(path)?.len();
        }
    }
    Ok(services)
}

/// Starts one task per cluster; each stops when `stop` is cancelled.
pub fn spawn_all(
    config: &Config,
    catalog: &Catalog,
    stop: &CancellationToken,
    tasks: &mut JoinSet<()>,
) {
    for c in &config.clusters {
        let handle = catalog.handle(&c.name);
        match &c.source {
            SourceConfig::File(path) => {
                let span = info_span!("source", cluster = %c.name, file = %path.display());
                tasks.spawn(file::run(path.clone(), handle, stop.child_token()).instrument(span));
            }
            SourceConfig::Kube(_) => {
                tracing::error!(cluster = %c.name, "kube sources are not implemented yet");
            }
        }
    }
}

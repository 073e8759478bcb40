//! Discovery: peer clusters found at run time in Istio's remote secrets, so that a cluster
//! added to the mesh is added to the zone with nothing else to configure or rotate.
//!
//! `istioctl create-remote-secret` makes, for every peer, a Secret in `istio-system` labelled
//! `istio/multiCluster: "true"` and annotated `networking.istio.io/cluster`, with one data key
//! per cluster name whose value is a kubeconfig. A watcher (kube-runtime, one namespace, a
//! label selector) on the *local* cluster's API keeps a [`Discovered`] value — shared through a
//! `tokio::sync::watch` channel — up to date: the clusters each secret names, parsed once per
//! resourceVersion ([`clusters_from_secret`], pure). A relist is built aside and replaces the
//! whole set; an outage of the local API server keeps the last set.
//!
//! The serve loop merges them with the config's own clusters ([`merge`], pure: the config wins,
//! the local cluster is never taken from a secret) and applies the result through the same path
//! as SIGHUP. A discovered cluster therefore starts, stops and restarts exactly like one added
//! to, removed from or changed in the config file: a secret whose kubeconfig changes (rotated
//! token, new endpoint) changes that cluster's source, which restarts alone and keeps serving
//! its last data until the new connection has synced.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::config::{AuthInfo, Kubeconfig};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::config::{
    ClusterConfig, Config, InlineKubeconfig, IstioRemoteSecrets, KubeSourceConfig, SourceConfig,
};
use crate::model::{ClusterOrigin, is_dns_label};
use crate::sources::kube as kube_source;
use crate::sources::pause;

/// Istio's annotation naming the cluster a remote secret is for (informational here: the
/// data keys are what name clusters).
pub const CLUSTER_ANNOTATION: &str = "networking.istio.io/cluster";
/// Optional annotations on a remote secret giving its clusters' locality (for clusters the
/// config does not list).
pub const REGION_ANNOTATION: &str = "meshdns.io/region";
/// Comma-separated zones.
pub const ZONES_ANNOTATION: &str = "meshdns.io/zones";
/// Comma-separated CIDRs: the clusters' pod/node ranges (PTR zones, client locality).
pub const NETWORKS_ANNOTATION: &str = "meshdns.io/networks";

/// How long the serve loop gathers discovery changes before applying them, so that a burst
/// (a relist, several secrets applied together) is one reconfiguration.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// One remote secret as read: the clusters it gives, and what in it was skipped.
#[derive(Clone, Debug, PartialEq)]
pub struct SecretClusters {
    pub namespace: String,
    pub name: String,
    pub resource_version: Option<String>,
    /// The `networking.istio.io/cluster` annotation.
    pub istio_cluster: Option<String>,
    pub clusters: Vec<ClusterConfig>,
    /// Malformed parts, each with its reason (logged and counted once per resourceVersion).
    pub skipped: Vec<String>,
}

/// Everything discovery knows, as the serve loop, `/debug/catalog` and `/metrics` see it.
#[derive(Clone, Debug, Default)]
pub struct Discovered {
    /// Which watcher may publish: bumped whenever the watcher is restarted or stopped, so a
    /// stopped one's last words are ignored.
    generation: u64,
    /// What is watched; `None`: discovery is off.
    pub watching: Option<IstioRemoteSecrets>,
    /// Every remote secret, by (namespace, name).
    pub secrets: BTreeMap<(String, String), SecretClusters>,
    /// The secrets have been listed once since the watcher started.
    pub synced: bool,
    /// The local API server is failing; the last secrets keep serving.
    pub failing: bool,
    pub last_error: Option<String>,
    /// Failures talking to the local API server, ever.
    pub errors: u64,
    /// Malformed secrets or kubeconfigs skipped, ever (once per resourceVersion).
    pub skipped: u64,
}

// ---------------------------------------------------------------------------------------------
// Secret → clusters (pure)

/// The clusters a remote secret gives: one per data key that is a DNS label and holds a usable
/// kubeconfig. Region, zones and networks come from the secret's `meshdns.io/*` annotations (a
/// malformed annotation skips the whole secret: it is not guessed around). Kubeconfigs that
/// would run a command or read a local file in meshdns's pod are refused, as istiod refuses
/// them: whoever can write a Secret in that namespace must not get more than a read client.
pub fn clusters_from_secret(secret: &Secret) -> SecretClusters {
    let namespace = secret.namespace().unwrap_or_default();
    let name = secret.name_any();
    let what = format!("secret {namespace}/{name}");
    let annotations = secret.annotations();
    let mut out = SecretClusters {
        namespace: namespace.clone(),
        name: name.clone(),
        resource_version: secret.resource_version(),
        istio_cluster: annotations.get(CLUSTER_ANNOTATION).cloned(),
        clusters: Vec::new(),
        skipped: Vec::new(),
    };
    let (region, zones, networks) = match locality(annotations) {
        Ok(l) => l,
        Err(e) => {
            out.skipped.push(format!("{what}: {e}"));
            return out;
        }
    };
    let origin = ClusterOrigin::IstioSecret { namespace, name };
    for (key, value) in secret.data.iter().flatten() {
        if !is_dns_label(key) {
            out.skipped.push(format!(
                "{what}: key {key:?} is not a cluster name (lowercase letters, digits and '-')"
            ));
            continue;
        }
        let Ok(text) = std::str::from_utf8(&value.0) else {
            out.skipped
                .push(format!("{what}: {key}: not a kubeconfig (not UTF-8 text)"));
            continue;
        };
        let context = match usable_context(text) {
            Ok(c) => c,
            Err(e) => {
                out.skipped.push(format!("{what}: {key}: {e}"));
                continue;
            }
        };
        out.clusters.push(ClusterConfig {
            name: key.as_str().into(),
            origin: origin.clone(),
            region: region.clone(),
            zones: zones.clone(),
            networks: networks.clone(),
            client_networks: Vec::new(),
            source: SourceConfig::Kube(KubeSourceConfig {
                context: Some(context),
                inline_kubeconfig: Some(InlineKubeconfig(Arc::from(text))),
                ..KubeSourceConfig::default()
            }),
            source_at: (0, 0),
        });
    }
    out
}

type Locality = (Option<String>, Vec<String>, Vec<IpNet>);

fn locality(annotations: &BTreeMap<String, String>) -> Result<Locality, String> {
    let list = |key: &str| -> Vec<String> {
        annotations
            .get(key)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
    };
    let region = annotations
        .get(REGION_ANNOTATION)
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty());
    let mut networks = Vec::new();
    for n in list(NETWORKS_ANNOTATION) {
        networks.push(
            n.parse::<IpNet>()
                .map_err(|_| format!("{NETWORKS_ANNOTATION}: {n:?} is not a CIDR"))?,
        );
    }
    Ok((region, list(ZONES_ANNOTATION), networks))
}

/// The context a kubeconfig from a secret is used with: its current context (or its only
/// one), which must name a cluster with a server, and a user that is safe to use.
fn usable_context(text: &str) -> Result<String, String> {
    let kc = Kubeconfig::from_yaml(text).map_err(|e| format!("not a kubeconfig: {e}"))?;
    let name = match kc.current_context.as_deref().filter(|c| !c.is_empty()) {
        Some(c) => c.to_string(),
        None if kc.contexts.len() == 1 => kc.contexts[0].name.clone(),
        None => return Err("not a usable kubeconfig: no current-context".into()),
    };
    let ctx = kc
        .contexts
        .iter()
        .find(|c| c.name == name)
        .and_then(|c| c.context.as_ref())
        .ok_or_else(|| format!("not a usable kubeconfig: no context {name:?}"))?;
    let server = kc
        .clusters
        .iter()
        .find(|c| c.name == ctx.cluster)
        .and_then(|c| c.cluster.as_ref())
        .and_then(|c| c.server.as_deref())
        .filter(|s| !s.trim().is_empty());
    if server.is_none() {
        return Err(format!(
            "not a usable kubeconfig: context {name:?} names cluster {:?}, which has no server",
            ctx.cluster
        ));
    }
    if let Some(user) = &ctx.user {
        let auth = kc
            .auth_infos
            .iter()
            .find(|a| &a.name == user)
            .ok_or_else(|| format!("not a usable kubeconfig: no user {user:?}"))?;
        if let Some(a) = &auth.auth_info {
            refuse_unsafe(a).map_err(|e| format!("refused: user {user:?} {e}"))?;
        }
    }
    Ok(name)
}

/// What istiod refuses in remote secrets too (`sanitizeKubeConfig`): credentials that run a
/// command or read a file of the pod that uses them (its own service account token, say).
fn refuse_unsafe(a: &AuthInfo) -> Result<(), String> {
    if a.exec.is_some() {
        return Err("uses an exec plugin, which would run a command in meshdns's pod".into());
    }
    if let Some(p) = &a.auth_provider
        && p.name != "oidc"
    {
        return Err(format!(
            "uses the {:?} auth provider, which may run a command or read local files",
            p.name
        ));
    }
    for (field, set) in [
        ("tokenFile", a.token_file.is_some()),
        ("client-certificate", a.client_certificate.is_some()),
        ("client-key", a.client_key.is_some()),
    ] {
        if set {
            return Err(format!(
                "reads {field} from a local file (only inline credentials are taken)"
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Config + discovered → what runs (pure)

/// The config with the discovered clusters added: the config's clusters first, as written,
/// then the discovered ones by name. A discovered cluster is left out when it is the local
/// cluster, when the config lists it (the config wins), or when an earlier secret (by
/// namespace/name) already gave it. Returns what was left out, and why.
pub fn merge(config: &Config, discovered: &Discovered) -> (Config, Vec<String>) {
    let mut merged = config.clone();
    let mut notes = Vec::new();
    let mut found: Vec<ClusterConfig> = Vec::new();
    for s in discovered.secrets.values() {
        for c in &s.clusters {
            let from = format!("cluster {} from secret {}/{}", c.name, s.namespace, s.name);
            if config.local_cluster.as_ref() == Some(&c.name) {
                notes.push(format!("{from} is this instance's own cluster: ignored"));
            } else if config.clusters.iter().any(|k| k.name == c.name) {
                notes.push(format!("{from} is listed in the config, which wins"));
            } else if let Some(first) = found.iter().find(|k| k.name == c.name) {
                notes.push(format!(
                    "{from} was already given by {}: ignored",
                    first.origin
                ));
            } else {
                found.push(c.clone());
            }
        }
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    merged.clusters.extend(found);
    (merged, notes)
}

// ---------------------------------------------------------------------------------------------
// The watcher and its controller

/// Runs (or not) the watcher the config asks for, and merges what it finds. Owned by the serve
/// loop; ops and metrics read the same [`Discovered`] through [`Discovery::subscribe`].
pub struct Discovery {
    tx: watch::Sender<Discovered>,
    running: Option<Watching>,
    /// Notes of the last merge, each logged once while it holds.
    logged: HashSet<String>,
}

struct Watching {
    what: (IstioRemoteSecrets, KubeSourceConfig),
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Default for Discovery {
    fn default() -> Self {
        Discovery::new()
    }
}

impl Discovery {
    pub fn new() -> Discovery {
        Discovery {
            tx: watch::channel(Discovered::default()).0,
            running: None,
            logged: HashSet::new(),
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<Discovered> {
        self.tx.subscribe()
    }

    /// Whether the secrets are listed (or there is nothing to list).
    pub fn synced(&self) -> bool {
        let d = self.tx.borrow();
        d.watching.is_none() || d.synced
    }

    /// Starts, restarts or stops the watcher for `config`'s `discover` section and local
    /// cluster. A restarted watcher keeps the secrets it had until its first list replaces
    /// them; a stopped one forgets them.
    pub fn reconcile(&mut self, config: &Config) {
        let want = config
            .discover
            .istio_remote_secrets
            .clone()
            .map(|s| (s, local_connection(config)));
        if self.running.as_ref().map(|w| &w.what) == want.as_ref() {
            return;
        }
        if let Some(w) = self.running.take() {
            w.stop.cancel();
        }
        let Some(what) = want else {
            self.tx.send_modify(|d| {
                *d = Discovered {
                    generation: d.generation + 1,
                    errors: d.errors,
                    skipped: d.skipped,
                    ..Discovered::default()
                };
            });
            return;
        };
        let mut generation = 0;
        self.tx.send_modify(|d| {
            d.generation += 1;
            generation = d.generation;
            d.watching = Some(what.0.clone());
            d.synced = false;
            d.failing = false;
        });
        let stop = CancellationToken::new();
        let span = info_span!(
            "discovery",
            namespace = %what.0.namespace,
            selector = %what.0.label_selector,
        );
        let task = tokio::spawn(
            watch_secrets(
                what.0.clone(),
                what.1.clone(),
                Publisher {
                    tx: self.tx.clone(),
                    generation,
                },
                stop.clone(),
            )
            .instrument(span),
        );
        self.running = Some(Watching { what, stop, task });
    }

    /// The config with the discovered clusters (see [`merge`]); logs each new note once.
    pub fn merge(&mut self, config: &Config) -> Config {
        let (merged, notes) = merge(config, &self.tx.borrow());
        for n in &notes {
            if !self.logged.contains(n) {
                info!(note = %n, "discovered cluster left out");
            }
        }
        self.logged = notes.into_iter().collect();
        merged
    }

    /// Stops the watcher and waits for it.
    pub async fn shutdown(mut self) {
        if let Some(w) = self.running.take() {
            w.stop.cancel();
            let _ = w.task.await;
        }
    }
}

/// How the local cluster is reached: its kube source's kubeconfig and context if the config
/// gives it one, else the pod's service account (in-cluster).
fn local_connection(config: &Config) -> KubeSourceConfig {
    let local = config
        .local_cluster
        .as_ref()
        .and_then(|l| config.clusters.iter().find(|c| c.name == *l));
    match local.map(|c| &c.source) {
        Some(SourceConfig::Kube(k)) => KubeSourceConfig {
            kubeconfig: k.kubeconfig.clone(),
            context: k.context.clone(),
            ..KubeSourceConfig::default()
        },
        _ => KubeSourceConfig::default(),
    }
}

/// A watcher's only way to change [`Discovered`]: ignored once the watcher is not current.
struct Publisher {
    tx: watch::Sender<Discovered>,
    generation: u64,
}

impl Publisher {
    fn publish(&self, f: impl FnOnce(&mut Discovered)) {
        self.tx.send_if_modified(|d| {
            if d.generation != self.generation {
                return false;
            }
            f(d);
            true
        });
    }

    /// A failure: counted and shown; logged when the watcher starts failing.
    fn error(&self, error: String, failing: &mut bool) {
        if !*failing {
            warn!(%error, "cannot read the remote secrets: keeping the clusters found so far");
        } else {
            debug!(%error, "discovery error");
        }
        *failing = true;
        self.publish(|d| {
            d.errors += 1;
            d.last_error = Some(error);
            d.failing = true;
        });
    }
}

type SecretKey = (String, String);

/// Reads one secret: reused as is when its resourceVersion is known, else parsed, with what it
/// skips logged and counted once.
fn read(
    secret: &Secret,
    known: &BTreeMap<SecretKey, SecretClusters>,
    skipped: &mut u64,
) -> SecretClusters {
    let key = (secret.namespace().unwrap_or_default(), secret.name_any());
    if let Some(k) = known.get(&key)
        && k.resource_version.is_some()
        && k.resource_version == secret.resource_version()
    {
        return k.clone();
    }
    let s = clusters_from_secret(secret);
    for reason in &s.skipped {
        warn!(%reason, "skipped a malformed remote secret entry");
    }
    *skipped += s.skipped.len() as u64;
    let mut names = String::new();
    for c in &s.clusters {
        let _ = write!(
            names,
            "{}{}",
            if names.is_empty() { "" } else { "," },
            c.name
        );
    }
    info!(secret = %format!("{}/{}", s.namespace, s.name), clusters = %names, "remote secret read");
    s
}

/// Watches the remote secrets of the local cluster until `stop`.
async fn watch_secrets(
    cfg: IstioRemoteSecrets,
    local: KubeSourceConfig,
    out: Publisher,
    stop: CancellationToken,
) {
    let mut failing = false;
    let mut retry = crate::sources::backoff();
    let client: Client = loop {
        match kube_source::connect(&local).await {
            Ok(c) => break c,
            Err(error) => {
                out.error(error, &mut failing);
                if !pause(&mut retry, &stop).await {
                    return;
                }
                continue;
            }
        }
    };
    let api: Api<Secret> = Api::namespaced(client.clone(), &cfg.namespace);
    let wc = watcher::Config::default()
        .labels(&cfg.label_selector)
        .timeout(kube_source::WATCH_TIMEOUT_SECS);
    let mut events = watcher::watcher(api, wc)
        .backoff(crate::sources::backoff())
        .boxed();
    let mut known: BTreeMap<SecretKey, SecretClusters> = BTreeMap::new();
    let mut listing: Vec<Secret> = Vec::new();
    let mut probe = tokio::time::interval(Duration::from_secs(1));
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let ev = tokio::select! {
            _ = stop.cancelled() => return,
            // The watcher resumes silently after an outage: ask the API server whether it is back.
            _ = probe.tick(), if failing => {
                if client.apiserver_version().await.is_ok() {
                    info!("remote secrets readable again");
                    failing = false;
                    out.publish(|d| d.failing = false);
                }
                continue;
            }
            ev = events.next() => match ev {
                Some(ev) => ev,
                None => return,
            },
        };
        let mut skipped = 0;
        match ev {
            Ok(Event::Init) => listing.clear(),
            Ok(Event::InitApply(s)) => listing.push(s),
            Ok(Event::InitDone) => {
                // A (re)list replaces the whole set at once.
                let secrets: BTreeMap<SecretKey, SecretClusters> = listing
                    .drain(..)
                    .map(|s| read(&s, &known, &mut skipped))
                    .map(|s| ((s.namespace.clone(), s.name.clone()), s))
                    .collect();
                known = secrets;
                failing = false;
                out.publish(|d| {
                    d.secrets = known.clone();
                    d.skipped += skipped;
                    d.synced = true;
                    d.failing = false;
                });
            }
            Ok(Event::Apply(s)) => {
                let s = read(&s, &known, &mut skipped);
                known.insert((s.namespace.clone(), s.name.clone()), s);
                failing = false;
                out.publish(|d| {
                    d.secrets = known.clone();
                    d.skipped += skipped;
                    d.failing = false;
                });
            }
            Ok(Event::Delete(s)) => {
                let key = (s.namespace().unwrap_or_default(), s.name_any());
                if known.remove(&key).is_some() {
                    info!(secret = %format!("{}/{}", key.0, key.1), "remote secret deleted");
                }
                out.publish(|d| d.secrets = known.clone());
            }
            Err(error) => out.error(error.to_string(), &mut failing),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::Path;

    fn kubeconfig(name: &str, user: serde_json::Value) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: {name}\n  cluster:\n    server: https://{name}.example:443\n    certificate-authority-data: Zm9v\ncontexts:\n- name: {name}\n  context:\n    cluster: {name}\n    user: {name}\ncurrent-context: {name}\nusers:\n- name: {name}\n  user: {user}\n"
        )
    }

    fn token(name: &str) -> String {
        kubeconfig(name, json!({ "token": "t0k3n" }))
    }

    fn secret(name: &str, annotations: serde_json::Value, data: &[(&str, &str)]) -> Secret {
        let data: serde_json::Map<String, serde_json::Value> = data
            .iter()
            .map(|(k, v)| {
                let b =
                    serde_json::to_value(k8s_openapi::ByteString(v.as_bytes().to_vec())).unwrap();
                (k.to_string(), b)
            })
            .collect();
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {
                "name": name, "namespace": "istio-system", "resourceVersion": "7",
                "labels": { "istio/multiCluster": "true" },
                "annotations": annotations,
            },
            "data": data,
        }))
        .unwrap()
    }

    fn names(s: &SecretClusters) -> Vec<&str> {
        s.clusters.iter().map(|c| &*c.name).collect()
    }

    #[test]
    fn a_remote_secret_gives_one_cluster_per_key() {
        let s = clusters_from_secret(&secret(
            "istio-remote-secret-beta",
            json!({
                "networking.istio.io/cluster": "beta",
                "meshdns.io/region": "europe-west1",
                "meshdns.io/zones": "europe-west1-b, europe-west1-c",
                "meshdns.io/networks": "10.12.0.0/14,fd00:12::/48",
            }),
            &[("beta", &token("beta")), ("delta", &token("delta"))],
        ));
        assert_eq!(s.skipped, Vec::<String>::new());
        assert_eq!(names(&s), ["beta", "delta"]);
        assert_eq!(s.istio_cluster.as_deref(), Some("beta"));
        assert_eq!(s.resource_version.as_deref(), Some("7"));
        let c = &s.clusters[0];
        assert_eq!(
            c.origin.to_string(),
            "istio-secret istio-system/istio-remote-secret-beta"
        );
        assert_eq!(c.region.as_deref(), Some("europe-west1"));
        assert_eq!(c.zones, ["europe-west1-b", "europe-west1-c"]);
        assert_eq!(c.networks.len(), 2);
        match &c.source {
            SourceConfig::Kube(k) => {
                assert_eq!(k.context.as_deref(), Some("beta"));
                assert_eq!(k.kubeconfig, None);
                let inline = k.inline_kubeconfig.as_ref().unwrap();
                assert_eq!(&*inline.0, token("beta"));
                assert!(
                    !format!("{c:?}").contains("t0k3n"),
                    "Debug never shows credentials"
                );
            }
            other => panic!("{other:?}"),
        }
        // Without annotations: locality unknown.
        let s = clusters_from_secret(&secret("plain", json!({}), &[("beta", &token("beta"))]));
        assert_eq!(
            (&s.clusters[0].region, s.clusters[0].zones.len()),
            (&None, 0)
        );
    }

    #[test]
    fn malformed_keys_and_kubeconfigs_are_skipped_one_by_one() {
        let no_context = "apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\n";
        let no_server = token("gamma").replace("    server: https://gamma.example:443\n", "");
        let cases: &[(&str, String, &str)] = &[
            ("Beta", token("beta"), "not a cluster name"),
            (
                "gamma",
                "this: is not a kubeconfig\n".into(),
                "no current-context",
            ),
            ("gamma", "- just\n- a list\n".into(), "not a kubeconfig"),
            ("gamma", no_context.into(), "no current-context"),
            ("gamma", no_server, "has no server"),
            (
                "gamma",
                token("gamma").replace("current-context: gamma", "current-context: other"),
                "no context \"other\"",
            ),
            (
                "gamma",
                kubeconfig(
                    "gamma",
                    json!({ "exec": { "apiVersion": "client.authentication.k8s.io/v1", "command": "sh" } }),
                ),
                "exec plugin",
            ),
            (
                "gamma",
                kubeconfig(
                    "gamma",
                    json!({ "tokenFile": "/var/run/secrets/kubernetes.io/serviceaccount/token" }),
                ),
                "tokenFile",
            ),
            (
                "gamma",
                kubeconfig(
                    "gamma",
                    json!({ "auth-provider": { "name": "gcp", "config": { "cmd-path": "/bin/sh" } } }),
                ),
                "auth provider",
            ),
        ];
        for (key, value, why) in cases {
            let s = clusters_from_secret(&secret(
                "mixed",
                json!({}),
                &[(key, value), ("delta", &token("delta"))],
            ));
            assert_eq!(names(&s), ["delta"], "{key}: {value}");
            assert_eq!(s.skipped.len(), 1, "{key}: {value}");
            assert!(
                s.skipped[0].contains(why) && s.skipped[0].contains("istio-system/mixed"),
                "{:?} lacks {why:?}",
                s.skipped[0]
            );
        }
        // Only one context and no current-context: that one. OIDC needs no file or command.
        let only = token("beta").replace("current-context: beta\n", "");
        let oidc = kubeconfig(
            "gamma",
            json!({ "auth-provider": { "name": "oidc", "config": { "id-token": "x" } } }),
        );
        let s = clusters_from_secret(&secret(
            "ok",
            json!({}),
            &[("beta", &only), ("gamma", &oidc)],
        ));
        assert_eq!((names(&s), s.skipped.len()), (vec!["beta", "gamma"], 0));
        // A malformed annotation skips the whole secret.
        let s = clusters_from_secret(&secret(
            "bad-net",
            json!({ "meshdns.io/networks": "10.0.0.0/8, nonsense" }),
            &[("beta", &token("beta"))],
        ));
        assert!(s.clusters.is_empty());
        assert!(
            s.skipped[0].contains("meshdns.io/networks"),
            "{:?}",
            s.skipped
        );
    }

    fn discovered(secrets: Vec<Secret>) -> Discovered {
        let mut d = Discovered::default();
        for s in secrets {
            let s = clusters_from_secret(&s);
            d.secrets.insert((s.namespace.clone(), s.name.clone()), s);
        }
        d
    }

    #[test]
    fn the_config_wins_and_the_local_cluster_is_never_taken_from_a_secret() {
        let config = Config::parse(
            Path::new("/etc/meshdns/meshdns.yaml"),
            "local_cluster: alpha\nclusters:\n  - { name: alpha, source: { kube: {} } }\n  - { name: gamma, region: r1, source: { kube: { kubeconfig: g } } }\ndiscover: { istio_remote_secrets: {} }\n",
        )
        .unwrap();
        let d = discovered(vec![
            secret(
                "b-secret",
                json!({}),
                &[("zeta", &token("zeta")), ("beta", &token("beta"))],
            ),
            secret(
                "a-secret",
                json!({}),
                &[("alpha", &token("alpha")), ("gamma", &token("gamma"))],
            ),
            secret("c-secret", json!({}), &[("beta", &token("other"))]),
        ]);
        let (merged, notes) = merge(&config, &d);
        let got: Vec<(&str, String)> = merged
            .clusters
            .iter()
            .map(|c| (&*c.name, c.origin.to_string()))
            .collect();
        assert_eq!(
            got,
            [
                ("alpha", "config".to_string()),
                ("gamma", "config".to_string()),
                ("beta", "istio-secret istio-system/b-secret".to_string()),
                ("zeta", "istio-secret istio-system/b-secret".to_string()),
            ]
        );
        assert_eq!(merged.clusters[1].region.as_deref(), Some("r1"));
        assert_eq!(notes.len(), 3, "{notes:?}");
        assert!(notes[0].contains("alpha") && notes[0].contains("own cluster"));
        assert!(notes[1].contains("gamma") && notes[1].contains("config, which wins"));
        assert!(notes[2].contains("c-secret") && notes[2].contains("b-secret"));
        // Nothing discovered: the config as it is.
        let (merged, notes) = merge(&config, &Discovered::default());
        assert_eq!(merged.clusters, config.clusters);
        assert!(notes.is_empty());
    }

    #[test]
    fn a_rotated_kubeconfig_is_a_changed_source() {
        let a = clusters_from_secret(&secret("s", json!({}), &[("beta", &token("beta"))]));
        let b = clusters_from_secret(&secret(
            "s",
            json!({}),
            &[("beta", &token("beta").replace("t0k3n", "n3wt0k3n"))],
        ));
        assert_ne!(a.clusters[0].source, b.clusters[0].source);
        let again = clusters_from_secret(&secret("s", json!({}), &[("beta", &token("beta"))]));
        assert_eq!(a.clusters[0].source, again.clusters[0].source);
    }
}

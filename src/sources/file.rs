//! The `file` source: one cluster's services from a YAML file, reloaded when it changes.
//!
//! It powers the embedded demo and publishes endpoints that live outside Kubernetes (VMs,
//! managed databases). The format mirrors Services and EndpointSlices:
//!
//! ```yaml
//! services:
//!   - name: reviews
//!     namespace: bookinfo
//!     ports: [{ name: http, port: 9080, protocol: TCP }]
//!     endpoints:
//!       - { ip: 10.8.1.5, zone: us-central1-a, hostname: reviews-v1-abc, ready: true }
//!   - { name: legacy-api, namespace: default, external_name: api.example.com }
//! ```
//!
//! The file is polled (every 250 ms) rather than watched with inotify: polling follows
//! Kubernetes ConfigMap symlink swaps and editors' rename-on-save without special cases, and
//! costs one `stat` per tick. A file that fails to parse or validate is rejected as a whole and
//! the last good slice stays; a file that disappears empties the cluster only once it has been
//! gone for a grace period (an editor's rename puts it back first).

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use serde_saphyr::Spanned;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::catalog::{SourceHandle, Update};
use crate::config::{ConfigError, parse_fqdn};
use crate::model::{
    AnswerPolicy, Endpoint, Policy, Port, Protocol, Service, ServiceKey, Slice, intern,
    is_dns_label, is_port_name,
};

const POLL: Duration = Duration::from_millis(250);
/// How long a file must stay missing before its cluster is emptied.
const GONE_GRACE: Duration = Duration::from_secs(2);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FleetFile {
    #[serde(default)]
    services: Vec<FileService>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileService {
    name: Spanned<String>,
    namespace: Spanned<String>,
    /// Documentation only: a headless service answers exactly as a normal one.
    #[serde(default)]
    #[allow(dead_code)]
    headless: bool,
    #[serde(default)]
    ports: Vec<FilePort>,
    #[serde(default)]
    endpoints: Vec<FileEndpoint>,
    #[serde(default)]
    external_name: Option<Spanned<String>>,
    /// Like `publishNotReadyAddresses`: answer endpoints that are not ready.
    #[serde(default)]
    publish_not_ready: bool,
    /// Locality policy of this service: `all` or `nearest` (default: the config's).
    #[serde(default)]
    policy: Option<Policy>,
    /// At most this many answers per response (default: the config's).
    #[serde(default)]
    max_answers: Option<u16>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePort {
    #[serde(default)]
    name: Option<Spanned<String>>,
    port: Spanned<u16>,
    #[serde(default)]
    protocol: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEndpoint {
    ip: IpAddr,
    #[serde(default)]
    hostname: Option<Spanned<String>>,
    #[serde(default)]
    zone: Option<String>,
    #[serde(default)]
    node: Option<String>,
    #[serde(default = "yes")]
    ready: bool,
}

fn yes() -> bool {
    true
}

/// Reads and validates a fleet file into a slice.
pub fn load(path: &Path) -> Result<Slice, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(path, &text)
}

pub fn parse(path: &Path, text: &str) -> Result<Slice, ConfigError> {
    let file: FleetFile = serde_saphyr::from_str(text).map_err(|e| ConfigError::Yaml {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let invalid =
        |at: &serde_saphyr::Location, key: String, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            line: at.line(),
            column: at.column(),
            key,
            message,
        };
    let mut slice = Slice::new();
    for (i, s) in file.services.into_iter().enumerate() {
        let at = format!("services[{i}]");
        for (what, v) in [("name", &s.name), ("namespace", &s.namespace)] {
            if !is_dns_label(&v.value) {
                return Err(invalid(
                    &v.referenced,
                    format!("{at}.{what}"),
                    format!("{:?} is not a DNS label", v.value),
                ));
            }
        }
        let key = ServiceKey::new(&s.namespace.value, &s.name.value);
        if slice.contains_key(&key) {
            return Err(invalid(
                &s.name.referenced,
                format!("{at}.name"),
                format!("service {key} is listed twice"),
            ));
        }
        let service = if let Some(ext) = s.external_name {
            if !s.endpoints.is_empty() || !s.ports.is_empty() {
                return Err(invalid(
                    &ext.referenced,
                    format!("{at}.external_name"),
                    "an ExternalName service has no ports or endpoints".into(),
                ));
            }
            let name = parse_fqdn(&ext.value)
                .map_err(|m| invalid(&ext.referenced, format!("{at}.external_name"), m))?;
            Service::ExternalName(name)
        } else {
            let mut ports = Vec::with_capacity(s.ports.len());
            for (j, p) in s.ports.into_iter().enumerate() {
                let pat = format!("{at}.ports[{j}]");
                let protocol = match &p.protocol {
                    None => Protocol::Tcp,
                    Some(proto) => Protocol::from_label(&proto.value).ok_or_else(|| {
                        invalid(
                            &proto.referenced,
                            format!("{pat}.protocol"),
                            format!("{:?} is not TCP, UDP or SCTP", proto.value),
                        )
                    })?,
                };
                if p.port.value == 0 {
                    return Err(invalid(
                        &p.port.referenced,
                        format!("{pat}.port"),
                        "port 0 is not a port".into(),
                    ));
                }
                let name = match p.name {
                    None => None,
                    Some(n) if is_port_name(&n.value) => Some(Arc::from(n.value.as_str())),
                    Some(n) => {
                        return Err(invalid(
                            &n.referenced,
                            format!("{pat}.name"),
                            format!(
                                "{:?} is not a port name (at most 15 lowercase letters, digits and '-')",
                                n.value
                            ),
                        ));
                    }
                };
                ports.push(Port {
                    name,
                    port: p.port.value,
                    protocol,
                });
            }
            let mut endpoints = Vec::with_capacity(s.endpoints.len());
            let mut seen = HashSet::new();
            for (j, e) in s.endpoints.into_iter().enumerate() {
                let hostname = match e.hostname {
                    None => None,
                    Some(h) if is_dns_label(&h.value) => Some(Arc::from(h.value.as_str())),
                    Some(h) => {
                        return Err(invalid(
                            &h.referenced,
                            format!("{at}.endpoints[{j}].hostname"),
                            format!("{:?} is not a DNS label", h.value),
                        ));
                    }
                };
                // The same address listed twice is one endpoint, as with EndpointSlices.
                if !seen.insert(e.ip) {
                    continue;
                }
                endpoints.push(Endpoint {
                    ip: e.ip,
                    hostname,
                    zone: e.zone.as_deref().map(intern),
                    node: e.node.as_deref().map(intern),
                    ready: e.ready || s.publish_not_ready,
                });
            }
            Service::Endpoints {
                ports,
                endpoints,
                policy: AnswerPolicy {
                    policy: s.policy,
                    max_answers: s.max_answers.filter(|m| *m > 0),
                },
            }
        };
        slice.insert(key, Arc::new(service));
    }
    Ok(slice)
}

/// What identifies a version of the file without reading it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Fingerprint {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn fingerprint(path: &Path) -> Option<Fingerprint> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(Fingerprint {
        modified: m.modified().ok(),
        len: m.len(),
        inode: m.ino(),
    })
}

/// Watches `path` and keeps the cluster's slice in step with it until `stop`. Runs inside the
/// source's span (cluster, path), see `sources::spawn_all`.
pub async fn run(path: PathBuf, handle: SourceHandle, stop: CancellationToken) {
    let mut current: Option<Fingerprint> = None;
    let mut missing_since: Option<tokio::time::Instant> = None;
    let mut emptied = false;
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let Some(fp) = fingerprint(&path) else {
            let since = *missing_since.get_or_insert_with(tokio::time::Instant::now);
            if !emptied && since.elapsed() >= GONE_GRACE {
                warn!("file is gone: the cluster now has no services");
                handle.send(Update::Replace(Slice::new()));
                emptied = true;
                current = None;
            }
            continue;
        };
        missing_since = None;
        if current == Some(fp) {
            continue;
        }
        current = Some(fp);
        match load(&path) {
            Ok(slice) => {
                info!(services = slice.len(), "loaded");
                emptied = false;
                if !handle.send(Update::Replace(slice)) {
                    return;
                }
            }
            Err(error) => {
                warn!(%error, "invalid file: keeping the last good data");
                if !handle.send(Update::Rejected(error.to_string())) {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        parse(Path::new("/demo/vms.yaml"), text)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_else(|| panic!("accepted: {text}"))
    }

    #[test]
    fn parses_every_kind() {
        let slice = parse(
            Path::new("x.yaml"),
            r#"
services:
  - name: reviews
    namespace: bookinfo
    ports: [{ name: http, port: 9080, protocol: TCP }, { port: 9443 }]
    endpoints:
      - { ip: 10.8.1.5, zone: us-central1-a, hostname: reviews-v1-abc }
      - { ip: 10.8.1.5 }
      - { ip: "fd00::5", ready: false }
  - { name: legacy-api, namespace: default, external_name: api.example.com }
"#,
        )
        .unwrap();
        assert_eq!(slice.len(), 2);
        let reviews = slice.get(&ServiceKey::new("bookinfo", "reviews")).unwrap();
        match &**reviews {
            Service::Endpoints {
                ports, endpoints, ..
            } => {
                assert_eq!(ports.len(), 2);
                assert_eq!(endpoints.len(), 2, "duplicate address merged");
                assert!(endpoints[0].ready && !endpoints[1].ready);
            }
            other => panic!("{other:?}"),
        }
        let legacy = slice
            .get(&ServiceKey::new("default", "legacy-api"))
            .unwrap();
        assert!(
            matches!(&**legacy, Service::ExternalName(n) if n.to_ascii() == "api.example.com.")
        );
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let cases: &[(&str, &[&str])] = &[
            (
                "services:\n  - name: Reviews\n    namespace: b\n",
                &["vms.yaml:2:", "services[0].name"],
            ),
            (
                "services:\n  - name: a\n    namespace: b\n    endpoints: [{ ip: 10.0.0.300 }]\n",
                &["vms.yaml", "line 4"],
            ),
            (
                "services:\n  - name: a\n    namespace: b\n    ports: [{ name: http, port: 80, protocol: QUIC }]\n",
                &["vms.yaml:4:", "services[0].ports[0].protocol"],
            ),
            (
                "services:\n  - name: a\n    namespace: b\n  - name: a\n    namespace: b\n",
                &["vms.yaml:4:", "listed twice"],
            ),
            (
                "services:\n  - name: a\n    namespace: b\n    external_name: x.com\n    endpoints: [{ ip: 10.0.0.1 }]\n",
                &["vms.yaml:4:", "external_name"],
            ),
            (
                "services:\n  - name: a\n    namespace: b\n    readyy: true\n",
                &["line 4", "readyy"],
            ),
        ];
        for (text, needles) in cases {
            let e = err(text);
            for n in *needles {
                assert!(e.contains(n), "error for {text:?} lacks {n:?}: {e}");
            }
        }
    }
}

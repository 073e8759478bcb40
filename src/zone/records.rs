//! What one service answers, merged over every cluster that has it.
//!
//! A [`ServiceView`] is built once per change of the service (in any cluster) by the catalog
//! writer, then shared by every snapshot until the service changes again. It holds the answer
//! data in compact form (addresses, labels, ports); turning it into records at query time is a
//! copy, not a computation, and keeps memory proportional to endpoints rather than to names.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use hickory_proto::rr::Name;

use super::ZoneSettings;
use super::locality::{Locality, Tier};
use crate::model::{AnswerPolicy, ClusterId, Policy, Protocol, Service, ServiceKey};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Addrs {
    pub v4: Vec<Ipv4Addr>,
    pub v6: Vec<Ipv6Addr>,
}

impl Addrs {
    pub fn push(&mut self, ip: IpAddr) {
        match ip {
            IpAddr::V4(a) if !self.v4.contains(&a) => self.v4.push(a),
            IpAddr::V6(a) if !self.v6.contains(&a) => self.v6.push(a),
            _ => {}
        }
    }

    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.v4
            .iter()
            .map(|a| IpAddr::V4(*a))
            .chain(self.v6.iter().map(|a| IpAddr::V6(*a)))
    }
}

/// One cluster's part of a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterPart {
    pub cluster: ClusterId,
    /// The cluster's region, for locality tiers.
    pub region: Option<Arc<str>>,
    /// Ready endpoint addresses, sorted.
    pub addrs: Addrs,
    /// Endpoint label → its addresses (a hostname may carry an IPv4 and an IPv6 address).
    pub endpoints: BTreeMap<Arc<str>, Addrs>,
}

/// One ready address of the service, with what its locality tier depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub ip: IpAddr,
    /// Index into `ServiceView::clusters`.
    pub cluster: usize,
    pub zone: Option<Arc<str>>,
}

/// One SRV target: an endpoint of one cluster, on one port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SrvTarget {
    /// Index into `ServiceView::clusters`.
    pub cluster: usize,
    pub label: Arc<str>,
    pub port: u16,
    pub zone: Option<Arc<str>>,
}

/// SRV data for one named port: `_<name>._<proto>.<svc>.<ns>.svc.<zone>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SrvSet {
    pub name: Arc<str>,
    pub proto: Protocol,
    pub targets: Vec<SrvTarget>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceView {
    pub key: ServiceKey,
    /// Set when the service is an ExternalName in every cluster that has it.
    pub external_name: Option<Name>,
    /// Ready addresses over all clusters, in base order (local cluster first, then config
    /// order, then address); answers reorder them by the client's locality tier.
    pub members: Vec<Member>,
    /// Clusters that have this service, in answer order (local first, then config order).
    pub clusters: Vec<ClusterPart>,
    pub srv: Vec<SrvSet>,
    /// The effective policy: config override, else the service's own, else the global one.
    pub policy: AnswerPolicy,
}

impl ServiceView {
    /// Merges what each cluster says about `key`. `parts` comes in answer order. Returns `None`
    /// when no cluster has the service.
    ///
    /// When clusters disagree on the kind, endpoints win over ExternalName (a service with
    /// real endpoints somewhere is reachable); among ExternalNames the first cluster wins.
    pub fn build<'a>(
        key: ServiceKey,
        parts: impl IntoIterator<Item = (&'a ClusterId, &'a Service)>,
        settings: &ZoneSettings,
    ) -> Option<ServiceView> {
        let parts: Vec<_> = parts.into_iter().collect();
        if parts.is_empty() {
            return None;
        }
        let own = parts
            .iter()
            .find_map(|(_, s)| match s {
                Service::Endpoints { policy, .. } if *policy != AnswerPolicy::default() => {
                    Some(*policy)
                }
                _ => None,
            })
            .unwrap_or_default();
        let mut view = ServiceView {
            policy: settings.policy_for(&key, own),
            key,
            external_name: None,
            members: Vec::new(),
            clusters: Vec::new(),
            srv: Vec::new(),
        };
        let with_endpoints = parts
            .iter()
            .any(|(_, s)| matches!(s, Service::Endpoints { .. }));
        if !with_endpoints {
            view.external_name = parts.iter().find_map(|(_, s)| match s {
                Service::ExternalName(n) => Some(n.clone()),
                Service::Endpoints { .. } => None,
            });
            return Some(view);
        }

        let mut seen = HashSet::new();
        // (port name, proto) → targets, kept sorted for a stable answer.
        let mut srv: BTreeMap<(Arc<str>, Protocol), Vec<SrvTarget>> = BTreeMap::new();
        for (cluster, service) in parts {
            if matches!(service, Service::ExternalName(_)) {
                continue;
            }
            let idx = view.clusters.len();
            let mut part = ClusterPart {
                cluster: cluster.clone(),
                region: settings.region_of(cluster),
                addrs: Addrs::default(),
                endpoints: BTreeMap::new(),
            };
            let mut ready: Vec<_> = service.ready_endpoints().collect();
            ready.sort_by_key(|e| e.ip);
            let mut zones: BTreeMap<Arc<str>, Option<Arc<str>>> = BTreeMap::new();
            for e in &ready {
                part.addrs.push(e.ip);
                let label = e.label();
                part.endpoints.entry(label.clone()).or_default().push(e.ip);
                zones.entry(label).or_insert_with(|| e.zone.clone());
                // The same address in two clusters is answered once, for the first.
                if seen.insert(e.ip) {
                    view.members.push(Member {
                        ip: e.ip,
                        cluster: idx,
                        zone: e.zone.clone(),
                    });
                }
            }
            for port in service.ports() {
                let Some(name) = &port.name else { continue };
                let targets = srv.entry((name.clone(), port.protocol)).or_default();
                for (label, zone) in &zones {
                    let t = SrvTarget {
                        cluster: idx,
                        label: label.clone(),
                        port: port.port,
                        zone: zone.clone(),
                    };
                    if !targets.contains(&t) {
                        targets.push(t);
                    }
                }
            }
            view.clusters.push(part);
        }
        view.srv = srv
            .into_iter()
            .map(|((name, proto), targets)| SrvSet {
                name,
                proto,
                targets,
            })
            .collect();
        Some(view)
    }

    pub fn cluster(&self, name: &str) -> Option<&ClusterPart> {
        self.clusters.iter().find(|c| &*c.cluster == name)
    }

    pub fn cluster_index(&self, name: &str) -> Option<usize> {
        self.clusters.iter().position(|c| &*c.cluster == name)
    }

    /// The tier of a member (or SRV target) of cluster `idx` in `zone` for `client`.
    pub fn tier(&self, client: &Locality, idx: usize, zone: Option<&str>) -> Tier {
        let region = self.clusters.get(idx).and_then(|p| p.region.as_deref());
        client.tier(region, zone)
    }

    /// Applies the answer policy to items already sorted by tier: `nearest` keeps the first
    /// tier, `max_answers` caps the count.
    pub fn apply_policy<T>(&self, tiered: &mut Vec<(Tier, T)>) {
        if self.policy.policy == Some(Policy::Nearest)
            && let Some(first) = tiered.first().map(|(t, _)| *t)
        {
            tiered.retain(|(t, _)| *t == first);
        }
        if let Some(max) = self.policy.max_answers {
            tiered.truncate(usize::from(max));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::model::{Endpoint, Port};

    fn settings() -> ZoneSettings {
        let config = Config::parse(
            std::path::Path::new("/t/m.yaml"),
            r#"
local_cluster: alpha
locality: { services: [{ namespace: ns, name: capped, max_answers: 1 }] }
clusters:
  - { name: alpha, region: r1, source: { file: a.yaml } }
  - { name: beta, region: r2, source: { file: b.yaml } }
"#,
        )
        .unwrap();
        ZoneSettings::from_config(&config)
    }

    fn ep(ip: &str, host: Option<&str>, zone: Option<&str>, ready: bool) -> Endpoint {
        Endpoint {
            ip: ip.parse().unwrap(),
            hostname: host.map(Into::into),
            zone: zone.map(Into::into),
            node: None,
            ready,
        }
    }

    fn svc(endpoints: Vec<Endpoint>, policy: AnswerPolicy) -> Service {
        Service::Endpoints {
            policy,
            ports: vec![
                Port {
                    name: Some("http".into()),
                    port: 9080,
                    protocol: Protocol::Tcp,
                },
                Port {
                    name: None,
                    port: 9443,
                    protocol: Protocol::Tcp,
                },
            ],
            endpoints,
        }
    }

    #[test]
    fn merges_clusters_in_order_and_skips_not_ready() {
        let s = settings();
        let alpha: ClusterId = "alpha".into();
        let beta: ClusterId = "beta".into();
        let a = svc(
            vec![
                ep("10.8.1.6", None, Some("z1"), true),
                ep("10.8.1.5", Some("r-1"), Some("z1"), true),
                ep("10.8.1.7", None, None, false),
            ],
            AnswerPolicy::default(),
        );
        let b = svc(
            vec![
                ep("10.12.0.5", None, None, true),
                ep("fd00::5", None, None, true),
            ],
            AnswerPolicy::default(),
        );
        let v = ServiceView::build(ServiceKey::new("ns", "r"), [(&alpha, &a), (&beta, &b)], &s)
            .unwrap();
        let ips: Vec<String> = v.members.iter().map(|m| m.ip.to_string()).collect();
        assert_eq!(ips, ["10.8.1.5", "10.8.1.6", "10.12.0.5", "fd00::5"]);
        assert_eq!(v.clusters.len(), 2);
        assert_eq!(v.clusters[1].region.as_deref(), Some("r2"));
        let labels: Vec<&str> = v.clusters[0].endpoints.keys().map(|k| &**k).collect();
        assert_eq!(labels, ["10-8-1-6", "r-1"]);
        // One SRV set, for the named port only, one target per ready endpoint.
        assert_eq!(v.srv.len(), 1);
        assert_eq!(v.srv[0].targets.len(), 4);
        assert_eq!(v.srv[0].targets[0].zone.as_deref(), Some("z1"));
        assert_eq!(v.policy.policy, Some(Policy::All), "the global default");
    }

    #[test]
    fn policies_resolve_override_then_own_then_default() {
        let s = settings();
        let alpha: ClusterId = "alpha".into();
        let own = AnswerPolicy {
            policy: Some(Policy::Nearest),
            max_answers: Some(5),
        };
        let a = svc(vec![ep("10.0.0.1", None, None, true)], own);
        let v = ServiceView::build(ServiceKey::new("ns", "x"), [(&alpha, &a)], &s).unwrap();
        assert_eq!(v.policy, own);
        let v = ServiceView::build(ServiceKey::new("ns", "capped"), [(&alpha, &a)], &s).unwrap();
        assert_eq!(
            v.policy,
            AnswerPolicy {
                policy: Some(Policy::Nearest),
                max_answers: Some(1)
            }
        );
        let mut tiered = vec![(0, 'a'), (0, 'b'), (1, 'c')];
        v.apply_policy(&mut tiered);
        assert_eq!(tiered, [(0, 'a')]);
    }

    #[test]
    fn endpoints_win_over_external_name() {
        let s = settings();
        let alpha: ClusterId = "alpha".into();
        let beta: ClusterId = "beta".into();
        let ext = Service::ExternalName(Name::from_ascii("api.example.com.").unwrap());
        let only_ext = ServiceView::build(ServiceKey::new("d", "x"), [(&alpha, &ext)], &s).unwrap();
        assert!(only_ext.external_name.is_some());
        let real = svc(
            vec![ep("10.0.0.1", None, None, true)],
            AnswerPolicy::default(),
        );
        let mixed = ServiceView::build(
            ServiceKey::new("d", "x"),
            [(&alpha, &ext), (&beta, &real)],
            &s,
        )
        .unwrap();
        assert!(mixed.external_name.is_none());
        assert_eq!(mixed.clusters.len(), 1);
        assert!(ServiceView::build(ServiceKey::new("d", "x"), [], &s).is_none());
    }
}

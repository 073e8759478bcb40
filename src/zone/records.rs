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
use crate::model::{AnswerPolicy, ClusterId, Policy, Protocol, Service, ServiceKey, ip_label};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Addrs {
    pub v4: Vec<Ipv4Addr>,
    pub v6: Vec<Ipv6Addr>,
}

impl Addrs {
    /// Adds `ip` unless present (linear: for the few addresses of one name).
    pub fn push(&mut self, ip: IpAddr) {
        match ip {
            IpAddr::V4(a) if !self.v4.contains(&a) => self.v4.push(a),
            IpAddr::V6(a) if !self.v6.contains(&a) => self.v6.push(a),
            _ => {}
        }
    }

    /// Adds `ip`, given in ascending order (O(1)).
    fn push_sorted(&mut self, ip: IpAddr) {
        match ip {
            IpAddr::V4(a) if self.v4.last() != Some(&a) => self.v4.push(a),
            IpAddr::V6(a) if self.v6.last() != Some(&a) => self.v6.push(a),
            _ => {}
        }
    }

    fn shrink_to_fit(&mut self) {
        self.v4.shrink_to_fit();
        self.v6.shrink_to_fit();
    }

    pub fn one(ip: IpAddr) -> Addrs {
        let mut a = Addrs::default();
        a.push(ip);
        a
    }

    /// Whether `ip` is one of these (sorted) addresses.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => self.v4.binary_search(&a).is_ok(),
            IpAddr::V6(a) => self.v6.binary_search(&a).is_ok(),
        }
    }

    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.v4
            .iter()
            .map(|a| IpAddr::V4(*a))
            .chain(self.v6.iter().map(|a| IpAddr::V6(*a)))
    }
}

/// The label that names one endpoint under its cluster: its hostname, else its address with
/// dashes ([`ip_label`]) — kept as the address, so that the common case costs no string.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Label {
    Host(Arc<str>),
    Ip(IpAddr),
}

impl Label {
    pub fn text(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Label::Host(h) => std::borrow::Cow::Borrowed(h),
            Label::Ip(ip) => std::borrow::Cow::Owned(ip_label(*ip)),
        }
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
    /// Endpoints with a hostname → their addresses (a hostname may carry an IPv4 and an
    /// IPv6 address).
    pub hosts: BTreeMap<Arc<str>, Addrs>,
    /// Addresses of endpoints without a hostname (named by their address), sorted.
    pub unnamed: Addrs,
}

impl ClusterPart {
    /// The addresses of the endpoint named `label`.
    pub fn endpoint(&self, label: &str) -> Option<Addrs> {
        if let Some(a) = self.hosts.get(label) {
            return Some(a.clone());
        }
        let ip = parse_ip_label(label)?;
        self.unnamed.contains(ip).then(|| Addrs::one(ip))
    }

    /// Every endpoint: its label and its addresses.
    pub fn endpoints(&self) -> impl Iterator<Item = (Label, Addrs)> + '_ {
        self.hosts
            .iter()
            .map(|(h, a)| (Label::Host(h.clone()), a.clone()))
            .chain(
                self.unnamed
                    .iter()
                    .map(|ip| (Label::Ip(ip), Addrs::one(ip))),
            )
    }

    /// The addresses of one endpoint, by label.
    pub fn addrs_of(&self, label: &Label) -> Addrs {
        match label {
            Label::Host(h) => self.hosts.get(h).cloned().unwrap_or_default(),
            Label::Ip(ip) => Addrs::one(*ip),
        }
    }
}

/// The address named by an [`ip_label`], if `label` is one.
pub fn parse_ip_label(label: &str) -> Option<IpAddr> {
    let parts: Vec<&str> = label.split('-').collect();
    match parts.len() {
        4 => {
            let mut o = [0u8; 4];
            for (i, p) in parts.iter().enumerate() {
                // Canonical form only: no leading zeros, so one address has one name.
                if p.is_empty() || (p.len() > 1 && p.starts_with('0')) {
                    return None;
                }
                o[i] = p.parse().ok()?;
            }
            Some(IpAddr::from(o))
        }
        8 => {
            let mut s = [0u16; 8];
            for (i, p) in parts.iter().enumerate() {
                if p.len() != 4 {
                    return None;
                }
                s[i] = u16::from_str_radix(p, 16).ok()?;
            }
            Some(IpAddr::from(s))
        }
        _ => None,
    }
}

/// One ready address of the service, with what its locality tier depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub ip: IpAddr,
    /// Index into `ServiceView::clusters`.
    pub cluster: u16,
    pub zone: Option<Arc<str>>,
}

/// One SRV target: an endpoint of one cluster, on one port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SrvTarget {
    /// Index into `ServiceView::clusters`.
    pub cluster: u16,
    pub label: Label,
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
            let Ok(idx) = u16::try_from(view.clusters.len()) else {
                break;
            };
            let mut part = ClusterPart {
                cluster: cluster.clone(),
                region: settings.region_of(cluster),
                addrs: Addrs::default(),
                hosts: BTreeMap::new(),
                unnamed: Addrs::default(),
            };
            let mut ready: Vec<_> = service.ready_endpoints().collect();
            ready.sort_by_key(|e| e.ip);
            view.members.reserve(ready.len());
            // Each endpoint once, with its zone: what SRV targets are made of.
            let mut labels: Vec<(Label, Option<Arc<str>>)> = Vec::with_capacity(ready.len());
            for e in &ready {
                part.addrs.push_sorted(e.ip);
                match &e.hostname {
                    Some(h) => {
                        let addrs = part.hosts.entry(h.clone()).or_default();
                        if addrs.is_empty() {
                            labels.push((Label::Host(h.clone()), e.zone.clone()));
                        }
                        addrs.push(e.ip);
                    }
                    None => {
                        if !part.unnamed.contains(e.ip) {
                            part.unnamed.push_sorted(e.ip);
                            labels.push((Label::Ip(e.ip), e.zone.clone()));
                        }
                    }
                }
                // The same address in two clusters is answered once, for the first.
                if seen.insert(e.ip) {
                    view.members.push(Member {
                        ip: e.ip,
                        cluster: idx,
                        zone: e.zone.clone(),
                    });
                }
            }
            labels.sort_by(|a, b| a.0.cmp(&b.0));
            part.addrs.shrink_to_fit();
            part.unnamed.shrink_to_fit();
            for port in service.ports() {
                let Some(name) = &port.name else { continue };
                let targets = srv.entry((name.clone(), port.protocol)).or_default();
                targets.extend(labels.iter().map(|(label, zone)| SrvTarget {
                    cluster: idx,
                    label: label.clone(),
                    port: port.port,
                    zone: zone.clone(),
                }));
            }
            view.clusters.push(part);
        }
        view.srv = srv
            .into_iter()
            .map(|((name, proto), mut targets)| {
                targets.shrink_to_fit();
                SrvSet {
                    name,
                    proto,
                    targets,
                }
            })
            .collect();
        // Views live as long as their service does not change: no slack.
        view.members.shrink_to_fit();
        Some(view)
    }

    pub fn cluster(&self, name: &str) -> Option<&ClusterPart> {
        self.clusters.iter().find(|c| &*c.cluster == name)
    }

    pub fn cluster_index(&self, name: &str) -> Option<u16> {
        self.clusters
            .iter()
            .position(|c| &*c.cluster == name)
            .and_then(|i| u16::try_from(i).ok())
    }

    /// The tier of a member (or SRV target) of cluster `idx` in `zone` for `client`.
    pub fn tier(&self, client: &Locality, idx: u16, zone: Option<&str>) -> Tier {
        let region = self
            .clusters
            .get(usize::from(idx))
            .and_then(|p| p.region.as_deref());
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
        let labels: Vec<String> = v.clusters[0]
            .endpoints()
            .map(|(l, _)| l.text().into_owned())
            .collect();
        assert_eq!(labels, ["r-1", "10-8-1-6"]);
        assert_eq!(
            v.clusters[0].endpoint("10-8-1-6"),
            Some(Addrs::one("10.8.1.6".parse().unwrap()))
        );
        assert_eq!(
            v.clusters[0].endpoint("10-8-1-5"),
            None,
            "named by its hostname only"
        );
        assert_eq!(
            v.clusters[0].endpoint("r-1"),
            Some(Addrs::one("10.8.1.5".parse().unwrap()))
        );
        // One SRV set, for the named port only, one target per ready endpoint.
        assert_eq!(v.srv.len(), 1);
        assert_eq!(v.srv[0].targets.len(), 4);
        assert_eq!(v.srv[0].targets[0].zone.as_deref(), Some("z1"));
        for (label, ip) in [
            ("10-0-0-1", "10.0.0.1"),
            ("fd00-0000-0000-0000-0000-0000-0000-0005", "fd00::5"),
        ] {
            assert_eq!(parse_ip_label(label), Some(ip.parse().unwrap()));
        }
        for bad in ["10-0-0", "010-0-0-1", "fd00--5", "a-b-c-d", "r-1"] {
            assert_eq!(parse_ip_label(bad), None, "{bad}");
        }
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

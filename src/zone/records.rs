//! What one service answers, merged over every cluster that has it.
//!
//! A [`ServiceView`] is built once per change of the service (in any cluster) by the catalog
//! writer, then shared by every snapshot until the service changes again. It holds the answer
//! data in compact form (addresses, labels, ports); turning it into records at query time is a
//! copy, not a computation, and keeps memory proportional to endpoints rather than to names.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use hickory_proto::rr::Name;

use crate::model::{ClusterId, Protocol, Service, ServiceKey};

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

/// One cluster's part of a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterPart {
    pub cluster: ClusterId,
    /// Ready endpoint addresses, sorted.
    pub addrs: Addrs,
    /// Endpoint label → its addresses (a hostname may carry an IPv4 and an IPv6 address).
    pub endpoints: BTreeMap<Arc<str>, Addrs>,
}

/// One SRV target: (index into `ServiceView::clusters`, endpoint label, port).
pub type SrvTarget = (usize, Arc<str>, u16);

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
    /// Ready endpoint addresses over all clusters, the local cluster first.
    pub addrs: Addrs,
    /// Clusters that have this service, in answer order (local first, then config order).
    pub clusters: Vec<ClusterPart>,
    pub srv: Vec<SrvSet>,
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
    ) -> Option<ServiceView> {
        let parts: Vec<_> = parts.into_iter().collect();
        if parts.is_empty() {
            return None;
        }
        let with_endpoints = parts
            .iter()
            .any(|(_, s)| matches!(s, Service::Endpoints { .. }));
        if !with_endpoints {
            let external_name = parts.iter().find_map(|(_, s)| match s {
                Service::ExternalName(n) => Some(n.clone()),
                Service::Endpoints { .. } => None,
            });
            return Some(ServiceView {
                key,
                external_name,
                addrs: Addrs::default(),
                clusters: Vec::new(),
                srv: Vec::new(),
            });
        }

        let mut view = ServiceView {
            key,
            external_name: None,
            addrs: Addrs::default(),
            clusters: Vec::new(),
            srv: Vec::new(),
        };
        // (port name, proto) → targets, kept sorted for a stable answer.
        let mut srv: BTreeMap<(Arc<str>, Protocol), Vec<SrvTarget>> = BTreeMap::new();
        for (cluster, service) in parts {
            if matches!(service, Service::ExternalName(_)) {
                continue;
            }
            let idx = view.clusters.len();
            let mut part = ClusterPart {
                cluster: cluster.clone(),
                addrs: Addrs::default(),
                endpoints: BTreeMap::new(),
            };
            let mut ready: Vec<_> = service.ready_endpoints().collect();
            ready.sort_by_key(|e| e.ip);
            for e in &ready {
                part.addrs.push(e.ip);
                part.endpoints.entry(e.label()).or_default().push(e.ip);
            }
            for port in service.ports() {
                let Some(name) = &port.name else { continue };
                let targets = srv.entry((name.clone(), port.protocol)).or_default();
                for label in part.endpoints.keys() {
                    let t = (idx, label.clone(), port.port);
                    if !targets.contains(&t) {
                        targets.push(t);
                    }
                }
            }
            for ip in part.addrs.iter() {
                view.addrs.push(ip);
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Endpoint, Port};

    fn ep(ip: &str, host: Option<&str>, ready: bool) -> Endpoint {
        Endpoint {
            ip: ip.parse().unwrap(),
            hostname: host.map(Into::into),
            zone: None,
            node: None,
            ready,
        }
    }

    fn svc(endpoints: Vec<Endpoint>) -> Service {
        Service::Endpoints {
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
        let alpha: ClusterId = "alpha".into();
        let beta: ClusterId = "beta".into();
        let a = svc(vec![
            ep("10.8.1.6", None, true),
            ep("10.8.1.5", Some("r-1"), true),
            ep("10.8.1.7", None, false),
        ]);
        let b = svc(vec![ep("10.12.0.5", None, true), ep("fd00::5", None, true)]);
        let v =
            ServiceView::build(ServiceKey::new("ns", "r"), [(&alpha, &a), (&beta, &b)]).unwrap();
        let v4: Vec<String> = v.addrs.v4.iter().map(|a| a.to_string()).collect();
        assert_eq!(v4, ["10.8.1.5", "10.8.1.6", "10.12.0.5"]);
        assert_eq!(v.addrs.v6.len(), 1);
        assert_eq!(v.clusters.len(), 2);
        let labels: Vec<&str> = v.clusters[0].endpoints.keys().map(|k| &**k).collect();
        assert_eq!(labels, ["10-8-1-6", "r-1"]);
        // One SRV set, for the named port only, one target per ready endpoint.
        assert_eq!(v.srv.len(), 1);
        assert_eq!(v.srv[0].targets.len(), 4);
    }

    #[test]
    fn endpoints_win_over_external_name() {
        let alpha: ClusterId = "alpha".into();
        let beta: ClusterId = "beta".into();
        let ext = Service::ExternalName(Name::from_ascii("api.example.com.").unwrap());
        let only_ext = ServiceView::build(ServiceKey::new("d", "x"), [(&alpha, &ext)]).unwrap();
        assert!(only_ext.external_name.is_some());
        let real = svc(vec![ep("10.0.0.1", None, true)]);
        let mixed = ServiceView::build(ServiceKey::new("d", "x"), [(&alpha, &ext), (&beta, &real)])
            .unwrap();
        assert!(mixed.external_name.is_none());
        assert_eq!(mixed.clusters.len(), 1);
        assert!(ServiceView::build(ServiceKey::new("d", "x"), []).is_none());
    }
}

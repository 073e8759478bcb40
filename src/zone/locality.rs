//! Locality: where a client is, and how near each endpoint is to it.
//!
//! A client address maps to (cluster, region, zone) by longest prefix over every cluster's
//! `networks` and `client_networks`; an address outside all of them is treated as this
//! instance's own (the local cluster's) locality — behind kube-dns or CoreDNS that is the
//! forwarder, which runs in the local cluster. An endpoint's locality is its EndpointSlice zone
//! and its cluster's region. Tiers: 0 same zone, 1 same region, 2 elsewhere.

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use crate::config::Config;
use crate::model::ClusterId;

/// Where a client is, as far as we know.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Locality {
    pub cluster: Option<ClusterId>,
    pub region: Option<Arc<str>>,
    pub zone: Option<Arc<str>>,
}

/// A locality tier: 0 same zone, 1 same region, 2 elsewhere.
pub type Tier = u8;

impl Locality {
    /// How near an endpoint in `region`/`zone` is to this client.
    pub fn tier(&self, region: Option<&str>, zone: Option<&str>) -> Tier {
        // Nothing known of the client (no regions configured): no preference.
        if self.region.is_none() && self.zone.is_none() {
            return 0;
        }
        let same =
            |a: Option<&str>, b: Option<&str>| matches!((a, b), (Some(a), Some(b)) if a == b);
        if same(self.zone.as_deref(), zone) {
            0
        } else if same(self.region.as_deref(), region) {
            1
        } else {
            2
        }
    }
}

/// Longest-prefix map from client addresses to localities.
#[derive(Debug, Default)]
pub struct LocalityMap {
    /// Most specific first, each with the id of its distinct locality.
    entries: Vec<(IpNet, Locality, u16)>,
    /// The local cluster's locality: for clients outside every range.
    default: Locality,
}

impl LocalityMap {
    pub fn from_config(config: &Config) -> LocalityMap {
        let mut entries = Vec::new();
        let mut default = Locality::default();
        for c in &config.clusters {
            // A cluster in one zone puts all its addresses in that zone.
            let only_zone: Option<Arc<str>> = match c.zones.as_slice() {
                [z] => Some(z.as_str().into()),
                _ => None,
            };
            let base = Locality {
                cluster: Some(c.name.clone()),
                region: c.region.as_deref().map(Arc::from),
                zone: only_zone.clone(),
            };
            if config.local_cluster.as_ref() == Some(&c.name) {
                default = base.clone();
            }
            for net in &c.networks {
                entries.push((net.trunc(), base.clone()));
            }
            for n in &c.client_networks {
                let zone = n
                    .zone
                    .as_deref()
                    .map(Arc::from)
                    .or_else(|| only_zone.clone());
                entries.push((
                    n.net,
                    Locality {
                        zone,
                        ..base.clone()
                    },
                ));
            }
        }
        entries.sort_by_key(|(net, _)| std::cmp::Reverse(net.prefix_len()));
        // Id 0 is the default locality; equal localities share an id (answers depend on the
        // locality, not on which range matched).
        let mut distinct = vec![default.clone()];
        let entries = entries
            .into_iter()
            .map(|(net, l)| {
                let id = distinct.iter().position(|d| *d == l).unwrap_or_else(|| {
                    distinct.push(l.clone());
                    distinct.len() - 1
                });
                (net, l, id as u16)
            })
            .collect();
        LocalityMap { entries, default }
    }

    /// The locality of clients outside every range: the local cluster's.
    pub fn default_locality(&self) -> &Locality {
        &self.default
    }

    /// The most specific range that contains `ip`.
    fn find(&self, ip: IpAddr) -> Option<&(IpNet, Locality, u16)> {
        // An IPv4 client on a dual-stack socket shows up as ::ffff:a.b.c.d.
        let ip = ip.to_canonical();
        self.entries.iter().find(|(net, ..)| net.contains(&ip))
    }

    /// The locality of `ip`, and the prefix length that decided it (`None`: no range matched,
    /// the default locality applies).
    pub fn locate(&self, ip: IpAddr) -> (&Locality, Option<u8>) {
        self.find(ip).map_or((&self.default, None), |(net, l, _)| {
            (l, Some(net.prefix_len()))
        })
    }

    /// An id of the locality of `ip` (0: the default), for keying cached answers.
    pub fn locate_id(&self, ip: IpAddr) -> u16 {
        self.find(ip).map_or(0, |(.., id)| *id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_and_tiers() {
        let config = Config::parse(
            std::path::Path::new("/t/m.yaml"),
            r#"
local_cluster: alpha
clusters:
  - name: alpha
    region: us-central1
    zones: [us-central1-a]
    networks: [10.8.0.0/14]
    source: { file: a.yaml }
  - name: beta
    region: us-central1
    zones: [us-central1-b, us-central1-c]
    networks: [10.12.0.0/14]
    client_networks: [{ net: 10.12.1.0/24, zone: us-central1-c }]
    source: { file: b.yaml }
"#,
        )
        .unwrap();
        let map = LocalityMap::from_config(&config);
        let (l, p) = map.locate("10.8.3.4".parse().unwrap());
        assert_eq!((l.zone.as_deref(), p), (Some("us-central1-a"), Some(14)));
        let (l, p) = map.locate("10.12.1.9".parse().unwrap());
        assert_eq!((l.zone.as_deref(), p), (Some("us-central1-c"), Some(24)));
        let (l, p) = map.locate("10.12.2.9".parse().unwrap());
        assert_eq!(
            (l.zone.as_deref(), l.region.as_deref(), p),
            (None, Some("us-central1"), Some(14))
        );
        let (l, p) = map.locate("192.0.2.1".parse().unwrap());
        assert_eq!((l.cluster.as_deref(), p), (Some("alpha"), None));
        let (l, _) = map.locate("::ffff:10.8.0.1".parse().unwrap());
        assert_eq!(l.cluster.as_deref(), Some("alpha"));
        // alpha's range and an unknown address share the default locality's id.
        assert_eq!(map.locate_id("10.8.0.1".parse().unwrap()), 0);
        assert_eq!(map.locate_id("192.0.2.1".parse().unwrap()), 0);
        let b = map.locate_id("10.12.2.9".parse().unwrap());
        let c = map.locate_id("10.12.1.9".parse().unwrap());
        assert!(b != 0 && c != 0 && b != c);

        let client = map.locate("10.8.0.1".parse().unwrap()).0;
        assert_eq!(client.tier(Some("us-central1"), Some("us-central1-a")), 0);
        assert_eq!(client.tier(Some("us-central1"), Some("us-central1-b")), 1);
        assert_eq!(client.tier(Some("us-central1"), None), 1);
        assert_eq!(client.tier(Some("europe-west1"), Some("europe-west1-b")), 2);
        assert_eq!(client.tier(None, None), 2);
        assert_eq!(
            Locality::default().tier(Some("us-central1"), Some("us-central1-a")),
            0
        );
    }
}

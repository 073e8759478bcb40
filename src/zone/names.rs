//! Query names → typed keys: the one place that knows the name scheme (DESIGN.md, "Names").
//!
//! ```text
//! <zone>                                        Apex
//! svc.<zone>                                    Ent
//! <ns>.svc.<zone>                               Namespace
//! <svc>.<ns>.svc.<zone>                         Service
//! <cluster>.<svc>.<ns>.svc.<zone>               Cluster
//! <host>.<cluster>.<svc>.<ns>.svc.<zone>        Endpoint
//! _<proto>.<svc>.<ns>.svc.<zone>                SrvProto   (empty non-terminal)
//! _<port>._<proto>.<svc>.<ns>.svc.<zone>        Srv
//! _status.<svc>.<ns>.svc.<zone>                 Status     (TXT: provenance, for operators)
//! ```
//! Parsing is pure and case-insensitive; whether the thing named exists is the lookup's job.

use std::net::IpAddr;

use hickory_proto::rr::{LowerName, Name};
use ipnet::IpNet;

use crate::model::Protocol;

/// What a name inside the forward zone refers to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target<'a> {
    Apex,
    /// `svc.<zone>`: always an empty non-terminal.
    Ent,
    Namespace(&'a str),
    Service {
        ns: &'a str,
        svc: &'a str,
    },
    Cluster {
        ns: &'a str,
        svc: &'a str,
        cluster: &'a str,
    },
    Endpoint {
        ns: &'a str,
        svc: &'a str,
        cluster: &'a str,
        host: &'a str,
    },
    SrvProto {
        ns: &'a str,
        svc: &'a str,
        proto: Protocol,
    },
    Srv {
        ns: &'a str,
        svc: &'a str,
        port: &'a str,
        proto: Protocol,
    },
    Status {
        ns: &'a str,
        svc: &'a str,
    },
    /// In the zone, but not a name we can ever have.
    None,
}

/// Parses `name`, known to be inside the zone `origin` (`origin.zone_of(name)`), into a
/// [`Target`]. Labels are taken from the lowercased name.
pub fn parse<'a>(origin: &LowerName, name: &'a LowerName) -> Target<'a> {
    let depth = name.num_labels().saturating_sub(origin.num_labels()) as usize;
    if depth == 0 {
        return Target::Apex;
    }
    // At most six labels below the apex mean something; the rest is None.
    if depth > 6 {
        return Target::None;
    }
    let mut labels: [&str; 6] = [""; 6];
    for (i, label) in name.iter().take(depth).enumerate() {
        match std::str::from_utf8(label) {
            Ok(s) => labels[depth - 1 - i] = s,
            Err(_) => return Target::None,
        }
    }
    // labels[0] is the label just below the apex.
    let l = &labels[..depth];
    if l[0] != "svc" {
        return Target::None;
    }
    match l {
        [_] => Target::Ent,
        [_, ns] => Target::Namespace(ns),
        [_, ns, svc] => Target::Service { ns, svc },
        [_, ns, svc, "_status"] => Target::Status { ns, svc },
        [_, ns, svc, x] => match x.strip_prefix('_') {
            Some(p) => match Protocol::from_label(p) {
                Some(proto) => Target::SrvProto { ns, svc, proto },
                None => Target::None,
            },
            None => Target::Cluster {
                ns,
                svc,
                cluster: x,
            },
        },
        [_, ns, svc, x, y] => match (x.strip_prefix('_'), y.strip_prefix('_')) {
            (Some(p), Some(port)) => match Protocol::from_label(p) {
                Some(proto) => Target::Srv {
                    ns,
                    svc,
                    port,
                    proto,
                },
                None => Target::None,
            },
            (None, None) => Target::Endpoint {
                ns,
                svc,
                cluster: x,
                host: y,
            },
            _ => Target::None,
        },
        _ => Target::None,
    }
}

/// A reverse zone we are authoritative for: the PTR names of addresses inside one of the
/// configured networks. A network whose prefix is not on an octet (IPv4) or nibble (IPv6)
/// boundary is served as the few aligned zones that cover exactly it.
#[derive(Clone, Debug)]
pub struct ReverseZone {
    pub apex: LowerName,
    pub net: IpNet,
}

/// The reverse zones that cover `net` exactly (at most 128 of them).
pub fn reverse_zones(net: IpNet) -> Vec<ReverseZone> {
    let net = net.trunc();
    let step = match net {
        IpNet::V4(_) => 8,
        IpNet::V6(_) => 4,
    };
    let aligned = net.prefix_len().div_ceil(step) * step;
    let Ok(subnets) = net.subnets(aligned) else {
        return Vec::new();
    };
    subnets
        .map(|sub| ReverseZone {
            apex: LowerName::new(&reverse_apex(sub)),
            net: sub,
        })
        .collect()
}

/// The reverse name of an aligned network: `8.10.in-addr.arpa.` for 10.8.0.0/16.
fn reverse_apex(net: IpNet) -> Name {
    let full = Name::from(net.addr());
    let (total, step) = match net {
        IpNet::V4(_) => (4, 8),
        IpNet::V6(_) => (32, 4),
    };
    let keep = net.prefix_len() as usize / step;
    // `full` is <labels...>.in-addr.arpa. with `total` address labels; drop the host part.
    full.trim_to(full.num_labels() as usize - (total - keep))
}

/// The address named by a full reverse name (`5.1.8.10.in-addr.arpa.`), if it is one.
pub fn reverse_addr(name: &LowerName) -> Option<IpAddr> {
    let name = Name::from(name);
    let labels = name.num_labels();
    let net = name.parse_arpa_name().ok()?;
    let full = match net {
        IpNet::V4(_) => labels == 6 && net.prefix_len() == 32,
        IpNet::V6(_) => labels == 34 && net.prefix_len() == 128,
    };
    full.then(|| net.addr())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn lower(s: &str) -> LowerName {
        LowerName::from(Name::from_str(s).unwrap())
    }

    #[test]
    fn forward_names() {
        let origin = lower("clusterset.local.");
        let cases: Vec<(&str, Target)> = vec![
            ("clusterset.local.", Target::Apex),
            ("SVC.clusterset.local.", Target::Ent),
            (
                "bookinfo.svc.clusterset.local.",
                Target::Namespace("bookinfo"),
            ),
            (
                "Reviews.BookInfo.svc.clusterset.local.",
                Target::Service {
                    ns: "bookinfo",
                    svc: "reviews",
                },
            ),
            (
                "alpha.reviews.bookinfo.svc.clusterset.local.",
                Target::Cluster {
                    ns: "bookinfo",
                    svc: "reviews",
                    cluster: "alpha",
                },
            ),
            (
                "db-0.alpha.db.data.svc.clusterset.local.",
                Target::Endpoint {
                    ns: "data",
                    svc: "db",
                    cluster: "alpha",
                    host: "db-0",
                },
            ),
            (
                "_tcp.istiod.istio-system.svc.clusterset.local.",
                Target::SrvProto {
                    ns: "istio-system",
                    svc: "istiod",
                    proto: Protocol::Tcp,
                },
            ),
            (
                "_grpc-xds._TCP.istiod.istio-system.svc.clusterset.local.",
                Target::Srv {
                    ns: "istio-system",
                    svc: "istiod",
                    port: "grpc-xds",
                    proto: Protocol::Tcp,
                },
            ),
            ("_http._quic.a.b.svc.clusterset.local.", Target::None),
            (
                "_Status.reviews.bookinfo.svc.clusterset.local.",
                Target::Status {
                    ns: "bookinfo",
                    svc: "reviews",
                },
            ),
            ("_x.a.b.svc.clusterset.local.", Target::None),
            ("_x.y.a.b.svc.clusterset.local.", Target::None),
            ("www.clusterset.local.", Target::None),
            ("a.b.c.d.e.svc.clusterset.local.", Target::None),
        ];
        for (name, want) in cases {
            let n = lower(name);
            assert_eq!(parse(&origin, &n), want, "{name}");
        }
    }

    #[test]
    fn reverse() {
        let zones = reverse_zones("10.8.0.0/14".parse().unwrap());
        let apexes: Vec<String> = zones.iter().map(|z| z.apex.to_string()).collect();
        assert_eq!(
            apexes,
            [
                "8.10.in-addr.arpa.",
                "9.10.in-addr.arpa.",
                "10.10.in-addr.arpa.",
                "11.10.in-addr.arpa."
            ]
        );
        let zones = reverse_zones("fd00::/8".parse().unwrap());
        assert_eq!(zones.len(), 1);
        assert_eq!(zones[0].apex.to_string(), "d.f.ip6.arpa.");
        assert_eq!(
            reverse_addr(&lower("5.1.8.10.in-addr.arpa.")),
            Some("10.8.1.5".parse().unwrap())
        );
        assert_eq!(reverse_addr(&lower("1.8.10.in-addr.arpa.")), None);
        let v6 = Name::from("fd00::5".parse::<IpAddr>().unwrap());
        assert_eq!(
            reverse_addr(&LowerName::from(v6)),
            Some("fd00::5".parse().unwrap())
        );
    }
}

//! What goes over Pub/Sub: one protobuf [`Envelope`] per message.
//!
//! Protobuf (prost, which the googleapis clients already build on) rather than JSON: a slice of
//! a million endpoints is about a third of the JSON size (addresses are 4 or 16 bytes, not
//! text), which matters under Pub/Sub's 10 MB message limit, and fields added later (new tags)
//! are skipped by older readers, so instances of two releases can share a topic during a
//! rolling upgrade. [`WIRE_VERSION`] changes only for an incompatible change; a reader skips
//! (and counts) versions it does not know.
//!
//! Every message carries the cluster, the publisher's epoch (the Lease's transition count when
//! it took the lease) and a sequence number that goes up by one per message within the epoch.
//! A full snapshot is `parts` consecutive messages; a delta is one message.

use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::rr::Name;

use crate::model::{
    AnswerPolicy, Endpoint, Policy, Port, Protocol, Service, ServiceKey, intern, is_dns_label,
};

/// The encoding's major version; bumped only for a change old readers would misread.
pub const WIRE_VERSION: u32 = 1;

/// The message attribute naming the cluster (readable without decoding the body).
pub const ATTR_CLUSTER: &str = "meshdns-cluster";

#[derive(Clone, PartialEq, prost::Message)]
pub struct Envelope {
    #[prost(uint32, tag = "1")]
    pub version: u32,
    #[prost(string, tag = "2")]
    pub cluster: String,
    #[prost(uint64, tag = "3")]
    pub epoch: u64,
    #[prost(uint64, tag = "4")]
    pub seq: u64,
    /// When the publisher sent it (Unix microseconds): for the propagation figure.
    #[prost(uint64, tag = "5")]
    pub sent_unix_micros: u64,
    /// The publisher's full-snapshot interval: a subscriber that hears nothing for a few of
    /// them marks the cluster stale.
    #[prost(uint32, tag = "6")]
    pub resync_secs: u32,
    /// Nonzero: the publisher's own view of its cluster is stale since then (its API server
    /// stopped answering), so peers serve the data as stale too.
    #[prost(uint64, tag = "7")]
    pub stale_since_unix: u64,
    #[prost(oneof = "Body", tags = "8, 9")]
    pub body: Option<Body>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Body {
    /// One chunk of a full snapshot.
    #[prost(message, tag = "8")]
    Snapshot(SnapshotPart),
    /// What changed since the previous message.
    #[prost(message, tag = "9")]
    Delta(Delta),
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SnapshotPart {
    /// 0-based; part `i` has sequence number `first + i`.
    #[prost(uint32, tag = "1")]
    pub part: u32,
    #[prost(uint32, tag = "2")]
    pub parts: u32,
    #[prost(message, repeated, tag = "3")]
    pub services: Vec<WireService>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Delta {
    /// Added or changed services, whole.
    #[prost(message, repeated, tag = "1")]
    pub services: Vec<WireService>,
    #[prost(message, repeated, tag = "2")]
    pub removed: Vec<WireKey>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct WireKey {
    #[prost(string, tag = "1")]
    pub namespace: String,
    #[prost(string, tag = "2")]
    pub name: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct WireService {
    #[prost(string, tag = "1")]
    pub namespace: String,
    #[prost(string, tag = "2")]
    pub name: String,
    /// Set for `type: ExternalName`; then nothing else is.
    #[prost(string, optional, tag = "3")]
    pub external_name: Option<String>,
    #[prost(message, repeated, tag = "4")]
    pub ports: Vec<WirePort>,
    #[prost(message, repeated, tag = "5")]
    pub endpoints: Vec<WireEndpoint>,
    /// 0: inherit, 1: all, 2: nearest.
    #[prost(uint32, tag = "6")]
    pub policy: u32,
    /// 0: inherit.
    #[prost(uint32, tag = "7")]
    pub max_answers: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct WirePort {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(uint32, tag = "2")]
    pub port: u32,
    /// 0: TCP, 1: UDP, 2: SCTP.
    #[prost(uint32, tag = "3")]
    pub protocol: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct WireEndpoint {
    /// 4 or 16 bytes.
    #[prost(bytes = "vec", tag = "1")]
    pub ip: Vec<u8>,
    #[prost(string, optional, tag = "2")]
    pub hostname: Option<String>,
    #[prost(string, optional, tag = "3")]
    pub zone: Option<String>,
    #[prost(string, optional, tag = "4")]
    pub node: Option<String>,
    #[prost(bool, tag = "5")]
    pub ready: bool,
}

impl WireService {
    pub fn from_model(key: &ServiceKey, service: &Service) -> WireService {
        let mut w = WireService {
            namespace: key.namespace.to_string(),
            name: key.name.to_string(),
            ..WireService::default()
        };
        match service {
            Service::ExternalName(target) => w.external_name = Some(target.to_ascii()),
            Service::Endpoints {
                ports,
                endpoints,
                policy,
            } => {
                w.ports = ports
                    .iter()
                    .map(|p| WirePort {
                        name: p.name.as_deref().map(str::to_string),
                        port: p.port.into(),
                        protocol: match p.protocol {
                            Protocol::Tcp => 0,
                            Protocol::Udp => 1,
                            Protocol::Sctp => 2,
                        },
                    })
                    .collect();
                w.endpoints = endpoints
                    .iter()
                    .map(|e| WireEndpoint {
                        ip: match e.ip {
                            IpAddr::V4(a) => a.octets().to_vec(),
                            IpAddr::V6(a) => a.octets().to_vec(),
                        },
                        hostname: e.hostname.as_deref().map(str::to_string),
                        zone: e.zone.as_deref().map(str::to_string),
                        node: e.node.as_deref().map(str::to_string),
                        ready: e.ready,
                    })
                    .collect();
                w.policy = match policy.policy {
                    None => 0,
                    Some(Policy::All) => 1,
                    Some(Policy::Nearest) => 2,
                };
                w.max_answers = policy.max_answers.map_or(0, u32::from);
            }
        }
        w
    }

    /// The service as the catalog holds it, or why it cannot be used. Nothing from the wire
    /// is trusted: names, addresses and ports are checked as a Kubernetes source checks them.
    pub fn into_model(self) -> Result<(ServiceKey, Service), String> {
        let key = WireKey {
            namespace: self.namespace,
            name: self.name,
        }
        .into_model()?;
        if let Some(target) = self.external_name {
            let name = Name::from_ascii(&target)
                .map_err(|e| format!("{key}: bad externalName {target:?}: {e}"))?;
            return Ok((key, Service::ExternalName(name)));
        }
        let mut ports = Vec::with_capacity(self.ports.len());
        for p in self.ports {
            let port = u16::try_from(p.port)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("{key}: bad port {}", p.port))?;
            let protocol = match p.protocol {
                0 => Protocol::Tcp,
                1 => Protocol::Udp,
                2 => Protocol::Sctp,
                n => return Err(format!("{key}: unknown protocol {n}")),
            };
            if let Some(name) = &p.name
                && !is_dns_label(name)
            {
                return Err(format!("{key}: bad port name {name:?}"));
            }
            ports.push(Port {
                name: p.name.map(Arc::from),
                port,
                protocol,
            });
        }
        let mut endpoints = Vec::with_capacity(self.endpoints.len());
        for e in self.endpoints {
            let ip = match e.ip.len() {
                4 => IpAddr::from(<[u8; 4]>::try_from(&e.ip[..]).expect("length checked")),
                16 => IpAddr::from(<[u8; 16]>::try_from(&e.ip[..]).expect("length checked")),
                n => return Err(format!("{key}: an address of {n} bytes")),
            };
            if let Some(h) = &e.hostname
                && !is_dns_label(h)
            {
                return Err(format!("{key}: bad endpoint hostname {h:?}"));
            }
            endpoints.push(Endpoint {
                ip,
                hostname: e.hostname.map(Arc::from),
                zone: e.zone.as_deref().map(intern),
                node: e.node.as_deref().map(intern),
                ready: e.ready,
            });
        }
        let policy = AnswerPolicy {
            policy: match self.policy {
                0 => None,
                1 => Some(Policy::All),
                2 => Some(Policy::Nearest),
                n => return Err(format!("{key}: unknown policy {n}")),
            },
            max_answers: u16::try_from(self.max_answers).ok().filter(|m| *m > 0),
        };
        Ok((
            key,
            Service::Endpoints {
                ports,
                endpoints,
                policy,
            },
        ))
    }
}

impl WireKey {
    pub fn from_model(key: &ServiceKey) -> WireKey {
        WireKey {
            namespace: key.namespace.to_string(),
            name: key.name.to_string(),
        }
    }

    pub fn into_model(self) -> Result<ServiceKey, String> {
        if !is_dns_label(&self.namespace) || !is_dns_label(&self.name) {
            return Err(format!(
                "bad service name {:?}/{:?}",
                self.namespace, self.name
            ));
        }
        Ok(ServiceKey::new(&self.namespace, &self.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn sample() -> (ServiceKey, Service) {
        let key = ServiceKey::new("istio-system", "istiod");
        let svc = Service::Endpoints {
            ports: vec![Port {
                name: Some("grpc-xds".into()),
                port: 15010,
                protocol: Protocol::Tcp,
            }],
            endpoints: vec![
                Endpoint {
                    ip: "10.8.0.5".parse().unwrap(),
                    hostname: Some("istiod-0".into()),
                    zone: Some(intern("us-central1-a")),
                    node: Some(intern("node-1")),
                    ready: true,
                },
                Endpoint {
                    ip: "fd00::5".parse().unwrap(),
                    hostname: None,
                    zone: None,
                    node: None,
                    ready: false,
                },
            ],
            policy: AnswerPolicy {
                policy: Some(Policy::Nearest),
                max_answers: Some(3),
            },
        };
        (key, svc)
    }

    #[test]
    fn a_service_survives_the_wire() {
        let (key, svc) = sample();
        let env = Envelope {
            version: WIRE_VERSION,
            cluster: "alpha".into(),
            epoch: 3,
            seq: 9,
            body: Some(Body::Delta(Delta {
                services: vec![WireService::from_model(&key, &svc)],
                removed: vec![WireKey::from_model(&ServiceKey::new("a", "b"))],
            })),
            ..Envelope::default()
        };
        let bytes = env.encode_to_vec();
        let back = Envelope::decode(&bytes[..]).unwrap();
        assert_eq!(back, env);
        let Some(Body::Delta(d)) = back.body else {
            panic!("not a delta")
        };
        assert_eq!(d.services[0].clone().into_model().unwrap(), (key, svc));
        let ext = Service::ExternalName(Name::from_ascii("api.example.com.").unwrap());
        let k = ServiceKey::new("default", "legacy");
        let w = WireService::from_model(&k, &ext);
        assert_eq!(w.into_model().unwrap(), (k, ext));
    }

    #[test]
    fn bad_input_is_refused_with_a_reason() {
        let (key, svc) = sample();
        let good = WireService::from_model(&key, &svc);
        let mut bad = good.clone();
        bad.endpoints[0].ip = vec![1, 2, 3];
        assert!(bad.into_model().unwrap_err().contains("3 bytes"));
        let mut bad = good.clone();
        bad.ports[0].port = 70_000;
        assert!(bad.into_model().unwrap_err().contains("bad port"));
        let mut bad = good.clone();
        bad.namespace = "Not A Label".into();
        assert!(bad.into_model().unwrap_err().contains("bad service name"));
        let mut bad = good;
        bad.endpoints[0].hostname = Some("a.b".into());
        assert!(bad.into_model().is_err());
        // Garbage bytes are a decode error, not a panic.
        assert!(Envelope::decode(&[0xff, 0xff, 0xff][..]).is_err());
    }
}

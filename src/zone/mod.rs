//! The zone view: pure functions from (snapshot, question) to an answer.
//!
//! [`ZoneData`] is the served half of a snapshot: per-service answer data ([`ServiceView`])
//! in persistent maps, so the catalog patches it at the cost of what changed and every reader
//! sees one consistent version. [`ZoneData::resolve`] answers a question; it never fails and
//! never touches a socket, which is what the DNS front end, `dump` and the tests share.

pub mod locality;
pub mod names;
pub mod records;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};

use crate::config::{Config, Nameserver};
use crate::model::{AnswerPolicy, ClusterId, ClusterStatus, ServiceKey, SourceState};
use locality::{Locality, LocalityMap, Tier};
use names::{ReverseZone, Target};
use records::{Addrs, Label, ServiceView};

/// What does not change between snapshots: the zone's names and timers.
#[derive(Debug)]
pub struct ZoneSettings {
    pub origin: Name,
    origin_lower: LowerName,
    pub ttl: u32,
    pub negative_ttl: u32,
    pub nameservers: Vec<Nameserver>,
    /// `hostmaster.<zone>`: the SOA RNAME.
    pub rname: Name,
    pub reverse: Vec<ReverseZone>,
    /// Addresses of nameservers whose names are inside the zone (glue).
    glue: HashMap<LowerName, Addrs>,
    /// Answer order of clusters: the local cluster first, then config order.
    pub cluster_order: Vec<ClusterId>,
    /// Whether `_status.<svc>.<ns>.svc.<zone>` TXT records are served.
    pub status_records: bool,
    /// Client address → locality.
    pub locality: LocalityMap,
    regions: HashMap<ClusterId, Option<Arc<str>>>,
    policy_default: AnswerPolicy,
    policy_overrides: HashMap<ServiceKey, AnswerPolicy>,
}

impl ZoneSettings {
    pub fn from_config(config: &Config) -> ZoneSettings {
        let origin = config.zone.clone();
        let origin_lower = LowerName::new(&origin);
        let glue = config
            .nameservers
            .iter()
            .filter(|ns| origin.zone_of(&ns.name))
            .map(|ns| {
                let mut addrs = Addrs::default();
                ns.addresses.iter().for_each(|ip| addrs.push(*ip));
                (LowerName::new(&ns.name), addrs)
            })
            .collect();
        let mut cluster_order: Vec<ClusterId> = Vec::new();
        if let Some(local) = &config.local_cluster {
            cluster_order.push(local.clone());
        }
        for c in &config.clusters {
            if !cluster_order.contains(&c.name) {
                cluster_order.push(c.name.clone());
            }
        }
        let mut reverse: Vec<ReverseZone> = Vec::new();
        for net in config.clusters.iter().flat_map(|c| &c.networks) {
            for z in names::reverse_zones(*net) {
                if !reverse.iter().any(|r| r.apex == z.apex) {
                    reverse.push(z);
                }
            }
        }
        ZoneSettings {
            rname: Name::from_ascii("hostmaster")
                .and_then(|n| n.append_domain(&origin))
                .unwrap_or_else(|_| origin.clone()),
            origin,
            origin_lower,
            ttl: config.ttl,
            negative_ttl: config.negative_ttl,
            nameservers: config.nameservers.clone(),
            reverse,
            glue,
            cluster_order,
            status_records: config.status_records,
            locality: LocalityMap::from_config(config),
            regions: config
                .clusters
                .iter()
                .map(|c| (c.name.clone(), c.region.as_deref().map(Arc::from)))
                .collect(),
            policy_default: config.locality.default,
            policy_overrides: config.locality.services.iter().cloned().collect(),
        }
    }

    pub fn region_of(&self, cluster: &str) -> Option<Arc<str>> {
        self.regions.get(cluster).cloned().flatten()
    }

    /// A service's effective policy: the config's override, else its own, else the default.
    pub fn policy_for(&self, key: &ServiceKey, own: AnswerPolicy) -> AnswerPolicy {
        self.policy_overrides
            .get(key)
            .copied()
            .unwrap_or_default()
            .or(own)
            .or(self.policy_default)
    }

    fn reverse_zone_of(&self, name: &LowerName) -> Option<&ReverseZone> {
        self.reverse.iter().find(|z| z.apex.zone_of(name))
    }
}

/// The answer to one question, before it becomes a message.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    pub rcode: ResponseCode,
    /// Set for every name inside our zones, i.e. everything but REFUSED.
    pub authoritative: bool,
    pub answers: Vec<Record>,
    pub authority: Vec<Record>,
    pub additionals: Vec<Record>,
    /// The clusters whose data the answer carries (for "stale answer" marks).
    pub sources: Vec<ClusterId>,
    /// Whether the same question from the same locality gets the same answer for as long
    /// as the snapshot lives (false for answers that carry the time, like `_status`).
    pub cacheable: bool,
}

impl Answer {
    fn refused() -> Answer {
        Answer {
            rcode: ResponseCode::Refused,
            authoritative: false,
            answers: Vec::new(),
            authority: Vec::new(),
            additionals: Vec::new(),
            sources: Vec::new(),
            cacheable: true,
        }
    }

    fn records(answers: Vec<Record>) -> Answer {
        Answer {
            rcode: ResponseCode::NoError,
            authoritative: true,
            answers,
            authority: Vec::new(),
            additionals: Vec::new(),
            sources: Vec::new(),
            cacheable: true,
        }
    }

    fn from(mut self, sources: impl IntoIterator<Item = ClusterId>) -> Answer {
        if !self.answers.is_empty() {
            self.sources.extend(sources);
        }
        self
    }
}

/// The served data of one snapshot.
#[derive(Clone, Debug)]
pub struct ZoneData {
    pub settings: Arc<ZoneSettings>,
    pub serial: u32,
    pub services: imbl::HashMap<ServiceKey, Arc<ServiceView>>,
    /// Namespace → number of services in it (a namespace exists while it has one).
    pub namespaces: imbl::HashMap<Arc<str>, usize>,
    /// Address → the endpoints that have it, for PTR.
    pub ptr: imbl::HashMap<IpAddr, Arc<[PtrTarget]>>,
}

/// What a PTR record names: one endpoint, kept as the parts of its name (a `Name` per
/// address would cost more than the rest of the endpoint).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PtrTarget {
    pub key: ServiceKey,
    pub cluster: ClusterId,
    pub label: Label,
}

/// A negative answer, before the SOA is attached.
enum Found {
    NoData,
    NxDomain,
}

impl ZoneData {
    pub fn new(settings: Arc<ZoneSettings>, serial: u32) -> ZoneData {
        ZoneData {
            settings,
            serial,
            services: imbl::HashMap::new(),
            namespaces: imbl::HashMap::new(),
            ptr: imbl::HashMap::new(),
        }
    }

    /// Replaces what the zone serves for `key` (`None`: the service is gone everywhere),
    /// keeping the namespace and PTR indexes in step.
    pub fn set_service(&mut self, key: &ServiceKey, view: Option<Arc<ServiceView>>) {
        let old = match &view {
            Some(v) => self.services.insert(key.clone(), v.clone()),
            None => self.services.remove(key),
        };
        match (&old, &view) {
            (None, Some(_)) => *self.namespaces.entry(key.namespace.clone()).or_insert(0) += 1,
            (Some(_), None) => {
                let n = self.namespaces.get(&key.namespace).copied().unwrap_or(1);
                if n <= 1 {
                    self.namespaces.remove(&key.namespace);
                } else {
                    self.namespaces.insert(key.namespace.clone(), n - 1);
                }
            }
            _ => {}
        }
        if self.settings.reverse.is_empty() {
            return;
        }
        if let Some(old) = &old {
            for (ip, target) in self.ptr_targets(old) {
                let Some(targets) = self.ptr.get(&ip) else {
                    continue;
                };
                let rest: Vec<PtrTarget> =
                    targets.iter().filter(|t| **t != target).cloned().collect();
                if rest.is_empty() {
                    self.ptr.remove(&ip);
                } else {
                    self.ptr.insert(ip, rest.into());
                }
            }
        }
        if let Some(new) = &view {
            for (ip, target) in self.ptr_targets(new) {
                let mut targets: Vec<PtrTarget> =
                    self.ptr.get(&ip).map(|t| t.to_vec()).unwrap_or_default();
                if !targets.contains(&target) {
                    targets.push(target);
                    targets.sort();
                }
                self.ptr.insert(ip, targets.into());
            }
        }
    }

    /// (address, endpoint) for every endpoint address of `view` inside a reverse zone.
    fn ptr_targets(&self, view: &ServiceView) -> Vec<(IpAddr, PtrTarget)> {
        let mut out = Vec::new();
        for part in &view.clusters {
            for (label, addrs) in part.endpoints() {
                for ip in addrs.iter() {
                    if self.settings.reverse.iter().any(|z| z.net.contains(&ip)) {
                        let target = PtrTarget {
                            key: view.key.clone(),
                            cluster: part.cluster.clone(),
                            label: label.clone(),
                        };
                        out.push((ip, target));
                    }
                }
            }
        }
        out
    }

    /// How many records the zone serves (SOA, NS, glue, every name's addresses, SRV, CNAME,
    /// PTR). O(services): for scrapes, not for the query path.
    pub fn record_count(&self) -> usize {
        let apex = 1
            + self.settings.nameservers.len()
            + self.settings.glue.values().map(Addrs::len).sum::<usize>();
        let services: usize = self
            .services
            .values()
            .map(|v| {
                if v.external_name.is_some() {
                    return 1;
                }
                let parts: usize = v.clusters.iter().map(|p| 2 * p.addrs.len()).sum();
                v.members.len() + parts + v.srv.iter().map(|s| s.targets.len()).sum::<usize>()
            })
            .sum();
        let ptr: usize = self.ptr.values().map(|n| n.len()).sum();
        apex + services + ptr
    }

    /// `<label>.<cluster>.<svc>.<ns>.svc.<zone>`
    pub fn endpoint_name(&self, key: &ServiceKey, cluster: &str, label: &str) -> Option<Name> {
        Name::from_labels([
            label.as_bytes(),
            cluster.as_bytes(),
            key.name.as_bytes(),
            key.namespace.as_bytes(),
            b"svc",
        ])
        .and_then(|n| n.append_domain(&self.settings.origin))
        .ok()
    }

    /// `<svc>.<ns>.svc.<zone>`
    pub fn service_name(&self, key: &ServiceKey) -> Option<Name> {
        Name::from_labels([key.name.as_bytes(), key.namespace.as_bytes(), b"svc"])
            .and_then(|n| n.append_domain(&self.settings.origin))
            .ok()
    }

    fn soa(&self, apex: &Name, ttl: u32) -> Record {
        let s = &self.settings;
        let mname = s
            .nameservers
            .first()
            .map(|n| n.name.clone())
            .unwrap_or_else(|| s.origin.clone());
        let soa = SOA::new(
            mname,
            s.rname.clone(),
            self.serial,
            300,
            60,
            86400,
            s.negative_ttl,
        );
        Record::from_rdata(apex.clone(), ttl, RData::SOA(soa))
    }

    fn ns_records(&self, apex: &Name) -> Vec<Record> {
        self.settings
            .nameservers
            .iter()
            .map(|ns| {
                Record::from_rdata(
                    apex.clone(),
                    self.settings.ttl,
                    RData::NS(NS(ns.name.clone())),
                )
            })
            .collect()
    }

    fn glue_records(&self) -> Vec<Record> {
        let mut out = Vec::new();
        for ns in &self.settings.nameservers {
            if let Some(addrs) = self.settings.glue.get(&LowerName::new(&ns.name)) {
                out.extend(
                    addrs
                        .iter()
                        .map(|ip| addr_record(&ns.name, self.settings.ttl, ip)),
                );
            }
        }
        out
    }

    fn negative(&self, apex: &Name, rcode: ResponseCode) -> Answer {
        Answer {
            rcode,
            authoritative: true,
            answers: Vec::new(),
            authority: vec![self.soa(apex, self.settings.negative_ttl)],
            additionals: Vec::new(),
            sources: Vec::new(),
            cacheable: true,
        }
    }

    /// Answers `qtype` for `qname`. `qname` is used as asked for the owner of the answer
    /// records, so the answer matches the question's letter case. `clusters` (the snapshot's
    /// cluster states) feed the `_status` provenance records.
    pub fn resolve(
        &self,
        qname: &Name,
        qtype: RecordType,
        clusters: &[ClusterStatus],
        client: &Locality,
    ) -> Answer {
        let lower = LowerName::new(qname);
        let s = &self.settings;
        if s.origin_lower.zone_of(&lower) {
            self.resolve_forward(qname, &lower, qtype, clusters, client)
        } else if let Some(zone) = s.reverse_zone_of(&lower) {
            self.resolve_reverse(zone, qname, &lower, qtype)
        } else {
            Answer::refused()
        }
    }

    fn resolve_forward(
        &self,
        qname: &Name,
        lower: &LowerName,
        qtype: RecordType,
        clusters: &[ClusterStatus],
        client: &Locality,
    ) -> Answer {
        let origin = &self.settings.origin;
        if let Some(addrs) = self.settings.glue.get(lower) {
            let recs = addr_records(qname, self.settings.ttl, addrs, Family::of(qtype, addrs));
            return self.positive_or_nodata(origin, recs);
        }
        let found = match names::parse(&self.settings.origin_lower, lower) {
            Target::Apex => return self.apex(qname, origin, qtype),
            Target::Ent => Found::NoData,
            Target::Namespace(ns) => {
                if self.namespaces.contains_key(ns) {
                    Found::NoData
                } else {
                    Found::NxDomain
                }
            }
            Target::Service { ns, svc } => match self.services.get(&ServiceKey::new(ns, svc)) {
                None => Found::NxDomain,
                Some(view) => match &view.external_name {
                    Some(target) => {
                        let cname = RData::CNAME(CNAME(target.clone()));
                        let rec = Record::from_rdata(qname.clone(), self.settings.ttl, cname);
                        return Answer::records(vec![rec]);
                    }
                    None => {
                        return self.members_answer(qname, qtype, view, client, None);
                    }
                },
            },
            Target::Cluster { ns, svc, cluster } => {
                let key = ServiceKey::new(ns, svc);
                let found = self
                    .services
                    .get(&key)
                    .and_then(|v| v.cluster_index(cluster).map(|i| (v, i)));
                match found {
                    Some((view, idx)) => {
                        return self.members_answer(qname, qtype, view, client, Some(idx));
                    }
                    None => Found::NxDomain,
                }
            }
            Target::Endpoint {
                ns,
                svc,
                cluster,
                host,
            } => {
                let found = self
                    .services
                    .get(&ServiceKey::new(ns, svc))
                    .and_then(|v| v.cluster(cluster))
                    .and_then(|p| p.endpoint(host).map(|a| (a, p.cluster.clone())));
                let Some((addrs, source)) = found else {
                    return self.negative(origin, ResponseCode::NXDomain);
                };
                let recs =
                    addr_records(qname, self.settings.ttl, &addrs, Family::of(qtype, &addrs));
                return self.positive_or_nodata(origin, recs).from([source]);
            }
            Target::SrvProto { ns, svc, proto } => {
                match self.services.get(&ServiceKey::new(ns, svc)) {
                    Some(v) if v.srv.iter().any(|s| s.proto == proto) => Found::NoData,
                    _ => Found::NxDomain,
                }
            }
            Target::Srv {
                ns,
                svc,
                port,
                proto,
            } => {
                let Some(view) = self.services.get(&ServiceKey::new(ns, svc)) else {
                    return self.negative(origin, ResponseCode::NXDomain);
                };
                let Some(set) = view
                    .srv
                    .iter()
                    .find(|s| &*s.name == port && s.proto == proto)
                else {
                    return self.negative(origin, ResponseCode::NXDomain);
                };
                if !matches!(qtype, RecordType::SRV | RecordType::ANY) || set.targets.is_empty() {
                    return self.negative(origin, ResponseCode::NoError);
                }
                return self.srv_answer(qname, view, set, client);
            }
            Target::Status { ns, svc } => match self.services.get(&ServiceKey::new(ns, svc)) {
                None => Found::NxDomain,
                Some(_) if !matches!(qtype, RecordType::TXT | RecordType::ANY) => Found::NoData,
                Some(view) if self.settings.status_records => {
                    let mut a = Answer::records(vec![self.status_record(qname, view, clusters)]);
                    a.cacheable = false;
                    return a;
                }
                Some(_) => Found::NxDomain,
            },
            Target::None => Found::NxDomain,
        };
        match found {
            Found::NxDomain => self.negative(origin, ResponseCode::NXDomain),
            Found::NoData => self.negative(origin, ResponseCode::NoError),
        }
    }

    /// `_status.<svc>.<ns>.svc.<zone>` TXT: one string per cluster that has the service —
    /// its state, the age of its data and the endpoints it contributes.
    fn status_record(
        &self,
        qname: &Name,
        view: &ServiceView,
        clusters: &[ClusterStatus],
    ) -> Record {
        let now = crate::catalog::unix_now();
        let mut strings = Vec::new();
        for status in clusters {
            let part = view.cluster(&status.name);
            let has = part.is_some() || status.slice.contains_key(&view.key);
            if !has {
                continue;
            }
            let state = match status.state {
                SourceState::Stale { since_unix } => {
                    format!("stale for {}s", now.saturating_sub(since_unix))
                }
                other => other.name().to_string(),
            };
            let age = status
                .last_change_unix
                .map_or_else(|| "never".into(), |t| format!("{}s", now.saturating_sub(t)));
            let endpoints: Vec<String> = part
                .map(|p| p.addrs.iter().map(|ip| ip.to_string()).collect())
                .unwrap_or_default();
            let line = format!(
                "cluster={} state={} data_age={} endpoints={}",
                status.name,
                state,
                age,
                if endpoints.is_empty() {
                    "-".into()
                } else {
                    endpoints.join(",")
                }
            );
            // A TXT string holds at most 255 bytes; long lists continue in the next string.
            let mut rest = line.as_str();
            while !rest.is_empty() {
                let mut cut = rest.len().min(255);
                while !rest.is_char_boundary(cut) {
                    cut -= 1;
                }
                strings.push(rest[..cut].to_string());
                rest = &rest[cut..];
            }
        }
        strings.push(format!("serial={}", self.serial));
        Record::from_rdata(qname.clone(), 0, RData::TXT(TXT::new(strings)))
    }

    fn positive_or_nodata(&self, apex: &Name, recs: Vec<Record>) -> Answer {
        if recs.is_empty() {
            self.negative(apex, ResponseCode::NoError)
        } else {
            Answer::records(recs)
        }
    }

    fn apex(&self, qname: &Name, apex: &Name, qtype: RecordType) -> Answer {
        match qtype {
            // RFC 8482: ANY gets one RRset, the smallest useful one.
            RecordType::SOA | RecordType::ANY => {
                let mut soa = self.soa(apex, self.settings.ttl);
                soa.name = qname.clone();
                Answer::records(vec![soa])
            }
            RecordType::NS => {
                let mut a = Answer::records(
                    self.ns_records(apex)
                        .into_iter()
                        .map(|mut r| {
                            r.name = qname.clone();
                            r
                        })
                        .collect(),
                );
                a.additionals = self.glue_records();
                a
            }
            _ => self.negative(apex, ResponseCode::NoError),
        }
    }

    /// SRV for one named port: priority = the target's locality tier, equal weights; the
    /// service's policy (`nearest`, `max_answers`) applies.
    fn srv_answer(
        &self,
        qname: &Name,
        view: &ServiceView,
        set: &records::SrvSet,
        client: &Locality,
    ) -> Answer {
        let ttl = self.settings.ttl;
        let mut tiered: Vec<(Tier, &records::SrvTarget)> = set
            .targets
            .iter()
            .map(|t| (view.tier(client, t.cluster, t.zone.as_deref()), t))
            .collect();
        tiered.sort_by_key(|(tier, _)| *tier);
        view.apply_policy(&mut tiered);
        let mut answers = Vec::with_capacity(tiered.len());
        let mut additionals = Vec::with_capacity(tiered.len());
        let mut sources: Vec<ClusterId> = Vec::new();
        // `<cluster>.<svc>.<ns>.svc.<zone>`, built once per cluster of the answer.
        let mut bases: Vec<Option<Name>> = vec![None; view.clusters.len()];
        for (tier, t) in tiered {
            let idx = usize::from(t.cluster);
            let Some(part) = view.clusters.get(idx) else {
                continue;
            };
            if bases[idx].is_none() {
                bases[idx] = self
                    .service_name(&view.key)
                    .and_then(|n| n.prepend_label(part.cluster.as_bytes()).ok());
            }
            let Some(target) = bases[idx]
                .as_ref()
                .and_then(|b| b.prepend_label(t.label.text().as_bytes()).ok())
            else {
                continue;
            };
            let srv = SRV::new(u16::from(tier), 1, t.port, target.clone());
            answers.push(Record::from_rdata(qname.clone(), ttl, RData::SRV(srv)));
            let addrs = part.addrs_of(&t.label);
            additionals.extend(addrs.iter().map(|ip| addr_record(&target, ttl, ip)));
            if !sources.contains(&part.cluster) {
                sources.push(part.cluster.clone());
            }
        }
        let mut a = Answer::records(answers).from(sources);
        a.additionals = additionals;
        a
    }

    /// A/AAAA of a service (all clusters, or cluster `only`), nearest tier first; for the
    /// whole service the policy (`nearest`, `max_answers`) applies.
    fn members_answer(
        &self,
        qname: &Name,
        qtype: RecordType,
        view: &ServiceView,
        client: &Locality,
        only: Option<u16>,
    ) -> Answer {
        let origin = &self.settings.origin;
        let members = view
            .members
            .iter()
            .filter(|m| only.is_none_or(|c| m.cluster == c));
        let family = match qtype {
            RecordType::A => Family::V4,
            RecordType::AAAA => Family::V6,
            // ANY answers one family (RFC 8482): IPv4 when there is any, else IPv6.
            RecordType::ANY if members.clone().any(|m| m.ip.is_ipv4()) => Family::V4,
            RecordType::ANY => Family::V6,
            _ => return self.negative(origin, ResponseCode::NoError),
        };
        let mut tiered: Vec<(Tier, &records::Member)> = members
            .filter(|m| family.has(&m.ip))
            .map(|m| (view.tier(client, m.cluster, m.zone.as_deref()), m))
            .collect();
        tiered.sort_by_key(|(tier, _)| *tier);
        if only.is_none() {
            view.apply_policy(&mut tiered);
        }
        if tiered.is_empty() {
            return self.negative(origin, ResponseCode::NoError);
        }
        let mut sources: Vec<ClusterId> = Vec::new();
        let answers = tiered
            .iter()
            .map(|(_, m)| {
                if let Some(p) = view.clusters.get(usize::from(m.cluster))
                    && !sources.contains(&p.cluster)
                {
                    sources.push(p.cluster.clone());
                }
                addr_record(qname, self.settings.ttl, m.ip)
            })
            .collect();
        Answer::records(answers).from(sources)
    }

    fn resolve_reverse(
        &self,
        zone: &ReverseZone,
        qname: &Name,
        lower: &LowerName,
        qtype: RecordType,
    ) -> Answer {
        let apex = Name::from(&zone.apex);
        if *lower == zone.apex {
            return self.apex(qname, &apex, qtype);
        }
        let Some(ip) = names::reverse_addr(lower) else {
            // A partial reverse name may have addresses below it: an empty non-terminal,
            // never NXDOMAIN (RFC 8020 would let resolvers deny the whole subtree).
            return self.negative(&apex, ResponseCode::NoError);
        };
        match self.ptr.get(&ip) {
            None => self.negative(&apex, ResponseCode::NXDomain),
            Some(_) if !matches!(qtype, RecordType::PTR | RecordType::ANY) => {
                self.negative(&apex, ResponseCode::NoError)
            }
            Some(targets) => Answer::records(
                targets
                    .iter()
                    .filter_map(|t| self.endpoint_name(&t.key, &t.cluster, &t.label.text()))
                    .map(|n| {
                        Record::from_rdata(qname.clone(), self.settings.ttl, RData::PTR(PTR(n)))
                    })
                    .collect(),
            ),
        }
    }

    /// A reverse zone (its apex, e.g. `8.10.in-addr.arpa.`) as a master file: SOA, NS, then
    /// the PTR records of the addresses in it, in address order. `None`: not one of ours.
    pub fn reverse_master_file(&self, apex: &Name) -> Option<String> {
        let lower = LowerName::new(apex);
        let zone = self.settings.reverse.iter().find(|z| z.apex == lower)?;
        let ttl = self.settings.ttl;
        let apex = Name::from(&zone.apex);
        let mut recs = vec![self.soa(&apex, ttl)];
        recs.extend(self.ns_records(&apex));
        let mut ips: Vec<&IpAddr> = self
            .ptr
            .keys()
            .filter(|ip| zone.net.contains(*ip))
            .collect();
        ips.sort();
        for ip in ips {
            let owner = Name::from(*ip);
            for t in self.ptr.get(ip).into_iter().flat_map(|t| t.iter()) {
                if let Some(target) = self.endpoint_name(&t.key, &t.cluster, &t.label.text()) {
                    recs.push(Record::from_rdata(
                        owner.clone(),
                        ttl,
                        RData::PTR(PTR(target)),
                    ));
                }
            }
        }
        let mut out = String::new();
        for r in recs {
            let _ = writeln!(out, "{r}");
        }
        Some(out)
    }

    /// The forward zone as an RFC 1035 master file: SOA first, then every name in order.
    /// These are exactly the records [`ZoneData::resolve`] answers with to a client outside
    /// every configured network (the local cluster's locality), in the order it answers.
    pub fn master_file(&self) -> String {
        let mut out = String::new();
        let origin = &self.settings.origin;
        let ttl = self.settings.ttl;
        let mut recs = vec![self.soa(origin, ttl)];
        recs.extend(self.ns_records(origin));
        recs.extend(self.glue_records());
        let mut keys: Vec<&ServiceKey> = self.services.keys().collect();
        keys.sort();
        for key in keys {
            let Some(view) = self.services.get(key) else {
                continue;
            };
            let Some(name) = self.service_name(key) else {
                continue;
            };
            if let Some(target) = &view.external_name {
                recs.push(Record::from_rdata(
                    name,
                    ttl,
                    RData::CNAME(CNAME(target.clone())),
                ));
                continue;
            }
            let client = self.settings.locality.default_locality();
            for qtype in [RecordType::A, RecordType::AAAA] {
                recs.extend(
                    self.members_answer(&name, qtype, view, client, None)
                        .answers,
                );
            }
            for set in &view.srv {
                let Ok(srv_name) = Name::from_labels([
                    format!("_{}", set.name).as_bytes(),
                    format!("_{}", set.proto.label()).as_bytes(),
                ])
                .and_then(|n| n.append_domain(&name)) else {
                    continue;
                };
                recs.extend(self.srv_answer(&srv_name, view, set, client).answers);
            }
            for (idx, part) in (0u16..).zip(&view.clusters) {
                let Ok(cname) = name.prepend_label(part.cluster.as_bytes()) else {
                    continue;
                };
                for qtype in [RecordType::A, RecordType::AAAA] {
                    let answer = self.members_answer(&cname, qtype, view, client, Some(idx));
                    recs.extend(answer.answers);
                }
                for (label, addrs) in part.endpoints() {
                    if let Ok(ename) = cname.prepend_label(label.text().as_bytes()) {
                        recs.extend(addr_records(&ename, ttl, &addrs, Some(Family::Both)));
                    }
                }
            }
        }
        for r in recs {
            let _ = writeln!(out, "{r}");
        }
        out
    }
}

/// Which address families an answer carries.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
    /// Both: only the master file lists every address of a name.
    Both,
}

impl Family {
    /// The family that answers `qtype` from `addrs`; ANY answers one family (RFC 8482): IPv4
    /// when there is any, else IPv6.
    fn of(qtype: RecordType, addrs: &Addrs) -> Option<Family> {
        match qtype {
            RecordType::A => Some(Family::V4),
            RecordType::AAAA => Some(Family::V6),
            RecordType::ANY if !addrs.v4.is_empty() => Some(Family::V4),
            RecordType::ANY => Some(Family::V6),
            _ => None,
        }
    }

    fn has(self, ip: &IpAddr) -> bool {
        matches!(
            (self, ip),
            (Family::V4, IpAddr::V4(_)) | (Family::V6, IpAddr::V6(_)) | (Family::Both, _)
        )
    }
}

fn addr_record(name: &Name, ttl: u32, ip: IpAddr) -> Record {
    let data = match ip {
        IpAddr::V4(a) => RData::A(A(a)),
        IpAddr::V6(a) => RData::AAAA(AAAA(a)),
    };
    Record::from_rdata(name.clone(), ttl, data)
}

/// The address records of `addrs` in `family`.
fn addr_records(name: &Name, ttl: u32, addrs: &Addrs, family: Option<Family>) -> Vec<Record> {
    let Some(family) = family else {
        return Vec::new();
    };
    addrs
        .iter()
        .filter(|ip| family.has(ip))
        .map(|ip| addr_record(name, ttl, ip))
        .collect()
}

#[cfg(test)]
mod tests {
    //! The zone view on the demo fleet, table-driven (as CoreDNS's `handler_test.go`): each
    //! case is a question and the exact answer, authority and additional records expected.

    use super::*;
    use crate::config::{Config, SourceConfig};
    use std::path::Path;

    fn demo() -> (ZoneData, Vec<ClusterStatus>) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/demo/meshdns.yaml");
        let config = Config::load(&path).unwrap();
        let settings = Arc::new(ZoneSettings::from_config(&config));
        let mut slices = Vec::new();
        for name in &settings.cluster_order {
            let c = config.clusters.iter().find(|c| &c.name == name).unwrap();
            let SourceConfig::File(file) = &c.source else {
                panic!("demo clusters are files")
            };
            slices.push((c.name.clone(), crate::sources::file::load(file).unwrap()));
        }
        let mut zone = ZoneData::new(settings.clone(), 2026);
        let mut keys: Vec<ServiceKey> =
            slices.iter().flat_map(|(_, s)| s.keys().cloned()).collect();
        keys.sort();
        keys.dedup();
        for key in keys {
            let parts = slices
                .iter()
                .filter_map(|(c, s)| s.get(&key).map(|svc| (c, &**svc)));
            let view = ServiceView::build(key.clone(), parts, &settings).map(Arc::new);
            zone.set_service(&key, view);
        }
        (zone, Vec::new())
    }

    struct Case {
        qname: &'static str,
        qtype: RecordType,
        rcode: ResponseCode,
        answer: &'static [&'static str],
        ns: &'static [&'static str],
        extra: &'static [&'static str],
    }

    const SOA: &str = "clusterset.local. 5 IN SOA ns.clusterset.local. hostmaster.clusterset.local. 2026 300 60 86400 5";

    const CASES: &[Case] = &[
        Case {
            qname: "reviews.bookinfo.svc.clusterset.local.",
            qtype: RecordType::A,
            rcode: ResponseCode::NoError,
            answer: &[
                "reviews.bookinfo.svc.clusterset.local. 5 IN A 10.8.1.5",
                "reviews.bookinfo.svc.clusterset.local. 5 IN A 10.8.1.6",
                "reviews.bookinfo.svc.clusterset.local. 5 IN A 10.12.0.5",
                "reviews.bookinfo.svc.clusterset.local. 5 IN A 10.16.0.5",
            ],
            ns: &[],
            extra: &[],
        },
        Case {
            qname: "Beta.Reviews.bookinfo.svc.clusterset.local.",
            qtype: RecordType::A,
            rcode: ResponseCode::NoError,
            answer: &["Beta.Reviews.bookinfo.svc.clusterset.local. 5 IN A 10.12.0.5"],
            ns: &[],
            extra: &[],
        },
        Case {
            qname: "frontend-0.beta.frontend.web.svc.clusterset.local.",
            qtype: RecordType::AAAA,
            rcode: ResponseCode::NoError,
            answer: &["frontend-0.beta.frontend.web.svc.clusterset.local. 5 IN AAAA fd00:b::9"],
            ns: &[],
            extra: &[],
        },
        Case {
            qname: "_postgres._tcp.db.data.svc.clusterset.local.",
            qtype: RecordType::SRV,
            rcode: ResponseCode::NoError,
            answer: &[
                "_postgres._tcp.db.data.svc.clusterset.local. 5 IN SRV 0 1 5432 db-0.alpha.db.data.svc.clusterset.local.",
                "_postgres._tcp.db.data.svc.clusterset.local. 5 IN SRV 0 1 5432 db-1.alpha.db.data.svc.clusterset.local.",
            ],
            ns: &[],
            extra: &[
                "db-0.alpha.db.data.svc.clusterset.local. 5 IN A 10.8.3.20",
                "db-1.alpha.db.data.svc.clusterset.local. 5 IN A 10.8.3.21",
            ],
        },
        Case {
            qname: "legacy-api.default.svc.clusterset.local.",
            qtype: RecordType::AAAA,
            rcode: ResponseCode::NoError,
            answer: &["legacy-api.default.svc.clusterset.local. 5 IN CNAME api.example.com."],
            ns: &[],
            extra: &[],
        },
        Case {
            qname: "ratings.bookinfo.svc.clusterset.local.",
            qtype: RecordType::AAAA,
            rcode: ResponseCode::NoError,
            answer: &[],
            ns: &[SOA],
            extra: &[],
        },
        Case {
            qname: "data.svc.clusterset.local.",
            qtype: RecordType::A,
            rcode: ResponseCode::NoError,
            answer: &[],
            ns: &[SOA],
            extra: &[],
        },
        Case {
            qname: "10-8-2-8.alpha.ratings.bookinfo.svc.clusterset.local.",
            qtype: RecordType::A,
            rcode: ResponseCode::NXDomain,
            answer: &[],
            ns: &[SOA],
            extra: &[],
        },
        Case {
            qname: "clusterset.local.",
            qtype: RecordType::NS,
            rcode: ResponseCode::NoError,
            answer: &["clusterset.local. 5 IN NS ns.clusterset.local."],
            ns: &[],
            extra: &["ns.clusterset.local. 5 IN A 127.0.0.1"],
        },
        Case {
            qname: "20.3.8.10.in-addr.arpa.",
            qtype: RecordType::PTR,
            rcode: ResponseCode::NoError,
            answer: &["20.3.8.10.in-addr.arpa. 5 IN PTR db-0.alpha.db.data.svc.clusterset.local."],
            ns: &[],
            extra: &[],
        },
        Case {
            qname: "99.3.8.10.in-addr.arpa.",
            qtype: RecordType::PTR,
            rcode: ResponseCode::NXDomain,
            answer: &[],
            ns: &[
                "8.10.in-addr.arpa. 5 IN SOA ns.clusterset.local. hostmaster.clusterset.local. 2026 300 60 86400 5",
            ],
            extra: &[],
        },
        Case {
            qname: "example.com.",
            qtype: RecordType::A,
            rcode: ResponseCode::Refused,
            answer: &[],
            ns: &[],
            extra: &[],
        },
    ];

    #[test]
    fn resolve_every_case() {
        let (zone, clusters) = demo();
        let client = zone.settings.locality.default_locality().clone();
        for c in CASES {
            // from_ascii keeps the letter case (from_str would normalize it as IDNA).
            let qname = Name::from_ascii(c.qname).unwrap();
            let a = zone.resolve(&qname, c.qtype, &clusters, &client);
            let text = |rs: &[Record]| -> Vec<String> {
                rs.iter()
                    .map(|r| {
                        r.to_string()
                            .split_whitespace()
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .collect()
            };
            assert_eq!(a.rcode, c.rcode, "{} {}", c.qname, c.qtype);
            assert_eq!(
                a.authoritative,
                c.rcode != ResponseCode::Refused,
                "{}",
                c.qname
            );
            assert_eq!(text(&a.answers), c.answer, "{} {}", c.qname, c.qtype);
            assert_eq!(text(&a.authority), c.ns, "{} {}", c.qname, c.qtype);
            assert_eq!(text(&a.additionals), c.extra, "{} {}", c.qname, c.qtype);
        }
    }
}

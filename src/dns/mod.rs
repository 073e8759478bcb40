//! The DNS front end: hickory-server's `Server` with UDP and TCP on one address, and our
//! [`Handler`] deciding every response.
//!
//! The handler is thin: it checks the client against `allow`, the opcode, the EDNS version
//! and the question count, loads the current snapshot once and asks the zone view
//! ([`ZoneData::resolve`](crate::zone::ZoneData::resolve)) for the answer. It adds what
//! operators debug with: NSID (RFC 5001), CHAOS `id.server`/`hostname.bind`/`version.bind`,
//! and an Extended DNS Error "Stale Answer" (RFC 8914) when a cluster behind the answer lost
//! its source. Malformed packets
//! never reach it: hickory drops what has no readable header and answers FORMERR to what
//! does not decode.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hickory_proto::op::{
    Edns, Header, HeaderCounts, Message, MessageType, Metadata, OpCode, Query, ResponseCode,
};
use hickory_proto::rr::rdata::TXT;
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsCode, EdnsOption, NSIDPayload};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncodable, BinEncoder};
use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponse, MessageResponseBuilder, Queries};
use ipnet::IpNet;
use tokio::net::{TcpListener, UdpSocket};
use tracing::{debug, info, warn};

mod batch;
pub mod cache;
mod udp;

use crate::catalog::{CatalogReader, Snapshot, unix_now};
use crate::config::{ChaosName, Config};
use crate::metrics::DnsMetrics;
use crate::model::SourceState;
use crate::zone::Answer;

/// How long an idle TCP connection is kept.
const TCP_IDLE: Duration = Duration::from_secs(5);

/// What the handler needs from the config; swapped whole on reload.
#[derive(Clone, Debug)]
pub struct DnsSettings {
    pub allow: Vec<IpNet>,
    pub max_udp_payload: u16,
    /// NSID payload and CHAOS `id.server`/`hostname.bind`; `None`: hidden.
    pub identity: Option<String>,
    pub chaos: Vec<ChaosName>,
    /// Fraction of queries logged.
    pub query_log: f64,
    /// Forwarders whose EDNS Client Subnet option is believed.
    pub ecs_from: Vec<IpNet>,
}

impl DnsSettings {
    pub fn from_config(config: &Config) -> DnsSettings {
        DnsSettings {
            allow: config.allow.clone(),
            max_udp_payload: config.max_udp_payload,
            identity: config.identity.clone(),
            chaos: config.chaos.clone(),
            query_log: config.query_log,
            ecs_from: config.locality.ecs_from.clone(),
        }
    }

    fn allowed(&self, ip: IpAddr) -> bool {
        contains(&self.allow, ip)
    }
}

fn contains(nets: &[IpNet], ip: IpAddr) -> bool {
    // An IPv4 client on a dual-stack socket shows up as ::ffff:a.b.c.d.
    let ip = ip.to_canonical();
    nets.iter().any(|net| net.contains(&ip))
}

/// The client a query is for: the sender, or the subnet a trusted forwarder names in EDNS
/// Client Subnet (RFC 7871).
struct Client {
    ip: IpAddr,
    /// The request's ECS option and whether we believed it.
    ecs: Option<(ClientSubnet, bool)>,
}

impl Client {
    fn of(s: &DnsSettings, request: &Request) -> Client {
        let src = request.src().ip();
        let subnet = request
            .edns
            .as_ref()
            .and_then(|e| match e.option(EdnsCode::Subnet) {
                Some(EdnsOption::Subnet(cs)) => Some(*cs),
                _ => None,
            });
        match subnet {
            // SOURCE PREFIX-LENGTH 0: the client asks not to be located by its subnet.
            Some(cs) if cs.source_prefix() > 0 && contains(&s.ecs_from, src) => Client {
                ip: cs.addr(),
                ecs: Some((cs, true)),
            },
            Some(cs) => Client {
                ip: src,
                ecs: Some((cs, false)),
            },
            None => Client { ip: src, ecs: None },
        }
    }

    /// The ECS option of the response: the request's family, address and source prefix,
    /// with SCOPE = how much of the address the answer depended on — the prefix of the
    /// network that located it (the source prefix when none did), 0 when ECS was not used.
    fn response_ecs(&self, located_by: Option<u8>) -> Option<ClientSubnet> {
        let (cs, used) = self.ecs?;
        let scope = if used {
            located_by.unwrap_or(cs.source_prefix())
        } else {
            0
        };
        Some(ClientSubnet::new(cs.addr(), cs.source_prefix(), scope))
    }

    /// The response's ECS option with a given scope.
    fn response_ecs_scope(&self, scope: Option<u8>) -> Option<ClientSubnet> {
        let (cs, _) = self.ecs?;
        Some(ClientSubnet::new(
            cs.addr(),
            cs.source_prefix(),
            scope.unwrap_or(0),
        ))
    }
}

/// EDE (RFC 8914) info code 3: the answer comes from stale data.
const EDE_STALE_ANSWER: u16 = 3;
/// The EDNS option code of Extended DNS Errors (hickory 0.26 has no type for it).
const EDNS_EDE: u16 = 15;

#[derive(Clone)]
pub struct Handler {
    catalog: CatalogReader,
    settings: Arc<ArcSwap<DnsSettings>>,
    metrics: Arc<DnsMetrics>,
}

impl Handler {
    pub fn new(
        catalog: CatalogReader,
        settings: Arc<ArcSwap<DnsSettings>>,
        metrics: Arc<DnsMetrics>,
    ) -> Handler {
        Handler {
            catalog,
            settings,
            metrics,
        }
    }

    /// The OPT record of the response: present iff the request had one (RFC 6891), with our
    /// payload size (the client's, capped at `max_udp_payload`, never below 512), NSID when
    /// asked for (RFC 5001), and a "Stale Answer" EDE when `stale` names clusters.
    fn response_edns(
        &self,
        s: &DnsSettings,
        request: &Request,
        stale: &[String],
        ecs: Option<ClientSubnet>,
    ) -> Option<Edns> {
        let req = request.edns.as_ref()?;
        let mut edns = Edns::new();
        edns.set_version(0);
        edns.set_max_payload(req.max_payload().clamp(512, s.max_udp_payload));
        if req.option(EdnsCode::NSID).is_some()
            && let Some(id) = &s.identity
            && let Ok(payload) = NSIDPayload::new(id.as_bytes())
        {
            edns.options_mut().insert(EdnsOption::NSID(payload));
        }
        if let Some(ecs) = ecs {
            edns.options_mut().insert(EdnsOption::Subnet(ecs));
        }
        if !stale.is_empty() {
            let text = format!("stale data from {}", stale.join(", "));
            let mut data = EDE_STALE_ANSWER.to_be_bytes().to_vec();
            data.extend_from_slice(text.as_bytes());
            edns.options_mut()
                .insert(EdnsOption::Unknown(EDNS_EDE, data));
        }
        Some(edns)
    }

    /// Decides the response: an rcode and, for a good question, an answer.
    fn decide(
        &self,
        s: &DnsSettings,
        request: &Request,
        client: &Client,
        snapshot: &Snapshot,
    ) -> Decision {
        if !s.allowed(request.src().ip()) {
            self.metrics.refused_clients.inc();
            return Decision::Error(ResponseCode::Refused);
        }
        if request.metadata.op_code != OpCode::Query {
            return Decision::Error(ResponseCode::NotImp);
        }
        if request.version() > 0 {
            return Decision::Error(ResponseCode::BADVERS);
        }
        let Ok(info) = request.request_info() else {
            return Decision::Error(ResponseCode::FormErr);
        };
        let query = info.query.original();
        match (query.query_class(), query.query_type()) {
            (DNSClass::CH, qtype) => chaos(s, query.name(), qtype),
            (DNSClass::IN, RecordType::AXFR | RecordType::IXFR) => {
                // We offer no zone transfers (yet): refuse, as RFC 5936 allows.
                Decision::Error(ResponseCode::Refused)
            }
            (DNSClass::IN, RecordType::OPT) => Decision::Error(ResponseCode::FormErr),
            (DNSClass::IN, qtype) => {
                let (locality, located_by) = snapshot.zone.settings.locality.locate(client.ip);
                let answer = snapshot.resolve(query.name(), qtype, locality);
                let stale = answer
                    .sources
                    .iter()
                    .filter_map(|c| snapshot.cluster(c))
                    .filter_map(|c| match c.state {
                        SourceState::Stale { since_unix } => Some(format!(
                            "{} (source lost {}s ago)",
                            c.name,
                            unix_now().saturating_sub(since_unix)
                        )),
                        _ => None,
                    })
                    .collect();
                Decision::Answer(answer, stale, client.response_ecs(located_by))
            }
            _ => Decision::Error(ResponseCode::Refused),
        }
    }
}

/// CHAOS TXT names (`dig CH TXT id.server`): who answered, and which version.
fn chaos(s: &DnsSettings, name: &Name, qtype: RecordType) -> Decision {
    if !matches!(qtype, RecordType::TXT | RecordType::ANY) {
        return Decision::Error(ResponseCode::Refused);
    }
    let asked = name.to_lowercase().to_ascii();
    let Some(which) = s.chaos.iter().find(|c| c.name() == asked) else {
        return Decision::Error(ResponseCode::Refused);
    };
    let text = match which {
        ChaosName::VersionBind => format!("meshdns {}", env!("CARGO_PKG_VERSION")),
        ChaosName::IdServer | ChaosName::HostnameBind => match &s.identity {
            Some(id) => id.clone(),
            None => return Decision::Error(ResponseCode::Refused),
        },
    };
    let mut record = Record::from_rdata(name.clone(), 0, RData::TXT(TXT::new(vec![text])));
    record.dns_class = DNSClass::CH;
    Decision::Answer(
        Answer {
            rcode: ResponseCode::NoError,
            authoritative: true,
            answers: vec![record],
            authority: Vec::new(),
            additionals: Vec::new(),
            sources: Vec::new(),
            cacheable: true,
        },
        Vec::new(),
        None,
    )
}

enum Decision {
    Error(ResponseCode),
    /// The answer, the stale clusters it uses, and the response's ECS option.
    Answer(Answer, Vec<String>, Option<ClientSubnet>),
}

/// A decided response, ready to become a message.
struct Prepared {
    decision: Decision,
    edns: Option<Edns>,
    meta: Metadata,
    /// An empty question section, used when the request did not have exactly one question:
    /// a FORMERR for 100 questions must not be larger than the request (nor fail to encode
    /// past 512 bytes).
    no_questions: Option<Queries>,
}

type Records<'a> = std::slice::Iter<'a, Record>;

impl Prepared {
    /// Whether the encoded response may be served again to the same question from the same
    /// locality, for as long as the snapshot and settings live.
    fn cacheable(&self) -> bool {
        matches!(&self.decision, Decision::Answer(a, stale, None) if a.cacheable && stale.is_empty())
    }

    /// The response message, for hickory's TCP listener.
    fn message<'a>(
        &'a self,
        request: &'a Request,
    ) -> MessageResponse<'a, 'a, Records<'a>, Records<'a>, Records<'a>, Records<'a>> {
        let queries = self.no_questions.as_ref().unwrap_or(&request.queries);
        let mut builder = MessageResponseBuilder::new(queries, None);
        if let Some(edns) = &self.edns {
            builder.edns(edns);
        }
        let none: &'a [Record] = &[];
        match &self.decision {
            Decision::Error(_) => builder.build(
                self.meta,
                none.iter(),
                none.iter(),
                none.iter(),
                none.iter(),
            ),
            Decision::Answer(a, ..) => builder.build(
                self.meta,
                a.answers.iter(),
                a.authority.iter(),
                none.iter(),
                a.additionals.iter(),
            ),
        }
    }
}

impl Handler {
    fn prepare(&self, settings: &DnsSettings, request: &Request, snapshot: &Snapshot) -> Prepared {
        let client = Client::of(settings, request);
        let decision = self.decide(settings, request, &client, snapshot);
        let (stale, ecs): (&[String], _) = match &decision {
            Decision::Answer(_, stale, ecs) => (stale, *ecs),
            // Not located (refused, malformed): the answer does not depend on the subnet.
            Decision::Error(_) => (&[], client.response_ecs_scope(Some(0))),
        };
        let edns = self.response_edns(settings, request, stale, ecs);
        let mut meta = Metadata::response_from_request(&request.metadata);
        match &decision {
            Decision::Error(rcode) => meta.response_code = *rcode,
            Decision::Answer(a, ..) => {
                meta.response_code = a.rcode;
                meta.authoritative = a.authoritative;
            }
        }
        let no_questions = if request.queries.len() == 1 {
            None
        } else {
            Queries::read(&mut BinDecoder::new(&[]), 0).ok()
        };
        Prepared {
            decision,
            edns,
            meta,
            no_questions,
        }
    }

    /// Answers one UDP request, without sockets: the encoded response (truncated with TC=1
    /// past the client's payload size, 512 without EDNS) and whether it may be cached.
    ///
    /// Unlike hickory's own encoding (which copies the question's bytes), the question is
    /// emitted as a name, so every answer owner compresses to a pointer to it: answers are
    /// smaller, fit more often without truncation, and a cached one follows the letter case
    /// of the question it is patched with.
    pub fn answer_udp(&self, request: &Request) -> (Vec<u8>, Option<CacheStamp>) {
        let started = Instant::now();
        let settings = self.settings.load_full();
        // One snapshot for the whole answer; its serial tells for how long it may be cached.
        let snapshot = self.catalog.load();
        let prepared = self.prepare(&settings, request, &snapshot);
        let max = prepared.edns.as_ref().map_or(512, Edns::max_payload);
        let queries: Vec<Query> = match &prepared.no_questions {
            Some(_) => Vec::new(),
            None => request
                .queries
                .queries()
                .iter()
                .map(|q| q.original().clone())
                .collect(),
        };
        // Emits the response with the first `additionals` additional records.
        let emit = |additionals: usize| {
            let (answers, authorities, extra) = match &prepared.decision {
                Decision::Answer(a, ..) => (
                    a.answers.clone(),
                    a.authority.clone(),
                    a.additionals[..additionals.min(a.additionals.len())].to_vec(),
                ),
                Decision::Error(_) => (Vec::new(), Vec::new(), Vec::new()),
            };
            let mut message = Message::new(
                prepared.meta.id,
                MessageType::Response,
                prepared.meta.op_code,
            );
            message.metadata = prepared.meta;
            message.queries = queries.clone();
            message.answers = answers;
            message.authorities = authorities;
            message.additionals = extra;
            message.edns = prepared.edns.clone();
            let mut bytes = Vec::with_capacity(512);
            let mut encoder = BinEncoder::new(&mut bytes);
            encoder.set_max_size(max);
            let emitted = message.emit(&mut encoder);
            match emitted.and_then(|()| Ok(Header::read(&mut BinDecoder::new(&bytes))?)) {
                Ok(header) => (ResponseInfo::from(header), bytes),
                Err(error) => {
                    debug!(%error, src = %request.src(), "encoding a response failed");
                    servfail(request)
                }
            }
        };
        let all = match &prepared.decision {
            Decision::Answer(a, ..) => a.additionals.len(),
            Decision::Error(_) => 0,
        };
        let (mut info, mut bytes) = emit(all);
        // TC is for an incomplete answer (RFC 2181 section 9): when only additional records
        // do not fit, send as many as fit, without TC, so the client need not retry over TCP.
        if info.truncation && all > 0 {
            let (lean_info, lean) = emit(0);
            if !lean_info.truncation {
                (info, bytes) = (lean_info, lean);
                // The most additional records that fit: binary search, ~log2(n) encodings.
                let (mut fits, mut too_many) = (0, all);
                while too_many - fits > 1 {
                    let mid = (fits + too_many) / 2;
                    let (mid_info, mid_bytes) = emit(mid);
                    if mid_info.truncation {
                        too_many = mid;
                    } else {
                        (fits, info, bytes) = (mid, mid_info, mid_bytes);
                    }
                }
            }
        }
        self.record(&settings, request, &info, started);
        // A truncated answer is as deterministic as a whole one (same snapshot, same payload
        // size): it is cached too, so big answers do not cost a full encoding every time.
        let stamp = prepared.cacheable().then(|| CacheStamp {
            serial: snapshot.serial(),
            settings: Arc::as_ptr(&settings) as usize,
        });
        (bytes, stamp)
    }
}

/// What a cacheable answer was built from: the snapshot serial and the settings version. It
/// may only be served again while both are current.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheStamp {
    pub serial: u32,
    pub settings: usize,
}

/// A bare SERVFAIL header for `request`, as hickory sends when encoding fails.
fn servfail(request: &Request) -> (ResponseInfo, Vec<u8>) {
    let mut meta = Metadata::response_from_request(&request.metadata);
    meta.response_code = ResponseCode::ServFail;
    let header = Header {
        metadata: meta,
        counts: HeaderCounts::default(),
    };
    let mut bytes = Vec::with_capacity(12);
    let _ = header.emit(&mut BinEncoder::new(&mut bytes));
    (ResponseInfo::from(header), bytes)
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let started = Instant::now();
        let settings = self.settings.load();
        let snapshot = self.catalog.load();
        let prepared = self.prepare(&settings, request, &snapshot);
        let info = match response_handle
            .send_response(prepared.message(request))
            .await
        {
            Ok(info) => info,
            Err(error) => {
                debug!(%error, src = %request.src(), "sending response failed");
                servfail(request).0
            }
        };
        self.record(&settings, request, &info, started);
        info
    }
}

impl Handler {
    fn record(&self, s: &DnsSettings, request: &Request, info: &ResponseInfo, started: Instant) {
        let query = request.queries.queries().first();
        let qtype = query.map_or_else(|| "none".to_string(), |q| q.query_type().to_string());
        let transport = match request.protocol() {
            Protocol::Udp => "udp",
            Protocol::Tcp => "tcp",
            _ => "other",
        };
        let rcode = rcode_name(info.response_code);
        let elapsed = started.elapsed();
        if s.query_log > 0.0 && fastrand::f64() < s.query_log {
            info!(
                src = %request.src(),
                transport,
                qname = %query.map_or_else(String::new, |q| q.name().to_string()),
                qtype = %qtype,
                rcode = %rcode,
                answers = info.counts().answers,
                tc = info.truncation,
                micros = elapsed.as_micros() as u64,
                "query"
            );
        }
        self.metrics.queries_of(qtype, rcode, transport).inc();
        if info.truncation {
            self.metrics.truncated.inc();
        }
        self.metrics.latency.observe(elapsed.as_secs_f64());
    }
}

/// The RFC mnemonic of a response code, as dig prints it.
fn rcode_name(rcode: ResponseCode) -> String {
    match rcode {
        ResponseCode::NoError => "NOERROR".into(),
        ResponseCode::FormErr => "FORMERR".into(),
        ResponseCode::ServFail => "SERVFAIL".into(),
        ResponseCode::NXDomain => "NXDOMAIN".into(),
        ResponseCode::NotImp => "NOTIMP".into(),
        ResponseCode::Refused => "REFUSED".into(),
        ResponseCode::BADVERS => "BADVERS".into(),
        other => u16::from(other).to_string(),
    }
}

/// Binds UDP and TCP on `addr`. With port 0, both get the same ephemeral port.
pub async fn bind(addr: SocketAddr) -> std::io::Result<(UdpSocket, TcpListener)> {
    let mut last_err = None;
    for _ in 0..16 {
        let udp = UdpSocket::bind(addr).await?;
        let port = udp.local_addr()?.port();
        match TcpListener::bind(SocketAddr::new(addr.ip(), port)).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if addr.port() == 0 && e.kind() == std::io::ErrorKind::AddrInUse => {
                last_err = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(last_err.unwrap_or_else(|| std::io::Error::other("no port free for UDP and TCP")))
}

/// The DNS listeners: our UDP loop with its fast path, hickory-server for TCP.
pub struct Listeners {
    pub tcp: Server<Handler>,
    udp: udp::UdpServer,
}

/// Starts serving on bound sockets.
pub fn serve(handler: Handler, udp: UdpSocket, tcp: TcpListener) -> std::io::Result<Listeners> {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let udp = udp::serve(udp.into_std()?, handler.clone(), workers)?;
    let mut server = Server::new(handler);
    server.register_listener(tcp, TCP_IDLE, 1024);
    Ok(Listeners { tcp: server, udp })
}

impl Listeners {
    /// Closes the listeners; in-flight TCP requests finish.
    pub async fn shutdown(mut self) {
        if let Err(e) = self.tcp.shutdown_gracefully().await {
            warn!(error = %e, "TCP listener ended with an error");
        }
        let udp = self.udp;
        let _ = tokio::task::spawn_blocking(move || udp.shutdown()).await;
    }
}

/// Logs why serving ended, if it was not a shutdown.
pub async fn wait(listeners: &mut Listeners) {
    if let Err(error) = listeners.tcp.block_until_done().await {
        warn!(%error, "DNS listener ended");
    }
}

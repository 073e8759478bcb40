//! The DNS front end: hickory-server's `Server` with UDP and TCP on one address, and our
//! [`Handler`] deciding every response.
//!
//! The handler is thin: it checks the client against `allow`, the opcode, the EDNS version
//! and the question count, loads the current snapshot once and asks the zone view
//! ([`ZoneData::resolve`](crate::zone::ZoneData::resolve)) for the answer. Malformed packets
//! never reach it: hickory drops what has no readable header and answers FORMERR to what
//! does not decode.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Header, HeaderCounts, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, Record, RecordType};
use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use ipnet::IpNet;
use tokio::net::{TcpListener, UdpSocket};
use tracing::{debug, warn};

use crate::catalog::CatalogReader;
use crate::metrics::{DnsMetrics, QueryLabels};
use crate::zone::Answer;

/// How long an idle TCP connection is kept.
const TCP_IDLE: Duration = Duration::from_secs(5);

pub struct Handler {
    catalog: CatalogReader,
    allow: Vec<IpNet>,
    max_udp_payload: u16,
    metrics: Arc<DnsMetrics>,
}

impl Handler {
    pub fn new(
        catalog: CatalogReader,
        allow: Vec<IpNet>,
        max_udp_payload: u16,
        metrics: Arc<DnsMetrics>,
    ) -> Handler {
        Handler {
            catalog,
            allow,
            max_udp_payload,
            metrics,
        }
    }

    fn allowed(&self, ip: IpAddr) -> bool {
        // An IPv4 client on a dual-stack socket shows up as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.allow.iter().any(|net| net.contains(&ip))
    }

    /// The OPT record of the response: present iff the request had one (RFC 6891), with our
    /// payload size: the client's, capped at `max_udp_payload`, never below 512.
    fn response_edns(&self, request: &Request) -> Option<Edns> {
        let req = request.edns.as_ref()?;
        let mut edns = Edns::new();
        edns.set_version(0);
        edns.set_max_payload(req.max_payload().clamp(512, self.max_udp_payload));
        Some(edns)
    }

    /// Decides the response: an rcode and, for a good question, the zone's answer.
    fn decide(&self, request: &Request) -> Decision {
        if !self.allowed(request.src().ip()) {
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
        match query.query_class() {
            DNSClass::IN => {}
            _ => return Decision::Error(ResponseCode::Refused),
        }
        match query.query_type() {
            // We offer no zone transfers (yet): refuse, as RFC 5936 allows.
            RecordType::AXFR | RecordType::IXFR => Decision::Error(ResponseCode::Refused),
            RecordType::OPT => Decision::Error(ResponseCode::FormErr),
            qtype => {
                let snapshot = self.catalog.load();
                Decision::Answer(snapshot.zone.resolve(query.name(), qtype))
            }
        }
    }
}

enum Decision {
    Error(ResponseCode),
    Answer(Answer),
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let started = Instant::now();
        let edns = self.response_edns(request);
        let mut builder = MessageResponseBuilder::new(&request.queries, None);
        if let Some(edns) = &edns {
            builder.edns(edns);
        }
        let mut meta = Metadata::response_from_request(&request.metadata);
        let decision = self.decide(request);
        let sent = match &decision {
            Decision::Error(rcode) => {
                meta.response_code = *rcode;
                response_handle
                    .send_response(builder.build_no_records(meta))
                    .await
            }
            Decision::Answer(a) => {
                meta.response_code = a.rcode;
                meta.authoritative = a.authoritative;
                let none: &[Record] = &[];
                let resp = builder.build(
                    meta,
                    a.answers.iter(),
                    a.authority.iter(),
                    none.iter(),
                    a.additionals.iter(),
                );
                response_handle.send_response(resp).await
            }
        };
        let info = match sent {
            Ok(info) => info,
            Err(error) => {
                debug!(%error, src = %request.src(), "sending response failed");
                let mut meta = Metadata::response_from_request(&request.metadata);
                meta.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata: meta,
                    counts: HeaderCounts::default(),
                })
            }
        };
        self.record(request, &info, started);
        info
    }
}

impl Handler {
    fn record(&self, request: &Request, info: &ResponseInfo, started: Instant) {
        let qtype = request
            .queries
            .queries()
            .first()
            .map_or_else(|| "none".to_string(), |q| q.query_type().to_string());
        let transport = match request.protocol() {
            Protocol::Udp => "udp",
            Protocol::Tcp => "tcp",
            _ => "other",
        };
        self.metrics
            .queries
            .get_or_create(&QueryLabels {
                qtype,
                rcode: rcode_name(info.response_code),
                transport,
            })
            .inc();
        if info.truncation {
            self.metrics.truncated.inc();
        }
        self.metrics
            .latency
            .observe(started.elapsed().as_secs_f64());
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

/// Starts serving on bound sockets; stop it with `shutdown_gracefully`.
pub fn serve(handler: Handler, udp: UdpSocket, tcp: TcpListener) -> Server<Handler> {
    let mut server = Server::new(handler);
    server.register_socket(udp);
    server.register_listener(tcp, TCP_IDLE, 1024);
    server
}

/// Logs why serving ended, if it was not a shutdown.
pub async fn wait(server: &mut Server<Handler>) {
    if let Err(error) = server.block_until_done().await {
        warn!(%error, "DNS listener ended");
    }
}

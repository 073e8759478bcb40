//! The UDP listener: our own receive loop in front of the handler.
//!
//! One blocking thread per available core reads the socket, a batch of datagrams per system
//! call (the kernel wakes one reader at a time). A plain query whose answer is cached for the current snapshot is answered by
//! patching the cached bytes ([`cache`](super::cache)); every other packet goes through the
//! same [`Handler`] as TCP, built into a request the way hickory-server's own UDP loop does it:
//! packets without a readable header or with QR=1 are dropped, undecodable ones get FORMERR.
//! Why not hickory's UDP loop: a task per request and a full decode/encode per answer cost
//! about half the throughput (DESIGN.md, "Fast path").

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hickory_proto::op::{Header, HeaderCounts, MessageType, Metadata, ResponseCode};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncodable, BinEncoder};
use hickory_server::net::xfer::Protocol;
use hickory_server::server::Request;
use tracing::{debug, info, warn};

use super::Handler;
use super::batch::{BATCH, Batch};
use super::cache::{AnswerCache, Entry, Question};

/// How often blocked readers look at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(100);

/// The running UDP listener; [`UdpServer::shutdown`] stops it.
pub struct UdpServer {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// Serves `socket` with `workers` threads.
pub fn serve(socket: UdpSocket, handler: Handler, workers: usize) -> io::Result<UdpServer> {
    socket.set_nonblocking(false)?;
    socket.set_read_timeout(Some(STOP_POLL))?;
    let socket = Arc::new(socket);
    let stop = Arc::new(AtomicBool::new(false));
    let cache = Arc::new(AnswerCache::default());
    let mut threads = Vec::with_capacity(workers);
    for i in 0..workers.max(1) {
        let worker = Worker {
            socket: socket.clone(),
            handler: handler.clone(),
            cache: cache.clone(),
            stop: stop.clone(),
        };
        threads.push(
            std::thread::Builder::new()
                .name(format!("dns-udp-{i}"))
                .spawn(move || worker.run())?,
        );
    }
    Ok(UdpServer { stop, threads })
}

impl UdpServer {
    /// Stops reading and waits for the threads (at most ~100 ms).
    pub fn shutdown(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

struct Worker {
    socket: Arc<UdpSocket>,
    handler: Handler,
    cache: Arc<AnswerCache>,
    stop: Arc<AtomicBool>,
}

impl Worker {
    fn run(self) {
        let mut batch = Batch::default();
        let mut replies: Vec<(Vec<u8>, SocketAddr)> = Vec::with_capacity(BATCH);
        let mut spare: Vec<Vec<u8>> = Vec::with_capacity(BATCH);
        let mut key = Vec::with_capacity(300);
        while !self.stop.load(Ordering::Relaxed) {
            let n = match batch.recv(&self.socket) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    continue;
                }
                Err(error) => {
                    // ICMP errors of earlier sends (ECONNREFUSED) and the like: keep serving.
                    debug!(%error, "UDP receive error");
                    continue;
                }
            };
            for i in 0..n {
                let (packet, src) = batch.packet(i);
                let Some(src) = src else { continue };
                let started = Instant::now();
                let mut out = spare.pop().unwrap_or_default();
                let cached = self.fast(packet, src, &mut key, &mut out);
                if cached {
                    self.handler
                        .metrics
                        .latency
                        .observe(started.elapsed().as_secs_f64());
                } else {
                    // The handler records this query's metrics itself.
                    out = self.slow(packet, src, &key);
                }
                if !out.is_empty() {
                    replies.push((out, src));
                }
            }
            batch.send(&self.socket, &replies);
            spare.extend(replies.drain(..).map(|(b, _)| b));
        }
    }

    /// Answers from the cache into `out` if it can; leaves the cache key of a plain question
    /// in `key` (empty otherwise) for the slow path to fill.
    fn fast(&self, packet: &[u8], src: SocketAddr, key: &mut Vec<u8>, out: &mut Vec<u8>) -> bool {
        key.clear();
        let Some(q) = Question::parse(packet) else {
            return false;
        };
        let settings = self.handler.settings.load();
        // Refusals are counted by the handler.
        if !settings.allowed(src.ip()) {
            return false;
        }
        let snapshot = self.handler.catalog.load();
        let locality = snapshot.zone.settings.locality.locate_id(src.ip());
        q.key(settings.max_udp_payload, locality, key);
        let generation = self
            .cache
            .generation(snapshot.serial(), Arc::as_ptr(&settings) as usize);
        let Some(entry) = generation.get(key) else {
            return false;
        };
        entry.answer(packet, out);
        entry.counter.inc();
        self.handler.metrics.cached.inc();
        if entry.truncated {
            self.handler.metrics.truncated.inc();
        }
        if settings.query_log > 0.0 && fastrand::f64() < settings.query_log {
            info!(%src, transport = "udp", qname = %q.name(), qtype = %entry.qtype, rcode = %entry.rcode, cached = true, "query");
        }
        true
    }

    /// The full path, as hickory-server's UDP loop does it; fills the cache when it may.
    /// An empty result means: no answer.
    fn slow(&self, packet: &[u8], src: SocketAddr, key: &[u8]) -> Vec<u8> {
        // No header: nothing to answer to. A response: never answered (no reflection).
        let Ok(header) = Header::read(&mut BinDecoder::new(packet)) else {
            return Vec::new();
        };
        if header.metadata.message_type == MessageType::Response || unanswerable(src) {
            return Vec::new();
        }
        let request = match Request::from_bytes(packet.to_vec(), src, Protocol::Udp) {
            Ok(r) => r,
            Err(error) => {
                debug!(%error, %src, "malformed request: FORMERR");
                self.handler
                    .metrics
                    .queries_of("none".into(), "FORMERR".into(), "udp")
                    .inc();
                return formerr(&header);
            }
        };
        let (bytes, stamp) = self.handler.answer_udp(&request);
        let Some(stamp) = stamp.filter(|_| !key.is_empty()) else {
            return bytes;
        };
        let Some(q) = Question::parse(packet) else {
            return bytes;
        };
        let rcode = super::rcode_name(ResponseCode::from(0, bytes[3] & 0x0f));
        let qtype = hickory_proto::rr::RecordType::from(q.qtype).to_string();
        let counter = self
            .handler
            .metrics
            .queries_of(qtype.clone(), rcode.clone(), "udp");
        let entry = Entry {
            bytes: bytes.clone().into_boxed_slice(),
            qname_len: q.qname.len(),
            counter,
            qtype,
            rcode,
            truncated: bytes[2] & 0x02 != 0,
        };
        // Filed under the snapshot and settings it was built from (not whatever is current
        // now: a change published meanwhile must not inherit an answer that predates it).
        self.cache
            .generation(stamp.serial, stamp.settings)
            .insert(key, entry);
        bytes
    }
}

/// Source addresses hickory-server refuses to answer (no port, unspecified, broadcast).
fn unanswerable(src: SocketAddr) -> bool {
    if src.port() == 0 || src.ip().is_unspecified() {
        return true;
    }
    match src.ip() {
        std::net::IpAddr::V4(v4) => v4.is_broadcast(),
        std::net::IpAddr::V6(_) => false,
    }
}

/// FORMERR with an empty question section, as hickory-server answers what it cannot decode.
fn formerr(request: &Header) -> Vec<u8> {
    let mut meta = Metadata::response_from_request(&request.metadata);
    meta.response_code = ResponseCode::FormErr;
    let header = Header {
        metadata: meta,
        counts: HeaderCounts::default(),
    };
    let mut bytes = Vec::with_capacity(12);
    if header.emit(&mut BinEncoder::new(&mut bytes)).is_err() {
        warn!("cannot encode a FORMERR header");
        bytes.clear();
    }
    bytes
}

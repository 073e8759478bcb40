//! A malformed packet never crashes or stalls the server (DESIGN.md, "Invariants").
//!
//! The real binary runs on the demo fleet; a seeded generator throws 20,000 UDP datagrams and
//! 4,000 TCP messages at it (random bytes, truncated and mutated queries, bad compression
//! pointers, odd opcodes, classes, types and EDNS, misframed TCP streams). Every 64 datagrams
//! it waits until a valid query is answered again: that proves the server never stalls, and
//! keeps the socket buffer from overflowing, so every packet really reaches the server.
//! Afterwards the process must still run, answer correctly over UDP and TCP, and say it is
//! healthy. Targeted tests then pin the rcode of each kind of odd request with a raw socket.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use fastrand::Rng;
use support::{Demo, Meshdns, http_get};

const REVIEWS: &str = "reviews.bookinfo.svc.clusterset.local";
const REVIEWS_IPS: [&str; 4] = ["10.12.0.5", "10.16.0.5", "10.8.1.5", "10.8.1.6"];

// RR types and classes by number.
const A: u16 = 1;
const AAAA: u16 = 28;
const TXT: u16 = 16;
const OPT: u16 = 41;
const IN: u16 = 1;
const CH: u16 = 3;
const HS: u16 = 4;
const NONE: u16 = 254;
const ANY_CLASS: u16 = 255;

// Response codes.
const NOERROR: u8 = 0;
const FORMERR: u8 = 1;
const NOTIMP: u8 = 4;
const REFUSED: u8 = 5;

// ---------------------------------------------------------------------------------------
// A tiny DNS wire encoder, so the tests can build exactly the broken packets they want.

/// `name` in wire format; every '.'-separated piece is one label, "" or "." is the root.
fn wire_name(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in name
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
    {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out
}

fn header(id: u16, flags: u16, qd: u16, an: u16, ns: u16, ar: u16) -> Vec<u8> {
    [id, flags, qd, an, ns, ar]
        .iter()
        .flat_map(|v| v.to_be_bytes())
        .collect()
}

fn question(wire: &[u8], qtype: u16, qclass: u16) -> Vec<u8> {
    let mut q = wire.to_vec();
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&qclass.to_be_bytes());
    q
}

/// A standard query (opcode 0, RD clear) with one question.
fn query(id: u16, name: &str, qtype: u16, qclass: u16) -> Vec<u8> {
    let mut p = header(id, 0, 1, 0, 0, 0);
    p.extend(question(&wire_name(name), qtype, qclass));
    p
}

/// Sets the flags word (QR, opcode, AA, TC, RD, RA, Z, AD, CD, rcode).
fn set_flags(p: &mut [u8], flags: u16) {
    p[2..4].copy_from_slice(&flags.to_be_bytes());
}

fn opcode_flags(opcode: u8) -> u16 {
    u16::from(opcode & 0xf) << 11
}

/// An OPT pseudo-record (RFC 6891): root owner, payload size in CLASS, extended rcode,
/// version and flags in TTL.
fn opt_rr(payload: u16, ext_rcode: u8, version: u8, flags: u16, rdata: &[u8]) -> Vec<u8> {
    let mut r = vec![0];
    r.extend_from_slice(&OPT.to_be_bytes());
    r.extend_from_slice(&payload.to_be_bytes());
    r.extend_from_slice(&[ext_rcode, version]);
    r.extend_from_slice(&flags.to_be_bytes());
    r.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    r.extend_from_slice(rdata);
    r
}

/// One EDNS option: code, length, data.
fn edns_option(code: u16, data: &[u8]) -> Vec<u8> {
    let mut o = code.to_be_bytes().to_vec();
    o.extend_from_slice(&(data.len() as u16).to_be_bytes());
    o.extend_from_slice(data);
    o
}

/// Appends records to the additional section, adjusting ARCOUNT.
fn with_additional(mut p: Vec<u8>, records: &[Vec<u8>]) -> Vec<u8> {
    let ar = u16::from_be_bytes([p[10], p[11]]) + records.len() as u16;
    p[10..12].copy_from_slice(&ar.to_be_bytes());
    for r in records {
        p.extend_from_slice(r);
    }
    p
}

/// A length-prefixed TCP message (RFC 1035 4.2.2).
fn framed(p: &[u8]) -> Vec<u8> {
    let mut f = (p.len() as u16).to_be_bytes().to_vec();
    f.extend_from_slice(p);
    f
}

// ---------------------------------------------------------------------------------------
// Just enough of a decoder to check responses.

#[derive(Debug, Clone)]
struct Resp {
    id: u16,
    qr: bool,
    opcode: u8,
    aa: bool,
    tc: bool,
    rcode: u8,
    qdcount: u16,
    ancount: u16,
    arcount: u16,
    /// (type, class, rdata) of each answer record.
    answers: Vec<(u16, u16, Vec<u8>)>,
    /// The OPT record, if the additional section has one.
    opt: Option<Opt>,
    len: usize,
}

#[derive(Debug, Clone, Copy)]
struct Opt {
    payload: u16,
    ext_rcode: u8,
    version: u8,
}

/// Returns the offset just past the (possibly compressed) name at `at`.
fn skip_name(b: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *b.get(at)?;
        match len {
            0 => return Some(at + 1),
            l if l & 0xc0 == 0xc0 => return (at + 2 <= b.len()).then_some(at + 2),
            l if l <= 63 => at += 1 + l as usize,
            _ => return None,
        }
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// The header always; sections when they decode.
fn parse_response(b: &[u8]) -> Option<Resp> {
    if b.len() < 12 {
        return None;
    }
    let flags = be16(b, 2)?;
    let mut r = Resp {
        id: be16(b, 0)?,
        qr: flags & 0x8000 != 0,
        opcode: ((flags >> 11) & 0xf) as u8,
        aa: flags & 0x0400 != 0,
        tc: flags & 0x0200 != 0,
        rcode: (flags & 0xf) as u8,
        qdcount: be16(b, 4)?,
        ancount: be16(b, 6)?,
        arcount: be16(b, 10)?,
        answers: Vec::new(),
        opt: None,
        len: b.len(),
    };
    let nscount = be16(b, 8)?;
    let mut at = 12;
    for _ in 0..r.qdcount {
        at = skip_name(b, at)? + 4;
    }
    let total = r.ancount as usize + nscount as usize + r.arcount as usize;
    for i in 0..total {
        at = skip_name(b, at)?;
        let (rtype, class) = (be16(b, at)?, be16(b, at + 2)?);
        let ttl = b.get(at + 4..at + 8)?;
        let rdlen = be16(b, at + 8)? as usize;
        let rdata = b.get(at + 10..at + 10 + rdlen)?.to_vec();
        if i < r.ancount as usize {
            r.answers.push((rtype, class, rdata));
        } else if i >= r.ancount as usize + nscount as usize && rtype == OPT {
            r.opt = Some(Opt {
                payload: class,
                ext_rcode: ttl[0],
                version: ttl[1],
            });
        }
        at += 10 + rdlen;
    }
    Some(r)
}

// ---------------------------------------------------------------------------------------
// Raw exchanges.

fn udp_socket(server: SocketAddr) -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind UDP");
    s.connect(server).expect("connect UDP");
    s
}

/// Sends `packet` and returns the first response with its ID, resending a few times (UDP may
/// lose datagrams on a busy machine). `None` if nothing came back.
fn exchange(server: SocketAddr, packet: &[u8]) -> Option<Resp> {
    let id = be16(packet, 0)?;
    let s = udp_socket(server);
    s.set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    let mut buf = [0u8; 65535];
    for _ in 0..3 {
        s.send(packet).expect("send");
        let deadline = Instant::now() + Duration::from_millis(700);
        while Instant::now() < deadline {
            match s.recv(&mut buf) {
                Ok(n) => {
                    if let Some(r) = parse_response(&buf[..n])
                        && r.id == id
                    {
                        return Some(r);
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    break;
                }
                Err(e) => panic!("recv: {e}"),
            }
        }
    }
    None
}

fn must_answer(server: SocketAddr, packet: &[u8], what: &str) -> Resp {
    let r = exchange(server, packet).unwrap_or_else(|| panic!("no response to {what}"));
    assert!(r.qr, "{what}: response without QR: {r:?}");
    r
}

/// Sends every packet of `silent` from one socket, then a valid query, and returns the IDs of
/// every response that arrived before (and shortly after) the valid one's answer. The server
/// handles datagrams in order, so the answer to the valid query marks the end of the others.
fn responses_to(server: SocketAddr, silent: &[Vec<u8>]) -> Vec<u16> {
    let s = udp_socket(server);
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    for p in silent {
        s.send(p).expect("send");
    }
    let probe_id = 0xbeef;
    let probe = query(probe_id, REVIEWS, A, IN);
    let mut seen = Vec::new();
    let mut buf = [0u8; 65535];
    let mut answered = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    'outer: while Instant::now() < deadline {
        s.send(&probe).expect("send probe");
        let until = Instant::now() + Duration::from_secs(1);
        while Instant::now() < until {
            match s.recv(&mut buf) {
                Ok(n) => match parse_response(&buf[..n]) {
                    Some(r) if r.id == probe_id && r.rcode == NOERROR => {
                        answered = true;
                        break 'outer;
                    }
                    Some(r) => seen.push(r.id),
                    None => seen.push(be16(&buf[..n], 0).unwrap_or(0)),
                },
                Err(_) => break,
            }
        }
    }
    assert!(answered, "the server no longer answers a valid query");
    // Stragglers: anything the server might still send for the silent packets.
    while let Ok(n) = s.recv(&mut buf) {
        match parse_response(&buf[..n]) {
            Some(r) if r.id == probe_id => {}
            Some(r) => seen.push(r.id),
            None => seen.push(be16(&buf[..n], 0).unwrap_or(0)),
        }
    }
    seen
}

// ---------------------------------------------------------------------------------------
// The packet generator.

/// Names that reach every branch of the zone view: services, clusters, endpoints, SRV, the
/// apex, empty non-terminals, glue, reverse zones (v4 and v6), misses and out-of-zone names.
const NAMES: &[&str] = &[
    REVIEWS,
    "alpha.reviews.bookinfo.svc.clusterset.local",
    "reviews-v1-abc.alpha.reviews.bookinfo.svc.clusterset.local",
    "10-16-0-5.gamma.reviews.bookinfo.svc.clusterset.local",
    "_grpc-xds._tcp.istiod.istio-system.svc.clusterset.local",
    "_tcp.istiod.istio-system.svc.clusterset.local",
    "_http._udp.reviews.bookinfo.svc.clusterset.local",
    "_._.reviews.bookinfo.svc.clusterset.local",
    "frontend.web.svc.clusterset.local",
    "legacy-api.default.svc.clusterset.local",
    "db.data.svc.clusterset.local",
    "clusterset.local",
    "svc.clusterset.local",
    "bookinfo.svc.clusterset.local",
    "ns.clusterset.local",
    "nope.bookinfo.svc.clusterset.local",
    "a.b.c.d.e.f.g.svc.clusterset.local",
    "x.clusterset.local",
    "5.1.8.10.in-addr.arpa",
    "9.4.12.10.in-addr.arpa",
    "8.10.in-addr.arpa",
    "999.1.8.10.in-addr.arpa",
    "+5.1.8.10.in-addr.arpa",
    "1.5.1.8.10.in-addr.arpa",
    "in-addr.arpa",
    "9.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.b.0.0.0.0.0.0.0.0.d.f.ip6.arpa",
    "0.0.0.0.0.b.0.0.0.0.d.f.ip6.arpa",
    "g.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.b.0.0.0.0.0.0.0.0.d.f.ip6.arpa",
    "example.com",
    "local",
    "",
];

const TYPES: &[u16] = &[
    A, AAAA, 33, 12, 5, 6, 2, TXT, 255, 0, OPT, 251, 252, 65535, 99, 64, 65,
];

fn pick<T: Copy>(rng: &mut Rng, items: &[T]) -> T {
    items[rng.usize(..items.len())]
}

fn random_bytes(rng: &mut Rng, len: usize) -> Vec<u8> {
    (0..len).map(|_| rng.u8(..)).collect()
}

fn random_bytes_in(rng: &mut Rng, len: std::ops::Range<usize>) -> Vec<u8> {
    let len = rng.usize(len);
    random_bytes(rng, len)
}

/// A structurally valid question name: a known name, sometimes with random-cased letters or
/// extra labels of arbitrary bytes (dots, NULs, 0xff, 63-byte labels) in front.
fn random_name_wire(rng: &mut Rng) -> Vec<u8> {
    let base = pick(rng, NAMES);
    let base: String = if rng.bool() {
        base.chars()
            .map(|c| {
                if rng.bool() {
                    c.to_ascii_uppercase()
                } else {
                    c
                }
            })
            .collect()
    } else {
        base.to_string()
    };
    let mut wire = Vec::new();
    if rng.u8(..4) == 0 {
        let mut budget = 255usize.saturating_sub(base.len() + 2);
        for _ in 0..rng.usize(1..4) {
            let len = rng.usize(1..=63).min(budget.saturating_sub(1));
            if len == 0 {
                break;
            }
            budget -= len + 1;
            wire.push(len as u8);
            wire.extend(random_bytes(rng, len));
        }
    }
    wire.extend(wire_name(&base));
    wire
}

fn random_class(rng: &mut Rng) -> u16 {
    match rng.u8(..10) {
        0 => pick(rng, &[CH, HS, NONE, ANY_CLASS, 0, 2]),
        1 => rng.u16(..),
        _ => IN,
    }
}

fn random_type(rng: &mut Rng) -> u16 {
    if rng.u8(..8) == 0 {
        rng.u16(..)
    } else {
        pick(rng, TYPES)
    }
}

/// A random but well-formed query, with or without EDNS.
fn valid_query(rng: &mut Rng) -> Vec<u8> {
    let mut p = header(rng.u16(..), 0, 1, 0, 0, 0);
    if rng.bool() {
        set_flags(&mut p, 0x0100); // RD
    }
    p.extend(question(
        &random_name_wire(rng),
        random_type(rng),
        random_class(rng),
    ));
    if rng.bool() {
        p = with_additional(p, &[opt_rr(pick(rng, &[512, 1232, 4096]), 0, 0, 0, &[])]);
    }
    p
}

/// Odd but decodable EDNS: versions, payload sizes, two OPTs, odd or truncated options.
fn edns_variant(rng: &mut Rng) -> Vec<u8> {
    let q = query(rng.u16(..), pick(rng, NAMES), random_type(rng), IN);
    let payload = pick(rng, &[0, 1, 511, 512, 1232, 65535]);
    let version = pick(rng, &[0, 0, 1, 255]);
    let flags = pick(rng, &[0, 0x8000, 0x7fff, 0xffff]);
    let ext = pick(rng, &[0, 0, 1, 255]);
    match rng.u8(..9) {
        0 => with_additional(q, &[opt_rr(payload, ext, version, flags, &[])]),
        1 => with_additional(
            q,
            &[
                opt_rr(payload, 0, version, 0, &[]),
                opt_rr(1232, 0, 0, 0, &[]),
            ],
        ),
        // An option announcing more bytes than the OPT's RDATA holds.
        2 => {
            let mut o = edns_option(rng.u16(..), &random_bytes_in(rng, 0..8));
            o[2..4].copy_from_slice(&(rng.u16(9..)).to_be_bytes());
            with_additional(q, &[opt_rr(payload, 0, version, 0, &o)])
        }
        // RDATA cut in the middle of an option header.
        3 => with_additional(q, &[opt_rr(payload, 0, 0, 0, &[0, 10, 0])]),
        // Known options with odd contents: NSID, ECS (bad family/prefix), cookie, padding,
        // EDE, keepalive, chain.
        4 => {
            let options: Vec<u8> = (0..rng.usize(1..4))
                .flat_map(|_| {
                    let code = pick(rng, &[3, 8, 10, 11, 12, 13, 15, 5, 6, 7, 65001]);
                    let data = match code {
                        8 => {
                            let mut d = vec![0, pick(rng, &[0, 1, 2, 3, 0xff])];
                            d.extend([rng.u8(..), rng.u8(..)]);
                            d.extend(random_bytes_in(rng, 0..20));
                            d
                        }
                        _ => random_bytes_in(rng, 0..40),
                    };
                    edns_option(code, &data)
                })
                .collect();
            with_additional(q, &[opt_rr(payload, 0, 0, flags, &options)])
        }
        // OPT with an owner that is not the root.
        5 => {
            let mut r = wire_name("x.example");
            r.extend_from_slice(&opt_rr(payload, 0, 0, 0, &[])[1..]);
            with_additional(q, &[r])
        }
        // OPT in the answer section instead.
        6 => {
            let mut p = q;
            p[6..8].copy_from_slice(&1u16.to_be_bytes());
            p.extend(opt_rr(payload, 0, 0, 0, &[]));
            p
        }
        // OPT whose RDLENGTH runs past the end of the packet.
        7 => {
            let mut p = with_additional(q, &[opt_rr(payload, 0, 0, 0, &[0, 3, 0, 0])]);
            let n = p.len();
            p[n - 6..n - 4].copy_from_slice(&600u16.to_be_bytes());
            p
        }
        _ => with_additional(q, &[opt_rr(payload, ext, version, flags, &[])]),
    }
}

/// Names the decoder must reject or survive: bad label lengths, pointer loops, overlong names.
fn bad_name_query(rng: &mut Rng) -> Vec<u8> {
    let mut p = header(rng.u16(..), 0, 1, 0, 0, 0);
    let name: Vec<u8> = match rng.u8(..10) {
        // Label length > 63 (0x40 and 0x80 are the reserved/extended label types).
        0 => {
            let mut n = wire_name(REVIEWS);
            n[0] = rng.u8(64..192);
            n
        }
        // Pointer to itself.
        1 => vec![0xc0, 12],
        // Pointer forward, past the end.
        2 => {
            let off = rng.u16(20..0x3fff);
            vec![0xc0 | (off >> 8) as u8, off as u8]
        }
        // Pointer backward into the header.
        3 => vec![0xc0, rng.u8(..12)],
        // Two labels pointing at each other: a loop.
        4 => vec![1, b'a', 0xc0, 12],
        // A pointer chain: each pointer targets the previous one.
        5 => {
            let mut n = vec![1, b'a', 0];
            for i in 0..rng.usize(1..40) {
                let target = 12 + if i == 0 { 0 } else { 3 + (i - 1) * 2 } as u16;
                n.extend([0xc0 | (target >> 8) as u8, target as u8]);
            }
            n
        }
        // Longer than 255 bytes: five 63-byte labels.
        6 => {
            let mut n = Vec::new();
            for _ in 0..5 {
                n.push(63);
                n.extend(std::iter::repeat_n(b'a', 63));
            }
            n.push(0);
            n
        }
        // 128 one-letter labels: 257 bytes.
        7 => {
            let mut n = Vec::new();
            for _ in 0..128 {
                n.extend([1, b'x']);
            }
            n.push(0);
            n
        }
        // Exactly 255 bytes, in the zone.
        8 => {
            let suffix = wire_name("svc.clusterset.local");
            let mut n = Vec::new();
            let mut room = 255 - suffix.len();
            while room > 1 {
                let len = (room - 1).min(63);
                n.push(len as u8);
                n.extend(std::iter::repeat_n(b'b', len));
                room -= len + 1;
            }
            n.extend(suffix);
            n
        }
        // A label length pointing past the end of the packet.
        _ => vec![50, b'a', b'b'],
    };
    p.extend(name);
    if rng.u8(..4) != 0 {
        p.extend_from_slice(&A.to_be_bytes());
        p.extend_from_slice(&IN.to_be_bytes());
    }
    p
}

/// Records in the answer/authority/additional sections of a query, some broken.
fn with_junk_records(rng: &mut Rng) -> Vec<u8> {
    let mut p = query(rng.u16(..), pick(rng, NAMES), A, IN);
    let section = rng.usize(0..3);
    let count = rng.u16(1..4);
    let at = 6 + section * 2;
    p[at..at + 2].copy_from_slice(&count.to_be_bytes());
    for _ in 0..count {
        // Owner: a compression pointer to the question name.
        p.extend([0xc0, 12]);
        p.extend_from_slice(&random_type(rng).to_be_bytes());
        p.extend_from_slice(&random_class(rng).to_be_bytes());
        p.extend_from_slice(&rng.u32(..).to_be_bytes());
        let rdata = random_bytes_in(rng, 0..30);
        let rdlen = if rng.u8(..4) == 0 {
            rng.u16(..)
        } else {
            rdata.len() as u16
        };
        p.extend_from_slice(&rdlen.to_be_bytes());
        p.extend(rdata);
    }
    p
}

/// One packet for the barrage.
fn barrage_packet(rng: &mut Rng) -> Vec<u8> {
    match rng.u8(..16) {
        // Random bytes of random length.
        0 | 1 => {
            let len = rng.usize(0..600);
            random_bytes(rng, len)
        }
        // A valid query cut at a random point.
        2 | 3 => {
            let mut q = valid_query(rng);
            q.truncate(rng.usize(0..q.len()));
            q
        }
        // A valid query with a few random bytes changed.
        4 | 5 => {
            let mut q = valid_query(rng);
            for _ in 0..rng.usize(1..6) {
                let i = rng.usize(0..q.len());
                q[i] = rng.u8(..);
            }
            q
        }
        // Random flags: opcodes, QR, Z, rcode bits.
        6 => {
            let mut q = valid_query(rng);
            set_flags(&mut q, rng.u16(..));
            q
        }
        // Random section counts.
        7 => {
            let mut q = valid_query(rng);
            for at in [4, 6, 8, 10] {
                if rng.bool() {
                    let any = rng.u16(..);
                    let v = pick(rng, &[0, 1, 2, 3, 255, 65535, any]);
                    q[at..at + 2].copy_from_slice(&v.to_be_bytes());
                }
            }
            q
        }
        // QDCOUNT 0, or 2 and more questions.
        8 => {
            let n = pick(rng, &[0u16, 2, 3, 17]);
            let mut p = header(rng.u16(..), 0, n, 0, 0, 0);
            for _ in 0..n {
                p.extend(question(
                    &random_name_wire(rng),
                    random_type(rng),
                    random_class(rng),
                ));
            }
            p
        }
        // Opcodes 1..15, QR=1.
        9 => {
            let mut q = valid_query(rng);
            let flags = if rng.bool() {
                opcode_flags(rng.u8(1..16))
            } else {
                0x8000 | opcode_flags(rng.u8(..16)) | u16::from(rng.u8(..16))
            };
            set_flags(&mut q, flags);
            q
        }
        // Odd classes and types.
        10 => query(
            rng.u16(..),
            pick(rng, NAMES),
            pick(rng, &[0, OPT, 251, 252, 255, 65535]),
            pick(rng, &[IN, CH, HS, NONE, ANY_CLASS]),
        ),
        11 | 12 => edns_variant(rng),
        13 => bad_name_query(rng),
        14 => with_junk_records(rng),
        // A valid query with trailing garbage.
        _ => {
            let mut q = valid_query(rng);
            let extra = rng.usize(1..64);
            q.extend(random_bytes(rng, extra));
            q
        }
    }
}

// ---------------------------------------------------------------------------------------
// After the barrage.

/// The server still runs, answers correctly over UDP and TCP and is healthy.
fn assert_healthy(m: &mut Meshdns) {
    assert!(m.is_running(), "meshdns exited; log:\n{}", m.logs());
    let logs = m.logs();
    assert!(
        !logs.contains("panicked"),
        "a task panicked while handling the barrage; log:\n{logs}"
    );
    for transport in ["", "+tcp"] {
        let d = m.dig(&format!("{REVIEWS} A {transport}"));
        assert_eq!(d.status, "NOERROR", "dig {transport}:\n{}", d.raw);
        assert!(d.has_flag("aa"), "dig {transport}:\n{}", d.raw);
        assert_eq!(
            d.sorted_answer_data(),
            REVIEWS_IPS,
            "dig {transport}:\n{}",
            d.raw
        );
    }
    let (status, body) = http_get(m.ops, "/healthz").expect("GET /healthz");
    assert_eq!(status, 200, "/healthz: {body}");
}

/// Responses seen during the barrage, by rcode (header bits).
#[derive(Default, Debug)]
struct Tally {
    total: usize,
    by_rcode: [usize; 16],
}

impl Tally {
    /// Counts one datagram, which must be a DNS response.
    fn count(&mut self, b: &[u8]) -> Option<Resp> {
        let r = parse_response(b);
        assert!(
            r.as_ref().is_some_and(|r| r.qr),
            "not a DNS response ({} bytes): {:02x?}",
            b.len(),
            &b[..b.len().min(64)]
        );
        self.total += 1;
        if let Some(r) = &r {
            self.by_rcode[usize::from(r.rcode)] += 1;
        }
        r
    }
}

/// Waits until the server answers a valid query on `sock` again: the queue of datagrams sent
/// before it has been read. Panics (with the log) if it stays silent for long.
fn sync(m: &mut Meshdns, sock: &UdpSocket, id: u16, tally: &mut Tally) {
    let probe = query(id, REVIEWS, A, IN);
    let mut buf = [0u8; 65535];
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut next_send = Instant::now();
    loop {
        if Instant::now() >= next_send {
            // Resent now and then: a datagram can be lost when the machine is very busy.
            let _ = sock.send(&probe);
            next_send = Instant::now() + Duration::from_millis(500);
        }
        match sock.recv(&mut buf) {
            Ok(n) => {
                if let Some(r) = tally.count(&buf[..n])
                    && r.id == id
                    && r.rcode == NOERROR
                    && r.ancount == 4
                {
                    return;
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!(
                "UDP error ({e}); running: {}; log:\n{}",
                m.is_running(),
                m.logs()
            ),
        }
        if Instant::now() > deadline {
            panic!(
                "the server stopped answering; running: {}; log:\n{}",
                m.is_running(),
                m.logs()
            );
        }
    }
}

/// Reads whatever responses are waiting, checking each is a DNS response.
fn drain(sock: &UdpSocket, tally: &mut Tally) {
    let mut buf = [0u8; 65535];
    while let Ok(n) = sock.recv(&mut buf) {
        tally.count(&buf[..n]);
    }
}

const UDP_PACKETS: usize = 20_000;
const TCP_MESSAGES: usize = 4_000;

/// The barrage's seed and size are fixed; `MESHDNS_BARRAGE_SEED=<n>` and
/// `MESHDNS_BARRAGE_SCALE=<factor>` explore further by hand (a failure prints both).
fn barrage_rng(default_seed: u64) -> (Rng, u64, usize) {
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    let seed = env("MESHDNS_BARRAGE_SEED").unwrap_or(default_seed);
    let scale = env("MESHDNS_BARRAGE_SCALE").unwrap_or(1).max(1) as usize;
    (Rng::with_seed(seed), seed, scale)
}

#[test]
fn udp_barrage_never_crashes_or_stalls_the_server() {
    let demo = Demo::new();
    let mut m = Meshdns::start(&demo.config());
    let sock = udp_socket(m.dns);
    sock.set_nonblocking(true).unwrap();
    let (mut rng, seed, scale) = barrage_rng(0x6d65_7368_646e_7301);
    eprintln!("UDP barrage: seed {seed:#x}, scale {scale}");
    let mut tally = Tally::default();
    let mut sent = 0usize;
    let mut probe_id = 0u16;
    while sent < UDP_PACKETS * scale {
        let p = barrage_packet(&mut rng);
        loop {
            match sock.send(&p) {
                Ok(_) => break,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    drain(&sock, &mut tally);
                    std::thread::sleep(Duration::from_millis(1));
                }
                // An ICMP error from an earlier datagram surfaces on the next call.
                Err(e) => panic!(
                    "UDP send failed ({e}) after {sent} packets; running: {}; log:\n{}",
                    m.is_running(),
                    m.logs()
                ),
            }
        }
        sent += 1;
        if sent.is_multiple_of(32) {
            drain(&sock, &mut tally);
        }
        if sent.is_multiple_of(64) {
            probe_id = probe_id.wrapping_add(1);
            sync(&mut m, &sock, 0xa000 | (probe_id & 0x0fff), &mut tally);
        }
    }
    sync(&mut m, &sock, 0xafff, &mut tally);
    eprintln!("UDP barrage: {sent} packets, responses: {tally:?}");
    assert!(sent >= 10_000);
    assert!(
        tally.total > sent / 4,
        "few responses to {sent} packets: {tally:?}"
    );
    // Every kind of answer was exercised, not only FORMERR.
    for rcode in [NOERROR, FORMERR, 3, NOTIMP, REFUSED] {
        assert!(
            tally.by_rcode[usize::from(rcode)] > 0,
            "no rcode {rcode}: {tally:?}"
        );
    }
    assert_healthy(&mut m);
}

/// How one TCP connection of the barrage ends.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Ending {
    /// Half-close after the last complete message.
    Clean,
    /// A length prefix announcing more bytes than follow, then close.
    ShortLast,
    /// One byte of a length prefix, then close.
    HalfPrefix,
    /// A zero-length message (the server may close the connection there).
    ZeroLength,
}

/// Sends `bytes` on a fresh connection, half-closes and reads every response until the server
/// closes. Returns the response frames, or `None` if the server reset the connection.
fn tcp_session(server: SocketAddr, bytes: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut c = TcpStream::connect_timeout(&server, Duration::from_secs(5)).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    c.set_write_timeout(Some(Duration::from_secs(15))).unwrap();
    // The server may close early (zero-length message): a failed write is not an error.
    if c.write_all(bytes).is_err() {
        return None;
    }
    let _ = c.shutdown(Shutdown::Write);
    let mut out = Vec::new();
    match c.read_to_end(&mut out) {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => return None,
        Err(e) => panic!("TCP read failed ({e}): the server neither answered nor closed"),
    }
    let mut frames = Vec::new();
    let mut at = 0;
    while at + 2 <= out.len() {
        let len = u16::from_be_bytes([out[at], out[at + 1]]) as usize;
        let frame = out
            .get(at + 2..at + 2 + len)
            .unwrap_or_else(|| panic!("truncated response frame in {:02x?}", out));
        frames.push(frame.to_vec());
        at += 2 + len;
    }
    assert_eq!(at, out.len(), "stray bytes after the last response frame");
    Some(frames)
}

#[test]
fn tcp_barrage_never_crashes_or_stalls_the_server() {
    let demo = Demo::new();
    let mut m = Meshdns::start(&demo.config());
    let (mut rng, seed, scale) = barrage_rng(0x6d65_7368_646e_7302);
    eprintln!("TCP barrage: seed {seed:#x}, scale {scale}");
    let mut messages = 0usize;
    let mut connection = 0usize;
    let mut answered_controls = 0usize;
    let mut answered_frames = 0usize;
    while messages < TCP_MESSAGES * scale {
        connection += 1;
        // Every 8th connection is a control: valid queries only, each must be answered.
        if connection.is_multiple_of(8) {
            let n = rng.usize(1..8);
            let mut bytes = Vec::new();
            for i in 0..n {
                bytes.extend(framed(&query(i as u16, REVIEWS, A, IN)));
            }
            let frames = tcp_session(m.dns, &bytes).unwrap_or_else(|| {
                panic!(
                    "control connection reset; running: {}; log:\n{}",
                    m.is_running(),
                    m.logs()
                )
            });
            assert_eq!(frames.len(), n, "pipelined valid queries not all answered");
            for (i, f) in frames.iter().enumerate() {
                let r = parse_response(f).expect("a DNS response");
                assert_eq!((r.id, r.rcode, r.ancount), (i as u16, NOERROR, 4));
            }
            messages += n;
            answered_controls += 1;
            continue;
        }
        // Every 16th: a connection that opens and closes without sending anything.
        if connection % 16 == 1 {
            let frames = tcp_session(m.dns, &[]);
            assert!(frames.is_none_or(|f| f.is_empty()));
            continue;
        }
        let n = rng.usize(1..10);
        let mut bytes = Vec::new();
        for _ in 0..n {
            let p = barrage_packet(&mut rng);
            let p = &p[..p.len().min(u16::MAX as usize)];
            let mut f = framed(p);
            // A wrong length prefix now and then: the rest of the stream is misframed.
            match rng.u8(..12) {
                0 => {
                    let wrong = (p.len() as u16).wrapping_sub(rng.u16(1..8));
                    f[..2].copy_from_slice(&wrong.to_be_bytes());
                }
                1 => {
                    let wrong = (p.len() as u16).saturating_add(rng.u16(1..40));
                    f[..2].copy_from_slice(&wrong.to_be_bytes());
                }
                _ => {}
            }
            bytes.extend(f);
            messages += 1;
        }
        let ending = pick(
            &mut rng,
            &[
                Ending::Clean,
                Ending::Clean,
                Ending::ShortLast,
                Ending::HalfPrefix,
                Ending::ZeroLength,
            ],
        );
        match ending {
            Ending::Clean => {}
            Ending::ShortLast => {
                let p = valid_query(&mut rng);
                bytes.extend_from_slice(&(p.len() as u16 + rng.u16(1..1000)).to_be_bytes());
                bytes.extend_from_slice(&p);
                messages += 1;
            }
            Ending::HalfPrefix => bytes.push(rng.u8(..)),
            Ending::ZeroLength => {
                bytes.extend([0, 0]);
                bytes.extend(framed(&valid_query(&mut rng)));
                messages += 2;
            }
        }
        if let Some(frames) = tcp_session(m.dns, &bytes) {
            answered_frames += frames.len();
            for f in frames {
                assert!(
                    parse_response(&f).is_some_and(|r| r.qr),
                    "not a DNS response: {f:02x?}"
                );
            }
        }
        if connection.is_multiple_of(50) {
            assert!(m.is_running(), "meshdns exited; log:\n{}", m.logs());
        }
    }
    eprintln!(
        "TCP barrage: {messages} messages on {connection} connections, {answered_frames} responses"
    );
    assert!(messages >= 2_000);
    assert!(answered_controls > 0);

    // Idle and half-sent connections left open must not keep others from being served.
    let mut idle = Vec::new();
    for i in 0..48u8 {
        let mut c = TcpStream::connect_timeout(&m.dns, Duration::from_secs(5)).expect("connect");
        match i % 3 {
            0 => {}
            1 => c.write_all(&[0]).unwrap(),
            _ => c.write_all(&[0x01, 0x00, 0x12, 0x34]).unwrap(),
        }
        idle.push(c);
    }
    assert_healthy(&mut m);
    drop(idle);
}

// ---------------------------------------------------------------------------------------
// Targeted: the rcode for each kind of odd request.

fn start() -> (Demo, Meshdns) {
    let demo = Demo::new();
    let m = Meshdns::start(&demo.config());
    (demo, m)
}

#[test]
fn unimplemented_opcodes_get_notimp() {
    let (_demo, m) = start();
    // STATUS, NOTIFY, UPDATE.
    for opcode in [2u8, 4, 5] {
        let mut q = query(0x4000 | u16::from(opcode), REVIEWS, A, IN);
        set_flags(&mut q, opcode_flags(opcode));
        let r = must_answer(m.dns, &q, &format!("opcode {opcode}"));
        assert_eq!(r.rcode, NOTIMP, "opcode {opcode}: {r:?}");
        assert_eq!(r.opcode, opcode, "the response echoes the opcode: {r:?}");
        assert_eq!(r.ancount, 0, "opcode {opcode}: {r:?}");
    }
    // Every other opcode: no answer, or an error that is never an answer.
    for opcode in [1u8, 3, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15] {
        let mut q = query(0x4000 | u16::from(opcode), REVIEWS, A, IN);
        set_flags(&mut q, opcode_flags(opcode));
        if let Some(r) = exchange(m.dns, &q) {
            assert!(
                r.qr && matches!(r.rcode, NOTIMP | FORMERR | REFUSED) && r.ancount == 0,
                "opcode {opcode}: {r:?}"
            );
        }
    }
    let r = must_answer(m.dns, &query(7, REVIEWS, A, IN), "a valid query");
    assert_eq!((r.rcode, r.ancount), (NOERROR, 4));
}

#[test]
fn question_counts_other_than_one_get_formerr() {
    let (_demo, m) = start();
    let mut two = header(0x0202, 0, 2, 0, 0, 0);
    two.extend(question(&wire_name(REVIEWS), A, IN));
    two.extend(question(
        &wire_name("frontend.web.svc.clusterset.local"),
        A,
        IN,
    ));
    let r = must_answer(m.dns, &two, "QDCOUNT=2");
    assert_eq!(r.rcode, FORMERR, "{r:?}");
    assert_eq!(r.ancount, 0, "{r:?}");

    // Two copies of the same question are still two questions.
    let mut same = header(0x0203, 0, 2, 0, 0, 0);
    same.extend(question(&wire_name(REVIEWS), A, IN));
    same.extend(question(&wire_name(REVIEWS), A, IN));
    assert_eq!(must_answer(m.dns, &same, "QDCOUNT=2, same").rcode, FORMERR);

    let zero = header(0x0200, 0, 0, 0, 0, 0);
    let r = must_answer(m.dns, &zero, "QDCOUNT=0");
    assert_eq!(r.rcode, FORMERR, "{r:?}");
}

#[test]
fn edns_versions_above_zero_get_badvers() {
    let (_demo, m) = start();
    for version in [1u8, 255] {
        let q = with_additional(
            query(0x0e00 | u16::from(version), REVIEWS, A, IN),
            &[opt_rr(1232, 0, version, 0, &[])],
        );
        let r = must_answer(m.dns, &q, &format!("EDNS version {version}"));
        // BADVERS is 16: 0 in the header, 1 in the OPT's extended-rcode byte (RFC 6891 6.1.3).
        assert_eq!(r.rcode, 0, "EDNS version {version}: {r:?}");
        let opt = r
            .opt
            .unwrap_or_else(|| panic!("BADVERS without an OPT record: {r:?}"));
        assert_eq!(opt.ext_rcode, 1, "EDNS version {version}: {r:?}");
        assert_eq!(opt.version, 0, "we implement version 0: {r:?}");
        assert_eq!(r.ancount, 0, "{r:?}");
    }
}

#[test]
fn odd_edns_payloads_and_options() {
    let (_demo, m) = start();
    // Payload sizes below 512 mean 512; the response never exceeds what the client can take.
    for payload in [0u16, 1, 511, 512, 65535] {
        let q = with_additional(
            query(0x5000 | (payload & 0x0fff), REVIEWS, A, IN),
            &[opt_rr(payload, 0, 0, 0, &[])],
        );
        let r = must_answer(m.dns, &q, &format!("payload {payload}"));
        assert_eq!(
            (r.rcode, r.ancount, r.tc),
            (NOERROR, 4, false),
            "payload {payload}: {r:?}"
        );
        let opt = r.opt.unwrap_or_else(|| panic!("no OPT in {r:?}"));
        assert!(opt.payload >= 512, "payload {payload}: {r:?}");
        assert!(
            r.len <= usize::from(payload.max(512)),
            "payload {payload}: {r:?}"
        );
    }
    // Two OPT records: FORMERR (RFC 6891 6.1.1).
    let q = with_additional(
        query(0x5101, REVIEWS, A, IN),
        &[opt_rr(1232, 0, 0, 0, &[]), opt_rr(1232, 0, 0, 0, &[])],
    );
    assert_eq!(must_answer(m.dns, &q, "two OPT records").rcode, FORMERR);
    // An option whose length runs past the OPT's RDATA.
    let mut option = edns_option(3, b"ab");
    option[2..4].copy_from_slice(&16u16.to_be_bytes());
    let q = with_additional(
        query(0x5102, REVIEWS, A, IN),
        &[opt_rr(1232, 0, 0, 0, &option)],
    );
    assert_eq!(must_answer(m.dns, &q, "truncated option").rcode, FORMERR);
    // An option header cut short.
    let q = with_additional(
        query(0x5103, REVIEWS, A, IN),
        &[opt_rr(1232, 0, 0, 0, &[0, 3, 0])],
    );
    assert_eq!(must_answer(m.dns, &q, "cut option header").rcode, FORMERR);
}

#[test]
fn other_classes_get_a_response_not_a_crash() {
    let (_demo, mut m) = start();
    // CHAOS (id.server, version.bind) will come: REFUSED now, NOERROR with TXT then.
    for (i, name) in ["id.server", "version.bind", "hostname.bind"]
        .iter()
        .enumerate()
    {
        let r = must_answer(m.dns, &query(0xc000 | i as u16, name, TXT, CH), name);
        match r.rcode {
            REFUSED => assert_eq!(r.ancount, 0, "{name}: {r:?}"),
            NOERROR => assert!(
                !r.answers.is_empty() && r.answers.iter().all(|a| a.0 == TXT && a.1 == CH),
                "{name}: NOERROR without CH TXT answers: {r:?}"
            ),
            _ => panic!("{name} CH TXT: unexpected rcode {}: {r:?}", r.rcode),
        }
    }
    // Zone names in other classes: a response with the same ID, never IN data.
    for (i, class) in [CH, HS, NONE, ANY_CLASS, 0, 2, 0xfffe].iter().enumerate() {
        let r = must_answer(
            m.dns,
            &query(0xc100 | i as u16, REVIEWS, A, *class),
            &format!("class {class}"),
        );
        assert!(
            r.answers
                .iter()
                .all(|a| a.1 == *class || *class == ANY_CLASS),
            "class {class}: answers of another class: {r:?}"
        );
    }
    assert_healthy(&mut m);
}

#[test]
fn odd_types_get_a_response_with_the_same_id() {
    let (_demo, m) = start();
    for (i, qtype) in [0u16, OPT, 251, 252, 255, 65535, 65280].iter().enumerate() {
        let r = must_answer(
            m.dns,
            &query(0xd000 | i as u16, REVIEWS, *qtype, IN),
            &format!("type {qtype}"),
        );
        assert_eq!(r.qdcount, 1, "type {qtype}: the question is echoed: {r:?}");
        assert!(
            matches!(r.rcode, NOERROR | FORMERR | REFUSED | NOTIMP),
            "type {qtype}: {r:?}"
        );
        if r.rcode == NOERROR {
            assert!(
                r.aa,
                "type {qtype}: an answer from the zone is authoritative: {r:?}"
            );
        }
    }
    // No zone transfers (yet): AXFR and IXFR are refused, not answered with partial data.
    for qtype in [251u16, 252] {
        let r = must_answer(m.dns, &query(0xd100 | qtype, REVIEWS, qtype, IN), "xfr");
        assert_eq!(r.ancount, 0, "type {qtype}: {r:?}");
    }
}

#[test]
fn responses_are_never_answered() {
    let (_demo, m) = start();
    // Answers that look like our own, with answers, errors and odd opcodes (anti-reflection).
    let mut silent = Vec::new();
    for (i, flags) in [
        0x8000u16,
        0x8400,
        0x8403,
        0x8000 | opcode_flags(4),
        0x8000 | opcode_flags(5),
        0xffff,
    ]
    .iter()
    .enumerate()
    {
        let mut q = query(0x7700 | i as u16, REVIEWS, A, IN);
        set_flags(&mut q, *flags);
        silent.push(q);
    }
    let mut with_answer = query(0x7710, REVIEWS, A, IN);
    set_flags(&mut with_answer, 0x8400);
    with_answer[6..8].copy_from_slice(&1u16.to_be_bytes());
    with_answer.extend([0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 10, 8, 1, 5]);
    silent.push(with_answer);
    let seen = responses_to(m.dns, &silent);
    assert!(
        seen.is_empty(),
        "responses (QR=1) were answered: ids {seen:04x?}"
    );
}

#[test]
fn short_and_header_only_packets() {
    let (_demo, mut m) = start();
    // Shorter than a header: nothing to answer to.
    let short: Vec<Vec<u8>> = (0..12).map(|n| vec![0x42; n]).collect();
    let seen = responses_to(m.dns, &short);
    assert!(seen.is_empty(), "packets < 12 bytes answered: {seen:04x?}");

    // A header announcing a question that is not there: FORMERR or silence, then service.
    let header_only = header(0x1212, 0, 1, 0, 0, 0);
    if let Some(r) = exchange(m.dns, &header_only) {
        assert_eq!(r.rcode, FORMERR, "{r:?}");
        assert_eq!(r.ancount, 0, "{r:?}");
    }
    let r = must_answer(m.dns, &query(0x1213, REVIEWS, A, IN), "a valid query");
    assert_eq!((r.rcode, r.ancount, r.aa), (NOERROR, 4, true), "{r:?}");
    assert_healthy(&mut m);
}

#[test]
fn bad_names_get_formerr_or_nothing() {
    let (_demo, mut m) = start();
    let mut rng = Rng::with_seed(7);
    for i in 0..200u16 {
        let mut p = bad_name_query(&mut rng);
        p[..2].copy_from_slice(&(0x3000 | i).to_be_bytes());
        let Some(r) = exchange(m.dns, &p) else {
            continue;
        };
        // The one well-formed case is the 255-byte name under svc: a negative answer.
        assert!(
            matches!(r.rcode, FORMERR | NOERROR | 3 | REFUSED) && r.ancount == 0,
            "{p:02x?}: {r:?}"
        );
    }
    assert_healthy(&mut m);
}

#[test]
fn tcp_odd_framing_is_survived() {
    let (_demo, mut m) = start();
    let valid = framed(&query(0x0101, REVIEWS, A, IN));
    // A zero-length message: the server may close the connection, but not crash.
    let mut zero = vec![0, 0];
    zero.extend(&valid);
    if let Some(frames) = tcp_session(m.dns, &zero) {
        for f in frames {
            assert!(parse_response(&f).is_some_and(|r| r.qr));
        }
    }
    // A prefix announcing more bytes than sent, then close.
    let mut short = valid.clone();
    short.extend([0x02, 0x00, 0xab, 0xcd]);
    let frames = tcp_session(m.dns, &short).expect("connection reset");
    assert_eq!(frames.len(), 1, "the complete message is answered");
    // A message shorter than a header between two valid ones: skipped.
    let mut tiny = valid.clone();
    tiny.extend(framed(&[1, 2, 3]));
    tiny.extend(framed(&query(0x0102, REVIEWS, A, IN)));
    let frames = tcp_session(m.dns, &tiny).expect("connection reset");
    let ids: Vec<u16> = frames
        .iter()
        .filter_map(|f| parse_response(f))
        .map(|r| r.id)
        .collect();
    assert!(
        ids.contains(&0x0101) && ids.contains(&0x0102),
        "valid messages around a tiny one are answered: {ids:04x?}"
    );
    // A response (QR=1) over TCP gets no answer either.
    let mut resp = query(0x0103, REVIEWS, A, IN);
    set_flags(&mut resp, 0x8400);
    let mut qr = framed(&resp);
    qr.extend(framed(&query(0x0104, REVIEWS, A, IN)));
    let frames = tcp_session(m.dns, &qr).expect("connection reset");
    let ids: Vec<u16> = frames
        .iter()
        .filter_map(|f| parse_response(f))
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, [0x0104], "only the query is answered");
    assert_healthy(&mut m);
}

/// A query with many questions is as malformed as one with two: FORMERR (NOTIMP for an
/// unknown opcode), and no ERROR in the log. (Echoing every question once made the response
/// too big for 512 bytes: hickory logged an ERROR per packet, so any client could flood the
/// log, and sent a bare SERVFAIL.)
#[test]
fn many_questions_get_formerr_without_error_logs() {
    let (_demo, m) = start();
    // Up to 60 questions the packet fits hickory's 4096-byte UDP buffer; a larger one is
    // cut by the socket read and answered FORMERR by hickory itself.
    for n in [12u16, 20, 60] {
        let mut p = header(0x0c00 | n, 0, n, 0, 0, 0);
        for _ in 0..n {
            p.extend(question(&wire_name(REVIEWS), A, IN));
        }
        let r = must_answer(m.dns, &p, &format!("QDCOUNT={n}"));
        assert_eq!(r.rcode, FORMERR, "QDCOUNT={n}: {r:?}");
        let mut notimp = p.clone();
        set_flags(&mut notimp, opcode_flags(5));
        let r = must_answer(m.dns, &notimp, &format!("UPDATE with QDCOUNT={n}"));
        assert_eq!(r.rcode, NOTIMP, "UPDATE with QDCOUNT={n}: {r:?}");
    }
    let logs = m.logs();
    assert!(
        !logs.contains("ERROR"),
        "malformed queries must not log errors:\n{logs}"
    );
}

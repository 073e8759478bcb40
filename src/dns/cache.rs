//! The UDP fast path: encoded answers, cached per snapshot, keyed by the question.
//!
//! Most queries are plain: one IN question, no EDNS option but a cookie, from a client whose
//! answer depends only on its locality. For those, the encoded response is kept the first time
//! it is built (by the same handler as every other query) and later served by patching the
//! message ID, the RD/CD flags and the question's letter case — no decoding, no record
//! building, no encoding. Anything else (other opcodes or classes, EDNS options such as NSID
//! or ECS, stale or time-dependent answers) always takes the full path.
//!
//! A generation of the cache lives as long as one snapshot and one set of DNS settings: a new
//! snapshot (any change in any cluster) starts an empty one, so an entry can never outlive the
//! data it was built from.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use arc_swap::ArcSwap;
use prometheus_client::metrics::counter::Counter;

/// Entries per generation; past it, misses are answered but not kept.
const MAX_ENTRIES: usize = 200_000;
const SHARDS: usize = 16;

const TYPE_OPT: u16 = 41;
const TYPE_IXFR: u16 = 251;
const TYPE_AXFR: u16 = 252;
const CLASS_IN: u16 = 1;
/// EDNS COOKIE (RFC 7873): ignored by us (a server without cookie support answers as if it
/// were absent), so it does not make a query unusual.
const OPTION_COOKIE: u16 = 10;

/// A query simple enough for the fast path, read straight from the packet.
#[derive(Debug, PartialEq, Eq)]
pub struct Question<'a> {
    /// The question name in wire form, as asked (letter case kept).
    pub qname: &'a [u8],
    pub qtype: u16,
    /// The client's EDNS UDP payload size; `None` without EDNS.
    pub edns_payload: Option<u16>,
}

impl<'a> Question<'a> {
    /// Reads a plain query: QR=0, opcode QUERY, no TC, one IN question, nothing in the answer
    /// and authority sections, at most an OPT record (version 0, no option but COOKIE) in the
    /// additional section, and nothing after. Anything else is `None`: the full path decides.
    pub fn parse(packet: &'a [u8]) -> Option<Question<'a>> {
        if packet.len() < 17 {
            return None;
        }
        // QR, opcode (4 bits), AA, TC must be 0; RD may be anything.
        if packet[2] & 0xfe != 0 {
            return None;
        }
        let count = |i: usize| u16::from_be_bytes([packet[i], packet[i + 1]]);
        let (qd, an, ns, ar) = (count(4), count(6), count(8), count(10));
        if qd != 1 || an != 0 || ns != 0 || ar > 1 {
            return None;
        }
        let mut i = 12;
        loop {
            let len = usize::from(*packet.get(i)?);
            if len == 0 {
                i += 1;
                break;
            }
            // No compression pointers (or reserved label types) in a plain question.
            if len > 63 {
                return None;
            }
            i += 1 + len;
            if i - 12 > 254 {
                return None;
            }
        }
        let qname = &packet[12..i];
        let qtype = u16::from_be_bytes([*packet.get(i)?, *packet.get(i + 1)?]);
        let qclass = u16::from_be_bytes([*packet.get(i + 2)?, *packet.get(i + 3)?]);
        if qclass != CLASS_IN || matches!(qtype, TYPE_OPT | TYPE_IXFR | TYPE_AXFR) {
            return None;
        }
        i += 4;
        let edns_payload = if ar == 1 {
            let opt = packet.get(i..i + 11)?;
            // Root owner, type OPT, extended rcode 0, version 0, then the options.
            if opt[0] != 0 || u16::from_be_bytes([opt[1], opt[2]]) != TYPE_OPT {
                return None;
            }
            if opt[5] != 0 || opt[6] != 0 {
                return None;
            }
            let payload = u16::from_be_bytes([opt[3], opt[4]]);
            let rdlen = usize::from(u16::from_be_bytes([opt[9], opt[10]]));
            i += 11;
            let options = packet.get(i..i + rdlen)?;
            let mut j = 0;
            while j < options.len() {
                let head = options.get(j..j + 4)?;
                let code = u16::from_be_bytes([head[0], head[1]]);
                let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
                if code != OPTION_COOKIE {
                    return None;
                }
                j += 4 + len;
            }
            if j != options.len() {
                return None;
            }
            i += rdlen;
            Some(payload)
        } else {
            None
        };
        (i == packet.len()).then_some(Question {
            qname,
            qtype,
            edns_payload,
        })
    }

    /// The cache key: the lowercased name, the type, the response's EDNS payload size (the
    /// client's, clamped as the handler clamps it), and the client's locality.
    pub fn key(&self, max_udp_payload: u16, locality: u16, out: &mut Vec<u8>) {
        out.clear();
        out.extend(self.qname.iter().map(u8::to_ascii_lowercase));
        out.extend_from_slice(&self.qtype.to_be_bytes());
        match self.edns_payload {
            None => out.push(0),
            Some(p) => {
                out.push(1);
                out.extend_from_slice(&p.clamp(512, max_udp_payload.max(512)).to_be_bytes());
            }
        }
        out.extend_from_slice(&locality.to_be_bytes());
    }

    /// The name as text, for the (sampled) query log.
    pub fn name(&self) -> String {
        let mut s = String::with_capacity(self.qname.len());
        let mut i = 0;
        while let Some(&len) = self.qname.get(i) {
            if len == 0 {
                break;
            }
            let label = &self.qname[i + 1..i + 1 + usize::from(len)];
            s.push_str(&String::from_utf8_lossy(label));
            s.push('.');
            i += 1 + usize::from(len);
        }
        if s.is_empty() {
            s.push('.');
        }
        s
    }
}

/// One cached response.
#[derive(Debug)]
pub struct Entry {
    /// The whole response; the ID, RD/CD and the question name are patched per query.
    pub bytes: Box<[u8]>,
    pub qname_len: usize,
    /// `meshdns_dns_queries_total{qtype, rcode, transport="udp"}` of this answer.
    pub counter: Counter,
    /// For the query log.
    pub qtype: String,
    pub rcode: String,
    /// TC=1: counted in `meshdns_dns_truncated_total` each time it is served.
    pub truncated: bool,
}

impl Entry {
    /// The response to `packet` (whose question is `q`), into `out`.
    pub fn answer(&self, packet: &[u8], out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&self.bytes);
        out[0] = packet[0];
        out[1] = packet[1];
        // RD and CD are copied from the request (RFC 1035 4.1.1, RFC 4035 3.1.6).
        out[2] = (out[2] & !0x01) | (packet[2] & 0x01);
        out[3] = (out[3] & !0x10) | (packet[3] & 0x10);
        out[12..12 + self.qname_len].copy_from_slice(&packet[12..12 + self.qname_len]);
    }
}

type Shard = RwLock<HashMap<Box<[u8]>, Arc<Entry>, foldhash::fast::RandomState>>;

/// The entries valid for one snapshot serial and one settings version.
pub struct Generation {
    serial: u32,
    settings: usize,
    shards: Vec<Shard>,
    len: AtomicUsize,
    hasher: foldhash::fast::RandomState,
}

impl Generation {
    fn new(serial: u32, settings: usize) -> Generation {
        Generation {
            serial,
            settings,
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            len: AtomicUsize::new(0),
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    fn shard(&self, key: &[u8]) -> &Shard {
        use std::hash::BuildHasher;
        &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }

    pub fn get(&self, key: &[u8]) -> Option<Arc<Entry>> {
        let shard = self.shard(key).read().ok()?;
        shard.get(key).cloned()
    }

    pub fn insert(&self, key: &[u8], entry: Entry) {
        if self.len.load(Ordering::Relaxed) >= MAX_ENTRIES {
            return;
        }
        if let Ok(mut shard) = self.shard(key).write()
            && shard.insert(key.into(), Arc::new(entry)).is_none()
        {
            self.len.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The current generation of cached answers.
pub struct AnswerCache {
    current: ArcSwap<Generation>,
}

impl Default for AnswerCache {
    fn default() -> Self {
        AnswerCache {
            current: ArcSwap::from_pointee(Generation::new(0, 0)),
        }
    }
}

impl AnswerCache {
    /// The generation for this snapshot serial and settings version, starting a new one if
    /// either changed.
    pub fn generation(&self, serial: u32, settings: usize) -> Arc<Generation> {
        let current = self.current.load_full();
        if current.serial == serial && current.settings == settings {
            return current;
        }
        // An older snapshot than the current generation's (a reader or writer that loaded it
        // just before a change): answer from a throwaway generation, never swap back.
        if current.settings == settings
            && hickory_proto::rr::SerialNumber::new(current.serial)
                > hickory_proto::rr::SerialNumber::new(serial)
        {
            return Arc::new(Generation::new(serial, settings));
        }
        let fresh = Arc::new(Generation::new(serial, settings));
        // Another thread may have started it already: use whichever won.
        let previous = self.current.compare_and_swap(&current, fresh.clone());
        if Arc::ptr_eq(&previous, &current) {
            fresh
        } else {
            let won = self.current.load_full();
            if won.serial == serial && won.settings == settings {
                won
            } else {
                fresh
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query for `name` type A, with the given additional section.
    fn query(name: &[u8], flags: [u8; 2], ar: u16, additional: &[u8]) -> Vec<u8> {
        let mut p = vec![0x12, 0x34, flags[0], flags[1], 0, 1, 0, 0, 0, 0];
        p.extend_from_slice(&ar.to_be_bytes());
        p.extend_from_slice(name);
        p.extend_from_slice(&[0, 1, 0, 1]);
        p.extend_from_slice(additional);
        p
    }

    const NAME: &[u8] = b"\x07ReViews\x08bookinfo\x03svc\x00";

    fn opt(payload: u16, options: &[u8]) -> Vec<u8> {
        let mut o = vec![0, 0, 41];
        o.extend_from_slice(&payload.to_be_bytes());
        o.extend_from_slice(&[0, 0, 0x80, 0]); // DO set: allowed
        o.extend_from_slice(&(options.len() as u16).to_be_bytes());
        o.extend_from_slice(options);
        o
    }

    #[test]
    fn plain_questions_parse_and_key_case_insensitively() {
        let p = query(NAME, [0x01, 0x00], 0, &[]);
        let q = Question::parse(&p).unwrap();
        assert_eq!((q.qname, q.qtype, q.edns_payload), (NAME, 1, None));
        assert_eq!(q.name(), "ReViews.bookinfo.svc.");
        let mut k1 = Vec::new();
        q.key(1232, 3, &mut k1);
        let lower = query(b"\x07reviews\x08bookinfo\x03svc\x00", [0x01, 0x00], 0, &[]);
        let mut k2 = Vec::new();
        Question::parse(&lower).unwrap().key(1232, 3, &mut k2);
        assert_eq!(k1, k2);
        // Locality and payload class are part of the key.
        Question::parse(&lower).unwrap().key(1232, 4, &mut k2);
        assert_ne!(k1, k2);

        let cookie = [0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8];
        let p = query(NAME, [0, 0], 1, &opt(4096, &cookie));
        let q = Question::parse(&p).unwrap();
        assert_eq!(q.edns_payload, Some(4096));
        let (mut a, mut b) = (Vec::new(), Vec::new());
        q.key(1232, 0, &mut a);
        let p2 = query(NAME, [0, 0], 1, &opt(1232, &[]));
        Question::parse(&p2).unwrap().key(1232, 0, &mut b);
        assert_eq!(a, b, "both get a 1232-byte OPT in the answer");
    }

    #[test]
    fn anything_unusual_is_not_plain() {
        let nsid = [0, 3, 0, 0];
        let ecs = [0, 8, 0, 4, 0, 1, 0, 0];
        let bad: Vec<Vec<u8>> = vec![
            query(NAME, [0x80, 0], 0, &[]),            // a response
            query(NAME, [0x28, 0], 0, &[]),            // UPDATE
            query(NAME, [0x02, 0], 0, &[]),            // TC
            query(NAME, [0, 0], 1, &opt(1232, &nsid)), // NSID
            query(NAME, [0, 0], 1, &opt(1232, &ecs)),  // ECS
            query(b"\xc0\x0c", [0, 0], 0, &[]),        // compression pointer
            query(NAME, [0, 0], 0, &[0]),              // trailing byte
            query(NAME, [0, 0], 1, &[]),               // missing OPT
            {
                let mut p = query(NAME, [0, 0], 0, &[]);
                p[5] = 2; // two questions
                p
            },
            {
                let mut p = query(NAME, [0, 0], 0, &[]);
                let n = p.len();
                p[n - 1] = 3; // class CH
                p
            },
            {
                let mut o = opt(1232, &[]);
                o[6] = 1; // EDNS version 1
                query(NAME, [0, 0], 1, &o)
            },
        ];
        for (i, p) in bad.iter().enumerate() {
            assert_eq!(Question::parse(p), None, "case {i}");
        }
        for cut in 0..query(NAME, [0, 0], 0, &[]).len() {
            assert_eq!(Question::parse(&query(NAME, [0, 0], 0, &[])[..cut]), None);
        }
    }

    #[test]
    fn entries_patch_id_flags_and_case() {
        let entry = Entry {
            bytes: {
                let mut r = query(b"\x07reviews\x08bookinfo\x03svc\x00", [0x85, 0x10], 0, &[]);
                r[0] = 0xaa;
                r.into()
            },
            qname_len: NAME.len(),
            counter: Counter::default(),
            qtype: "A".into(),
            rcode: "NOERROR".into(),
            truncated: false,
        };
        let p = query(NAME, [0x00, 0x00], 0, &[]);
        let mut out = Vec::new();
        entry.answer(&p, &mut out);
        assert_eq!(&out[0..2], &[0x12, 0x34]);
        assert_eq!(out[2], 0x84, "RD cleared as asked, QR and AA kept");
        assert_eq!(out[3], 0x00, "CD cleared as asked");
        assert_eq!(&out[12..12 + NAME.len()], NAME);
    }

    fn empty_entry() -> Entry {
        Entry {
            bytes: Box::new([]),
            qname_len: 0,
            counter: Counter::default(),
            qtype: String::new(),
            rcode: String::new(),
            truncated: false,
        }
    }

    #[test]
    fn generations_follow_serial_and_settings() {
        let cache = AnswerCache::default();
        let g = cache.generation(7, 1);
        g.insert(b"k", empty_entry());
        assert!(cache.generation(7, 1).get(b"k").is_some());
        assert!(cache.generation(8, 1).get(b"k").is_none());
        assert!(cache.generation(8, 2).get(b"k").is_none());
        // An older serial never replaces the current generation.
        cache.generation(9, 2).insert(b"k", empty_entry());
        assert!(cache.generation(8, 2).get(b"k").is_none());
        assert!(cache.generation(9, 2).get(b"k").is_some());
    }
}

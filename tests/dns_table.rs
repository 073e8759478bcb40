//! End to end through real `dig`: every row of the name table (DESIGN.md), the AA and TC
//! flags, every rcode, the SOA in authority, TCP, and hot reloads of fleet files.

mod support;

use std::time::Duration;

use support::{Demo, Meshdns};

const Z: &str = "clusterset.local.";

/// One dig question and what must come back. Answers are compared as sets of
/// "<name> <type> <data>"; `first` pins the leading answer (local cluster first).
struct Case {
    q: &'static str,
    status: &'static str,
    answers: &'static [&'static str],
    first: Option<&'static str>,
    /// Authority must hold the zone's SOA (negative answers).
    soa: bool,
    additional: &'static [&'static str],
}

const fn case(q: &'static str, status: &'static str, answers: &'static [&'static str]) -> Case {
    Case {
        q,
        status,
        answers,
        first: None,
        soa: false,
        additional: &[],
    }
}

const fn negative(q: &'static str, status: &'static str) -> Case {
    Case {
        q,
        status,
        answers: &[],
        first: None,
        soa: true,
        additional: &[],
    }
}

const CASES: &[Case] = &[
    // <svc>.<ns>.svc.<zone>: ready endpoints of all clusters, the local cluster (alpha) first.
    Case {
        first: Some("reviews.bookinfo.svc.clusterset.local. A 10.8.1.5"),
        ..case(
            "reviews.bookinfo.svc.clusterset.local A",
            "NOERROR",
            &[
                "reviews.bookinfo.svc.clusterset.local. A 10.8.1.5",
                "reviews.bookinfo.svc.clusterset.local. A 10.8.1.6",
                "reviews.bookinfo.svc.clusterset.local. A 10.12.0.5",
                "reviews.bookinfo.svc.clusterset.local. A 10.16.0.5",
            ],
        )
    },
    // Not-ready endpoints are not answered.
    case(
        "ratings.bookinfo.svc.clusterset.local A",
        "NOERROR",
        &["ratings.bookinfo.svc.clusterset.local. A 10.8.2.7"],
    ),
    // Dual stack.
    case(
        "frontend.web.svc.clusterset.local AAAA",
        "NOERROR",
        &["frontend.web.svc.clusterset.local. AAAA fd00:b::9"],
    ),
    case(
        "frontend.web.svc.clusterset.local A",
        "NOERROR",
        &["frontend.web.svc.clusterset.local. A 10.12.4.9"],
    ),
    // A name that exists with no data of that type: NODATA.
    negative("reviews.bookinfo.svc.clusterset.local AAAA", "NOERROR"),
    negative("reviews.bookinfo.svc.clusterset.local TXT", "NOERROR"),
    // <cluster>.<svc>.<ns>.svc.<zone>
    case(
        "beta.reviews.bookinfo.svc.clusterset.local A",
        "NOERROR",
        &["beta.reviews.bookinfo.svc.clusterset.local. A 10.12.0.5"],
    ),
    case(
        "alpha.reviews.bookinfo.svc.clusterset.local A",
        "NOERROR",
        &[
            "alpha.reviews.bookinfo.svc.clusterset.local. A 10.8.1.5",
            "alpha.reviews.bookinfo.svc.clusterset.local. A 10.8.1.6",
        ],
    ),
    // A cluster that does not have the service.
    negative("vms.reviews.bookinfo.svc.clusterset.local A", "NXDOMAIN"),
    // <hostname>.<cluster>.<svc>.<ns>.svc.<zone>, hostname or IP with dashes.
    case(
        "db-0.alpha.db.data.svc.clusterset.local A",
        "NOERROR",
        &["db-0.alpha.db.data.svc.clusterset.local. A 10.8.3.20"],
    ),
    case(
        "10-8-1-6.alpha.reviews.bookinfo.svc.clusterset.local A",
        "NOERROR",
        &["10-8-1-6.alpha.reviews.bookinfo.svc.clusterset.local. A 10.8.1.6"],
    ),
    case(
        "frontend-0.beta.frontend.web.svc.clusterset.local AAAA",
        "NOERROR",
        &["frontend-0.beta.frontend.web.svc.clusterset.local. AAAA fd00:b::9"],
    ),
    negative("db-7.alpha.db.data.svc.clusterset.local A", "NXDOMAIN"),
    // The not-ready endpoint has no name either.
    negative(
        "10-8-2-8.alpha.ratings.bookinfo.svc.clusterset.local A",
        "NXDOMAIN",
    ),
    // Headless: answers exactly as a normal service.
    case(
        "db.data.svc.clusterset.local A",
        "NOERROR",
        &[
            "db.data.svc.clusterset.local. A 10.8.3.20",
            "db.data.svc.clusterset.local. A 10.8.3.21",
        ],
    ),
    // A VM endpoint from a file cluster.
    case(
        "postgres.data.svc.clusterset.local A",
        "NOERROR",
        &["postgres.data.svc.clusterset.local. A 10.200.0.10"],
    ),
    // SRV per named port, targets resolvable, their addresses in additional.
    Case {
        additional: &[
            "istiod-5d8f7-abcde.alpha.istiod.istio-system.svc.clusterset.local. A 10.8.0.10",
            "istiod-5d8f7-fghij.alpha.istiod.istio-system.svc.clusterset.local. A 10.8.1.11",
        ],
        ..case(
            "_grpc-xds._tcp.istiod.istio-system.svc.clusterset.local SRV",
            "NOERROR",
            &[
                "_grpc-xds._tcp.istiod.istio-system.svc.clusterset.local. SRV 0 1 15010 istiod-5d8f7-abcde.alpha.istiod.istio-system.svc.clusterset.local.",
                "_grpc-xds._tcp.istiod.istio-system.svc.clusterset.local. SRV 0 1 15010 istiod-5d8f7-fghij.alpha.istiod.istio-system.svc.clusterset.local.",
            ],
        )
    },
    case(
        "_https-webhook._tcp.istiod.istio-system.svc.clusterset.local SRV",
        "NOERROR",
        &[
            "_https-webhook._tcp.istiod.istio-system.svc.clusterset.local. SRV 0 1 443 istiod-5d8f7-abcde.alpha.istiod.istio-system.svc.clusterset.local.",
            "_https-webhook._tcp.istiod.istio-system.svc.clusterset.local. SRV 0 1 443 istiod-5d8f7-fghij.alpha.istiod.istio-system.svc.clusterset.local.",
        ],
    ),
    negative(
        "_grpc-xds._udp.istiod.istio-system.svc.clusterset.local SRV",
        "NXDOMAIN",
    ),
    negative(
        "_tcp.istiod.istio-system.svc.clusterset.local SRV",
        "NOERROR",
    ),
    // ExternalName → CNAME, whatever the type asked.
    case(
        "legacy-api.default.svc.clusterset.local A",
        "NOERROR",
        &["legacy-api.default.svc.clusterset.local. CNAME api.example.com."],
    ),
    // Apex SOA and NS (glue in additional).
    case(
        "clusterset.local NS",
        "NOERROR",
        &["clusterset.local. NS ns.clusterset.local."],
    ),
    case(
        "ns.clusterset.local A",
        "NOERROR",
        &["ns.clusterset.local. A 127.0.0.1"],
    ),
    // Empty non-terminals: NODATA, never NXDOMAIN.
    negative("svc.clusterset.local A", "NOERROR"),
    negative("bookinfo.svc.clusterset.local A", "NOERROR"),
    // Anything else in the zone: NXDOMAIN with the SOA.
    negative("nope.bookinfo.svc.clusterset.local A", "NXDOMAIN"),
    negative("nothere.svc.clusterset.local A", "NXDOMAIN"),
    negative("www.clusterset.local A", "NXDOMAIN"),
    // Reverse zones of the configured networks.
    case(
        "5.1.8.10.in-addr.arpa PTR",
        "NOERROR",
        &["5.1.8.10.in-addr.arpa. PTR reviews-v1-abc.alpha.reviews.bookinfo.svc.clusterset.local."],
    ),
    case(
        "9.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.b.0.0.0.0.0.d.f.ip6.arpa PTR",
        "NOERROR",
        &[
            "9.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.b.0.0.0.0.0.d.f.ip6.arpa. PTR frontend-0.beta.frontend.web.svc.clusterset.local.",
        ],
    ),
    negative("99.1.8.10.in-addr.arpa PTR", "NXDOMAIN"),
];

fn rr_line(r: &support::Rr) -> String {
    format!("{} {} {}", r.name, r.rtype, r.data)
}

#[test]
fn every_row_of_the_name_table() {
    let demo = Demo::new();
    let m = Meshdns::start(&demo.config());
    let mut failures = Vec::new();
    for c in CASES {
        let d = m.dig(c.q);
        let mut got: Vec<String> = d.answer.iter().map(rr_line).collect();
        let first = got.first().cloned();
        got.sort();
        let mut want: Vec<String> = c.answers.iter().map(|s| s.to_string()).collect();
        want.sort();
        let mut problems = Vec::new();
        if d.status != c.status {
            problems.push(format!("status {} != {}", d.status, c.status));
        }
        if !d.has_flag("aa") {
            problems.push("no AA flag".into());
        }
        if got != want {
            problems.push(format!("answers {got:?} != {want:?}"));
        }
        if let Some(f) = c.first
            && first.as_deref() != Some(f)
        {
            problems.push(format!("first answer {first:?} != {f:?}"));
        }
        let has_soa = d
            .authority
            .iter()
            .any(|r| r.rtype == "SOA" && (r.name == Z || r.name.ends_with(".arpa.")));
        if c.soa && !has_soa {
            problems.push("no SOA in authority".into());
        }
        if c.soa && d.authority.iter().any(|r| r.rtype == "SOA" && r.ttl != 5) {
            problems.push("negative TTL is not the SOA minimum (5)".into());
        }
        for extra in c.additional {
            if !d.additional.iter().any(|r| rr_line(r) == *extra) {
                problems.push(format!("additional lacks {extra}"));
            }
        }
        if !problems.is_empty() {
            failures.push(format!("{}: {}\n{}", c.q, problems.join("; "), d.raw));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn rcodes_flags_and_transports() {
    let demo = Demo::new();
    let m = Meshdns::start(&demo.config());

    // Outside every zone: REFUSED, not authoritative, no recursion offered.
    let d = m.dig("example.com A");
    assert_eq!(d.status, "REFUSED", "{}", d.raw);
    assert!(!d.has_flag("aa") && !d.has_flag("ra"), "{}", d.raw);
    let d = m.dig("local SOA");
    assert_eq!(d.status, "REFUSED", "{}", d.raw);

    // SOA at the apex; the serial moves with snapshots.
    let d = m.dig("clusterset.local SOA");
    assert_eq!(d.status, "NOERROR");
    assert_eq!(d.answer.len(), 1);
    assert!(
        d.answer[0]
            .data
            .starts_with("ns.clusterset.local. hostmaster.clusterset.local. ")
    );

    // The question is echoed as asked; names match case-insensitively.
    let d = m.dig("ReViEwS.BookInfo.svc.ClusterSet.Local A");
    assert_eq!(d.status, "NOERROR");
    assert_eq!(d.answer.len(), 4);
    assert!(
        d.question
            .starts_with("ReViEwS.BookInfo.svc.ClusterSet.Local."),
        "{}",
        d.question
    );

    // ANY is answered minimally (RFC 8482): one RRset.
    let d = m.dig("reviews.bookinfo.svc.clusterset.local ANY");
    assert_eq!(d.status, "NOERROR");
    assert!(d.answer.iter().all(|r| r.rtype == "A"), "{}", d.raw);

    // EDNS: the response carries OPT with our payload size, capped at 1232.
    let d = m.dig("reviews.bookinfo.svc.clusterset.local A +bufsize=4096");
    assert_eq!(d.edns_udp, Some(1232), "{}", d.raw);
    let d = m.dig("reviews.bookinfo.svc.clusterset.local A +bufsize=800");
    assert_eq!(d.edns_udp, Some(800), "{}", d.raw);
    // Without EDNS, no OPT in the answer.
    let d = m.dig("reviews.bookinfo.svc.clusterset.local A +noedns");
    assert_eq!(d.edns_udp, None, "{}", d.raw);

    // TCP answers the same.
    let d = m.dig("reviews.bookinfo.svc.clusterset.local A +tcp");
    assert_eq!(d.status, "NOERROR");
    assert_eq!(d.answer.len(), 4);
    assert!(d.has_flag("aa"));
}

#[test]
fn truncation_over_udp_full_answer_over_tcp() {
    let demo = Demo::new();
    let endpoints: String = (0..200)
        .map(|i| format!("      - {{ ip: 10.9.{}.{} }}\n", i / 250, i % 250 + 1))
        .collect();
    demo.write(
        "gamma.yaml",
        &format!(
            "services:\n  - name: big\n    namespace: bulk\n    ports: [{{ name: http, port: 80 }}]\n    endpoints:\n{endpoints}"
        ),
    );
    let m = Meshdns::start(&demo.config());
    let name = "big.bulk.svc.clusterset.local A";

    // No EDNS: 512 bytes at most.
    let d = m.dig(&format!("{name} +noedns +ignore"));
    assert!(d.has_flag("tc"), "{}", d.raw);
    assert!(d.answer.len() < 200);
    // EDNS 4096 is capped at our 1232.
    let d = m.dig(&format!("{name} +bufsize=4096 +ignore"));
    assert!(d.has_flag("tc"), "{}", d.raw);
    // TCP: everything.
    let d = m.dig(&format!("{name} +tcp"));
    assert!(!d.has_flag("tc"), "{}", d.raw);
    assert_eq!(d.answer.len(), 200);
    // dig retries over TCP itself when it sees TC.
    let d = m.dig(name);
    assert_eq!(d.answer.len(), 200);
}

#[test]
fn clients_outside_allow_are_refused() {
    let demo = Demo::new();
    let cfg = std::fs::read_to_string(demo.config()).unwrap();
    demo.write(
        "meshdns.yaml",
        &cfg.replace(
            "allow: [127.0.0.0/8, \"::1/128\", 10.0.0.0/8]",
            "allow: [127.0.0.2/32]",
        ),
    );
    let m = Meshdns::start(&demo.config());
    let d = m.dig("reviews.bookinfo.svc.clusterset.local A");
    assert_eq!(d.status, "REFUSED", "{}", d.raw);
    assert!(d.answer.is_empty());
    // From an allowed source address it answers.
    let d = m.dig("reviews.bookinfo.svc.clusterset.local A -b 127.0.0.2");
    assert_eq!(d.status, "NOERROR", "{}", d.raw);
    let (_, metrics) = support::http_get(m.ops, "/metrics").unwrap();
    assert!(
        metrics.contains("meshdns_dns_refused_clients_total 1"),
        "{metrics}"
    );
}

#[test]
fn reloads_change_answers_and_broken_files_keep_the_last_good() {
    let demo = Demo::new();
    let m = Meshdns::start(&demo.config());
    let name = "beta.reviews.bookinfo.svc.clusterset.local A";
    assert_eq!(m.dig(name).answer_data(), ["10.12.0.5"]);

    // A pod restarted with a new IP: the answer follows within a second.
    let beta = std::fs::read_to_string(demo.path("beta.yaml")).unwrap();
    demo.write("beta.yaml", &beta.replace("10.12.0.5", "10.12.0.99"));
    m.dig_until(name, Duration::from_secs(5), |d| {
        d.answer_data() == ["10.12.0.99"]
    });

    // A broken file is rejected as a whole: the last good answer stays.
    demo.write("beta.yaml", "services:\n  - name: reviews\n    namespace: bookinfo\n    endpoints: [{ ip: 10.12.0.300 }]\n");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_, body) = support::http_get(m.ops, "/metrics").unwrap();
        if body.contains("meshdns_cluster_rejected_total{cluster=\"beta\"} 1") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rejection not counted:\n{body}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(m.dig(name).answer_data(), ["10.12.0.99"]);
    assert!(
        m.logs().contains("line 4"),
        "the error names its line:\n{}",
        m.logs()
    );

    // Other clusters never noticed.
    assert_eq!(
        m.dig("reviews.bookinfo.svc.clusterset.local A")
            .answer
            .len(),
        4
    );

    // A deleted file empties its cluster, but only once it is really gone.
    std::fs::remove_file(demo.path("gamma.yaml")).unwrap();
    m.dig_until(
        "gamma.reviews.bookinfo.svc.clusterset.local A",
        Duration::from_secs(10),
        |d| d.status == "NXDOMAIN",
    );
    assert_eq!(
        m.dig("reviews.bookinfo.svc.clusterset.local A")
            .answer
            .len(),
        3
    );
}

#[test]
fn an_editor_rename_does_not_empty_the_cluster() {
    let demo = Demo::new();
    let m = Meshdns::start(&demo.config());
    let name = "gamma.reviews.bookinfo.svc.clusterset.local A";
    let text = std::fs::read_to_string(demo.path("gamma.yaml")).unwrap();
    // Move the file away and back quickly, as some editors do on save.
    std::fs::rename(demo.path("gamma.yaml"), demo.path("gamma.yaml~")).unwrap();
    std::thread::sleep(Duration::from_millis(600));
    std::fs::write(demo.path("gamma.yaml"), text).unwrap();
    for _ in 0..20 {
        assert_eq!(m.dig(name).answer_data(), ["10.16.0.5"]);
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Flips the letter case of every other letter: a different spelling of the same name.
fn flip_case(q: &str) -> String {
    let (name, rest) = q.split_once(' ').unwrap_or((q, ""));
    let flipped: String = name
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if i % 2 == 0 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect();
    format!("{flipped} {rest}")
}

/// Everything of an answer but the ID, with names compared case-insensitively.
fn content(d: &support::Dig) -> (String, Vec<String>, Vec<String>, Vec<String>, Vec<String>) {
    let norm = |rrs: &[support::Rr]| -> Vec<String> {
        let mut v: Vec<String> = rrs
            .iter()
            .map(|r| format!("{} {} {} {}", r.name, r.ttl, r.rtype, r.data).to_lowercase())
            .collect();
        v.sort();
        v
    };
    let mut flags: Vec<String> = d.flags.iter().filter(|f| *f != "tc").cloned().collect();
    flags.sort();
    (
        d.status.clone(),
        flags,
        norm(&d.answer),
        norm(&d.authority),
        norm(&d.additional),
    )
}

/// The UDP fast path (cached, patched answers) answers every row of the name table exactly as
/// the full path does: the first UDP query builds the answer, a differently spelled second one
/// is served from the cache, and TCP (never cached) is the reference.
#[test]
fn the_fast_path_answers_every_row_as_the_full_path() {
    let demo = Demo::new();
    let m = Meshdns::start(&demo.config());
    let cached_before = cached_answers(&m);
    let mut failures = Vec::new();
    for c in CASES {
        let full = m.dig(&format!("{} +tcp", c.q));
        let first = m.dig(c.q);
        let again = m.dig(&flip_case(c.q));
        for (what, d) in [("first UDP", &first), ("cached UDP", &again)] {
            if content(d) != content(&full) {
                failures.push(format!(
                    "{}: {what} differs from TCP:\n{}\n---\n{}",
                    c.q, d.raw, full.raw
                ));
            }
        }
        // The question is echoed as asked, also from the cache.
        let asked = flip_case(c.q);
        let asked_name = asked.split_whitespace().next().unwrap();
        if !again.question.starts_with(&format!("{asked_name}."))
            && !again.question.starts_with(asked_name)
        {
            failures.push(format!(
                "{}: question {:?} not echoed as asked ({asked_name})",
                c.q, again.question
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    // The second spellings were served from the cache.
    let cached = cached_answers(&m) - cached_before;
    assert!(
        cached >= CASES.len() as u64,
        "only {cached} cached answers for {} rows",
        CASES.len()
    );
}

fn cached_answers(m: &Meshdns) -> u64 {
    let (_, body) = support::http_get(m.ops, "/metrics").unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix("meshdns_dns_cached_answers_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// `dump --zone <reverse zone>` prints the PTR records that serve answers.
#[test]
fn dump_prints_reverse_zones_too() {
    let demo = Demo::new();
    let m = Meshdns::start(&demo.config());
    let out = std::process::Command::new(support::bin())
        .args(["dump", "--zone", "8.10.in-addr.arpa", "--config"])
        .arg(demo.config())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("8.10.in-addr.arpa. 5 IN SOA "), "{text}");
    for ip in ["10.8.1.5", "10.8.3.20", "10.8.0.10"] {
        let d = m.dig(&format!("-x {ip}"));
        assert_eq!(d.answer.len(), 1, "{}", d.raw);
        let line = format!("{} 5 IN PTR {}", d.answer[0].name, d.answer[0].data);
        assert!(text.contains(&line), "{line} not in\n{text}");
    }
    let bad = std::process::Command::new(support::bin())
        .args(["dump", "--zone", "example.com", "--config"])
        .arg(demo.config())
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}

/// When the answer fits but its additional records do not, they are left out and TC stays
/// clear (RFC 2181 section 9): no needless retry over TCP.
#[test]
fn additional_records_are_dropped_before_truncating() {
    let demo = Demo::new();
    let endpoints: String = (0..6)
        .map(|i| {
            format!(
                "      - {{ ip: 10.9.0.{}, hostname: a-rather-long-pod-name-{i} }}\n",
                i + 1
            )
        })
        .collect();
    demo.write(
        "gamma.yaml",
        &format!("services:\n  - name: big\n    namespace: bulk\n    ports: [{{ name: http, port: 80 }}]\n    endpoints:\n{endpoints}"),
    );
    let m = Meshdns::start(&demo.config());
    let q = "_http._tcp.big.bulk.svc.clusterset.local SRV +ignore";
    // Over TCP: all 6 targets and their 6 addresses.
    let full = m.dig(&format!("{q} +tcp"));
    assert_eq!(
        (full.answer.len(), full.additional.len()),
        (6, 6),
        "{}",
        full.raw
    );
    // In 600 bytes the 6 SRV records fit (SRV targets are never compressed, RFC 2782), not
    // all their addresses: those that fit are sent, the rest left out, without TC.
    let d = m.dig(&format!("{q} +bufsize=600"));
    assert_eq!(d.answer.len(), 6, "{}", d.raw);
    assert!(!d.has_flag("tc"), "{}", d.raw);
    assert!((1..6).contains(&d.additional.len()), "{}", d.raw);
    // The complete answer (with its additional records) still comes when it fits.
    let d = m.dig(&format!("{q} +bufsize=1232"));
    assert_eq!(
        (d.answer.len(), d.additional.len(), d.has_flag("tc")),
        (6, 6, false),
        "{}",
        d.raw
    );
}

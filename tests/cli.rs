//! The command-line contract (DESIGN.md, "Contract"): help, `check`, `dump`, config errors
//! (exit 2 naming file, line and key, before anything binds), log format, shutdown.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::{Demo, Meshdns, bin, dig};

/// What a finished run printed.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// `meshdns <args>` with a clean environment: no config or log format from the caller.
fn meshdns(args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.args(args)
        .env_remove("MESHDNS_CONFIG")
        .env_remove("MESHDNS_LOG_FORMAT")
        .env("RUST_LOG", "info,hickory_server=warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn read_in_thread(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Runs `cmd` to completion; kills it and fails the test if it outlives `timeout`.
fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Run {
    let mut child = cmd.spawn().expect("start meshdns");
    let out = read_in_thread(child.stdout.take().expect("stdout"));
    let err = read_in_thread(child.stderr.take().expect("stderr"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} still running after {timeout:?}; stderr:\n{}",
                err.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        code: status.code(),
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}

fn run(args: &[&str]) -> Run {
    run_with_timeout(meshdns(args), Duration::from_secs(30))
}

fn demo_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/demo/meshdns.yaml")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

// ---------------------------------------------------------------------------------------
// Help and usage.

#[test]
fn help_mentions_every_command_and_flag() {
    let top = run(&["--help"]);
    assert_eq!(top.code, Some(0), "{top:?}");
    let serve = run(&["serve", "--help"]);
    assert_eq!(serve.code, Some(0), "{serve:?}");
    for word in ["serve", "check", "dump", "--log-format"] {
        assert!(
            top.stdout.contains(word),
            "meshdns --help lacks {word}:\n{}",
            top.stdout
        );
    }
    for word in ["--config", "--dns-addr", "--ops-addr", "--log-format"] {
        assert!(
            serve.stdout.contains(word),
            "meshdns serve --help lacks {word}:\n{}",
            serve.stdout
        );
    }
    for sub in ["check", "dump"] {
        let h = run(&[sub, "--help"]);
        assert_eq!(h.code, Some(0), "{h:?}");
        assert!(h.stdout.contains("--config"), "{sub} --help:\n{}", h.stdout);
    }
    let v = run(&["--version"]);
    assert_eq!(v.code, Some(0), "{v:?}");
    assert!(v.stdout.contains(env!("CARGO_PKG_VERSION")), "{v:?}");
}

#[test]
fn usage_errors_exit_2() {
    let cases: &[&[&str]] = &[
        &[],
        &["serve"],
        &["frobnicate"],
        &["check", "--config"],
        &["check", "--config", "x.yaml", "--bogus"],
        &["--log-format", "xml", "check", "--config", "x.yaml"],
        &["serve", "--config", "x.yaml", "--dns-addr", "localhost"],
        &["dump", "--config", "x.yaml", "--timeout", "soon"],
    ];
    for args in cases {
        let r = run(args);
        assert_eq!(r.code, Some(2), "meshdns {args:?}: {r:?}");
        assert!(!r.stderr.is_empty(), "meshdns {args:?} says nothing: {r:?}");
    }
}

// ---------------------------------------------------------------------------------------
// check, and config errors in check and serve.

#[test]
fn check_accepts_the_demo() {
    let config = demo_config();
    let r = run(&["check", "--config", s(&config)]);
    assert_eq!(r.code, Some(0), "{r:?}");
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one summary line: {r:?}");
    assert!(lines[0].contains("valid"), "{r:?}");
    assert!(lines[0].contains("meshdns.yaml"), "names the file: {r:?}");
    assert!(lines[0].contains("4 clusters"), "{r:?}");
}

/// A bad config: its files, the file the error is in, the line and the key it must name.
struct BadConfig {
    what: &'static str,
    config: &'static str,
    /// Other files next to the config: (name, content).
    files: &'static [(&'static str, &'static str)],
    /// The file the error is in.
    at_file: &'static str,
    /// The line the error is at.
    line: u32,
    /// The key, as the message spells it.
    key: &'static str,
}

const BAD_CONFIGS: &[BadConfig] = &[
    BadConfig {
        what: "unknown key",
        config: "zone: clusterset.local.\ntll: 5s\n",
        files: &[],
        at_file: "meshdns.yaml",
        line: 2,
        key: "tll",
    },
    BadConfig {
        what: "bad duration",
        config: "ttl: 5 parsecs\n",
        files: &[],
        at_file: "meshdns.yaml",
        line: 1,
        key: "ttl",
    },
    BadConfig {
        what: "bad CIDR",
        config: "zone: clusterset.local.\nttl: 5s\nallow: [10.0.0.0/8, 10.0.0.0/33]\n",
        files: &[],
        at_file: "meshdns.yaml",
        line: 3,
        key: "allow",
    },
    BadConfig {
        what: "duplicate cluster",
        config: "clusters:\n  - name: a\n    source: { kube: {} }\n  - name: a\n    source: { kube: {} }\n",
        files: &[],
        at_file: "meshdns.yaml",
        line: 4,
        key: "clusters[1].name",
    },
    BadConfig {
        what: "cluster name not a DNS label",
        config: "clusters:\n  - name: Alpha\n    source: { kube: {} }\n",
        files: &[],
        at_file: "meshdns.yaml",
        line: 2,
        key: "clusters[0].name",
    },
    BadConfig {
        what: "bad zone",
        config: "ttl: 5s\nzone: a..b\n",
        files: &[],
        at_file: "meshdns.yaml",
        line: 2,
        key: "zone",
    },
    BadConfig {
        what: "fleet file with a bad IP",
        config: "clusters:\n  - name: vms\n    source: { file: fleet.yaml }\n",
        files: &[(
            "fleet.yaml",
            "services:\n  - name: a\n    namespace: b\n    endpoints: [{ ip: 10.0.0.300 }]\n",
        )],
        at_file: "fleet.yaml",
        line: 4,
        key: "ip",
    },
    BadConfig {
        what: "missing fleet file",
        config: "clusters:\n  - name: vms\n    source: { file: missing.yaml }\n",
        files: &[],
        at_file: "meshdns.yaml",
        line: 3,
        key: "clusters[0].source.file",
    },
];

/// Writes the case into a fresh directory; returns (dir, config path, path of the bad file).
fn write_case(case: &BadConfig) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("meshdns.yaml");
    std::fs::write(&config, case.config).expect("write config");
    for (name, text) in case.files {
        std::fs::write(dir.path().join(name), text).expect("write file");
    }
    let at = dir.path().join(case.at_file);
    (dir, config, at)
}

/// The message names the file, the line (`file:LINE:COL:` for our checks, `line LINE` in
/// serde-saphyr's messages) and the key.
fn assert_names_file_line_key(case: &BadConfig, at: &Path, stderr: &str) {
    let path = at.display().to_string();
    assert!(
        stderr.contains(&path),
        "{}: the message does not name {path}:\n{stderr}",
        case.what
    );
    let line = case.line;
    let ours = format!("{path}:{line}:");
    let yaml = format!("line {line} ");
    assert!(
        stderr.contains(&ours) || stderr.contains(&yaml),
        "{}: the message does not name line {line}:\n{stderr}",
        case.what
    );
    assert!(
        stderr.contains(case.key),
        "{}: the message does not name the key {:?}:\n{stderr}",
        case.what,
        case.key
    );
}

#[test]
fn check_rejects_bad_configs_naming_file_line_and_key() {
    for case in BAD_CONFIGS {
        let (_dir, config, at) = write_case(case);
        let r = run(&["check", "--config", s(&config)]);
        assert_eq!(r.code, Some(2), "{}: {r:?}", case.what);
        assert!(
            r.stderr.starts_with("Invalid configuration: "),
            "{}: {r:?}",
            case.what
        );
        assert!(!r.stdout.contains("valid"), "{}: {r:?}", case.what);
        assert_names_file_line_key(case, &at, &r.stderr);
    }
}

/// `serve` fails the same way, before binding anything: with the DNS port held by the test, a
/// serve that bound first would fail with "cannot bind" (exit 1) instead of the config error.
#[test]
fn serve_rejects_bad_configs_before_binding() {
    for case in BAD_CONFIGS {
        let (_dir, config, at) = write_case(case);
        let held_udp = UdpSocket::bind("127.0.0.1:0").expect("bind UDP");
        let port = held_udp.local_addr().unwrap().port();
        let held_tcp = TcpListener::bind(("127.0.0.1", port)).ok();
        let held_ops = TcpListener::bind("127.0.0.1:0").expect("bind ops");
        let dns = format!("127.0.0.1:{port}");
        let ops = held_ops.local_addr().unwrap().to_string();
        let check = run(&["check", "--config", s(&config)]);
        let r = run_with_timeout(
            meshdns(&[
                "serve",
                "--config",
                s(&config),
                "--dns-addr",
                &dns,
                "--ops-addr",
                &ops,
            ]),
            Duration::from_secs(10),
        );
        assert_eq!(r.code, Some(2), "{}: {r:?}", case.what);
        assert_eq!(
            r.stderr, check.stderr,
            "{}: serve and check say the same",
            case.what
        );
        assert!(
            !r.stderr.contains("cannot bind") && !r.stderr.contains("listening"),
            "{}: {r:?}",
            case.what
        );
        assert_names_file_line_key(case, &at, &r.stderr);
        drop((held_udp, held_tcp, held_ops));
    }
}

/// A missing fleet file: the error names the config line and key that point to it (checked in
/// the table above) and the path that could not be read.
#[test]
fn missing_fleet_file_error_names_the_missing_path() {
    let case = BAD_CONFIGS
        .iter()
        .find(|c| c.what == "missing fleet file")
        .unwrap();
    let (dir, config, _) = write_case(case);
    let r = run(&["check", "--config", s(&config)]);
    assert_eq!(r.code, Some(2), "{r:?}");
    let missing = dir.path().join("missing.yaml").display().to_string();
    assert!(r.stderr.contains(&missing), "{r:?}");
}

#[test]
fn serve_exits_1_when_an_address_is_taken() {
    let demo = Demo::new();
    let config = demo.config();
    let free_ops = || {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    // DNS: TCP side taken (UDP is free, so only the TCP bind fails).
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let dns = taken.local_addr().unwrap().to_string();
    let ops = free_ops();
    let r = run_with_timeout(
        meshdns(&[
            "serve",
            "--config",
            s(&config),
            "--dns-addr",
            &dns,
            "--ops-addr",
            &ops,
        ]),
        Duration::from_secs(10),
    );
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("cannot bind"), "{r:?}");
    // Ops address taken.
    let taken_ops = TcpListener::bind("127.0.0.1:0").expect("bind");
    let ops = taken_ops.local_addr().unwrap().to_string();
    let r = run_with_timeout(
        meshdns(&[
            "serve",
            "--config",
            s(&config),
            "--dns-addr",
            "127.0.0.1:0",
            "--ops-addr",
            &ops,
        ]),
        Duration::from_secs(10),
    );
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("cannot bind"), "{r:?}");
}

// ---------------------------------------------------------------------------------------
// dump.

/// One record line of a master file: (owner, ttl, type, data), lowercased owner.
type Rec = (String, u32, String, String);

fn parse_master(text: &str) -> Vec<Rec> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with(';') && !l.starts_with('$'))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert!(f.len() >= 5, "not a record line: {l:?}");
            assert_eq!(f[2], "IN", "{l:?}");
            (
                f[0].to_ascii_lowercase(),
                f[1].parse().unwrap_or_else(|_| panic!("TTL in {l:?}")),
                f[3].to_string(),
                f[4..].join(" "),
            )
        })
        .collect()
}

/// The data as compared: a SOA's serial moves with every snapshot, so it is left out.
fn comparable(rtype: &str, data: &str) -> String {
    if rtype == "SOA" {
        let mut f: Vec<&str> = data.split_whitespace().collect();
        if f.len() == 7 {
            f[2] = "<serial>";
        }
        f.join(" ")
    } else {
        data.split_whitespace().collect::<Vec<_>>().join(" ")
    }
}

#[test]
fn dump_prints_the_records_that_serve_answers() {
    let demo = Demo::new();
    let config = demo.config();
    let r = run(&["dump", "--config", s(&config)]);
    assert_eq!(r.code, Some(0), "{r:?}");
    let records = parse_master(&r.stdout);
    let first = records.first().expect("an empty dump");
    assert_eq!(
        (first.0.as_str(), first.2.as_str()),
        ("clusterset.local.", "SOA"),
        "the first record is the zone's SOA:\n{}",
        r.stdout
    );

    // The dump as RRsets: (owner, type) → {(ttl, data)}.
    let mut rrsets: BTreeMap<(String, String), BTreeSet<(u32, String)>> = BTreeMap::new();
    for (name, ttl, rtype, data) in &records {
        rrsets
            .entry((name.clone(), rtype.clone()))
            .or_default()
            .insert((*ttl, comparable(rtype, data)));
    }

    let m = Meshdns::start(&config);
    let served = |name: &str, rtype: &str| -> BTreeSet<(u32, String)> {
        let d = dig(m.dns, &format!("{name} {rtype}"));
        assert_eq!(d.status, "NOERROR", "dig {name} {rtype}:\n{}", d.raw);
        assert!(d.has_flag("aa"), "dig {name} {rtype}:\n{}", d.raw);
        assert!(!d.has_flag("tc"), "dig {name} {rtype}:\n{}", d.raw);
        d.answer
            .iter()
            .map(|rr| {
                assert_eq!(rr.name.to_ascii_lowercase(), name, "{}", d.raw);
                assert_eq!(rr.rtype, rtype, "{}", d.raw);
                (rr.ttl, comparable(&rr.rtype, &rr.data))
            })
            .collect()
    };

    // The names the contract calls out, spelled out so an empty dump cannot pass.
    let reviews = served("reviews.bookinfo.svc.clusterset.local.", "A");
    let ips: BTreeSet<&str> = reviews.iter().map(|(_, d)| d.as_str()).collect();
    assert_eq!(
        ips,
        BTreeSet::from(["10.8.1.5", "10.8.1.6", "10.12.0.5", "10.16.0.5"])
    );
    let xds = served(
        "_grpc-xds._tcp.istiod.istio-system.svc.clusterset.local.",
        "SRV",
    );
    assert_eq!(xds.len(), 2, "{xds:?}");
    for (name, rtype, set) in [
        ("reviews.bookinfo.svc.clusterset.local.", "A", &reviews),
        (
            "_grpc-xds._tcp.istiod.istio-system.svc.clusterset.local.",
            "SRV",
            &xds,
        ),
    ] {
        let key = (name.to_string(), rtype.to_string());
        assert_eq!(rrsets.get(&key), Some(set), "{name} {rtype} in the dump");
    }

    // And every RRset of the dump is exactly what serve answers for its name and type.
    for ((name, rtype), set) in &rrsets {
        assert_eq!(
            &served(name, rtype),
            set,
            "dig {name} {rtype} differs from the dump"
        );
    }
    assert!(
        rrsets.len() >= 30,
        "a suspiciously small dump:\n{}",
        r.stdout
    );
}

#[test]
fn dump_gives_up_when_a_source_never_syncs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("meshdns.yaml");
    std::fs::write(&config, "clusters:\n  - name: remote\n    source: { kube: { kubeconfig: nowhere.yaml } }\n  - name: vms\n    source: { file: vms.yaml }\n").unwrap();
    std::fs::write(
        dir.path().join("vms.yaml"),
        "services:\n  - { name: a, namespace: b, endpoints: [{ ip: 10.0.0.1 }] }\n",
    )
    .unwrap();
    let r = run(&["dump", "--config", s(&config), "--timeout", "500ms"]);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stdout.is_empty(), "nothing dumped: {r:?}");
    assert!(r.stderr.contains("remote"), "names the cluster: {r:?}");
}

// ---------------------------------------------------------------------------------------
// Logs and signals.

/// Parses a stderr line as one JSON log event.
fn json_event(line: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line:?}"));
    assert!(v.is_object(), "{line:?}");
    assert!(v.get("timestamp").is_some(), "{line:?}");
    assert!(v.get("level").is_some(), "{line:?}");
    v
}

fn kill(child: &Child, signal: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill -{signal} failed");
}

fn wait_exit(child: &mut Child, timeout: Duration) -> Option<i32> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("meshdns did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn log_format_json_makes_every_stderr_line_a_json_object() {
    let demo = Demo::new();
    let config = demo.config();
    let mut child = meshdns(&[
        "--log-format",
        "json",
        "serve",
        "--config",
        s(&config),
        "--dns-addr",
        "127.0.0.1:0",
        "--ops-addr",
        "127.0.0.1:0",
    ])
    .stdout(Stdio::null())
    .spawn()
    .expect("start meshdns");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let dns: SocketAddr = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match rx.recv_timeout(left) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("no JSON \"meshdns listening\" event; stderr so far: {lines:#?}");
            }
        };
        let v = json_event(&line);
        lines.push(line);
        if v["fields"]["message"] == "meshdns listening" {
            let addr = v["fields"]["dns"].as_str().expect("dns field");
            break addr.parse().expect("dns address");
        }
    };
    // The address in the event is the one serving (the sources load just after it is
    // logged, so wait for them).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let d = dig(dns, "reviews.bookinfo.svc.clusterset.local A");
        if d.answer.len() == 4 {
            break;
        }
        assert!(Instant::now() < deadline, "{}", d.raw);
        std::thread::sleep(Duration::from_millis(20));
    }

    kill(&child, "TERM");
    let code = wait_exit(&mut child, Duration::from_secs(15));
    assert_eq!(code, Some(0));
    let rest: Vec<String> = rx.iter().collect();
    for line in &rest {
        json_event(line);
    }
    assert!(
        rest.iter()
            .any(|l| json_event(l)["fields"]["message"] == "shutting down"),
        "{rest:#?}"
    );

    // The same through the environment, after the subcommand, for dump.
    let mut cmd = meshdns(&["dump", "--config", s(&config)]);
    cmd.env("MESHDNS_LOG_FORMAT", "json");
    let r = run_with_timeout(cmd, Duration::from_secs(30));
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(!r.stderr.trim().is_empty(), "dump logs its sources: {r:?}");
    for line in r.stderr.lines() {
        json_event(line);
    }
}

#[test]
fn sigterm_stops_serve_with_exit_0() {
    let demo = Demo::new();
    let mut m = Meshdns::start(&demo.config());
    // Clients with open connections (idle, and half-way through a message) do not hold the
    // shutdown beyond the drain period.
    let idle = TcpStream::connect(m.dns).expect("connect");
    let mut partial = TcpStream::connect(m.dns).expect("connect");
    std::io::Write::write_all(&mut partial, &[0x00, 0x40, 0x12]).unwrap();
    assert_eq!(
        m.dig("reviews.bookinfo.svc.clusterset.local A").status,
        "NOERROR"
    );
    let sent = Command::new("kill")
        .args(["-TERM", &m.pid().to_string()])
        .status()
        .expect("kill");
    assert!(sent.success());
    // While it drains (if it does), it says so on /readyz and still answers.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && m.is_running() {
        match support::http_get(m.ops, "/readyz") {
            Ok((503, _)) => {
                let d = m.dig("reviews.bookinfo.svc.clusterset.local A");
                assert!(
                    d.status == "NOERROR" || !m.is_running(),
                    "no answer while draining:\n{}",
                    d.raw
                );
                break;
            }
            Ok(_) => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => break,
        }
    }
    let code = m.wait_exit(Duration::from_secs(15));
    assert_eq!(code, Some(0), "log:\n{}", m.logs());
    assert!(m.logs().contains("shutting down"), "log:\n{}", m.logs());
    drop((idle, partial));
}

#[test]
fn sigint_stops_serve_with_exit_0() {
    let demo = Demo::new();
    let mut m = Meshdns::start(&demo.config());
    let code = m.signal_and_wait("INT", Duration::from_secs(15));
    assert_eq!(code, Some(0), "log:\n{}", m.logs());
}

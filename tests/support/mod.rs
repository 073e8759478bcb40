//! Helpers shared by the integration tests: run the real `meshdns` binary on ephemeral
//! loopback ports, query it with the real `dig`, read its ops endpoints.
#![allow(dead_code)]

pub mod fleet;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running `meshdns serve`; killed on drop.
pub struct Meshdns {
    child: Child,
    pub dns: SocketAddr,
    pub ops: SocketAddr,
    log: Arc<Mutex<String>>,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_meshdns")
}

impl Meshdns {
    /// Starts `meshdns serve --config <config>` on 127.0.0.1 port 0 for DNS and ops, and
    /// waits until it is listening and `/readyz` says ready.
    pub fn start(config: &Path) -> Meshdns {
        Self::start_with(config, &[])
    }

    pub fn start_with(config: &Path, extra_args: &[&str]) -> Meshdns {
        let m = Self::spawn(config, extra_args);
        m.wait_ready(Duration::from_secs(20));
        m
    }

    /// Starts without waiting for readiness (sources that cannot sync).
    pub fn spawn(config: &Path, extra_args: &[&str]) -> Meshdns {
        Self::spawn_env(config, extra_args, &[])
    }

    /// [`Meshdns::spawn`] with more environment variables.
    pub fn spawn_env(config: &Path, extra_args: &[&str], env: &[(&str, &str)]) -> Meshdns {
        let mut child = Command::new(bin())
            .args(["serve", "--config"])
            .arg(config)
            .args(["--dns-addr", "127.0.0.1:0", "--ops-addr", "127.0.0.1:0"])
            .args(extra_args)
            .env("RUST_LOG", "info,hickory_server=warn")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start meshdns");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("meshdns listening")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(line.clone());
                }
                let mut l = log2.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "meshdns did not start listening; log:\n{}",
                    log.lock().unwrap()
                );
            }
        };
        let field = |key: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {key} in {line:?}"))
        };
        Meshdns {
            dns: field("dns="),
            ops: field("ops="),
            child,
            log,
        }
    }

    pub fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok((200, _)) = http_get(self.ops, "/readyz") {
                return;
            }
            if Instant::now() > deadline {
                panic!("meshdns not ready; log:\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The rest of the first `/metrics` line that starts with `line_prefix` (a name and its
    /// labels), trimmed: the value.
    pub fn metric(&self, line_prefix: &str) -> Option<String> {
        let (_, body) = http_get(self.ops, "/metrics").unwrap();
        body.lines()
            .find_map(|l| l.strip_prefix(line_prefix))
            .map(|v| v.trim().to_string())
    }

    pub fn logs(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// `dig @127.0.0.1 -p PORT <args>`.
    pub fn dig(&self, args: &str) -> Dig {
        dig(self.dns, args)
    }

    /// Polls `dig` until `pred` holds (answers follow changes asynchronously).
    pub fn dig_until(&self, args: &str, timeout: Duration, pred: impl Fn(&Dig) -> bool) -> Dig {
        let deadline = Instant::now() + timeout;
        loop {
            let d = self.dig(args);
            if pred(&d) {
                return d;
            }
            if Instant::now() > deadline {
                panic!(
                    "condition not met for dig {args}; last answer:\n{}\nlog:\n{}",
                    d.raw,
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal and waits for the exit status.
    pub fn signal_and_wait(&mut self, signal: &str, timeout: Duration) -> Option<i32> {
        let _ = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status();
        self.wait_exit(timeout)
    }

    /// Waits for the process to exit by itself: its exit code, or `None` on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Meshdns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One resource record as dig prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rr {
    pub name: String,
    pub ttl: u32,
    pub rtype: String,
    pub data: String,
}

/// A parsed dig answer.
#[derive(Clone, Debug, Default)]
pub struct Dig {
    pub status: String,
    pub flags: Vec<String>,
    pub answer: Vec<Rr>,
    pub authority: Vec<Rr>,
    pub additional: Vec<Rr>,
    /// The question as echoed by the server.
    pub question: String,
    /// EDNS UDP size advertised in the response, if it had an OPT record.
    pub edns_udp: Option<u16>,
    pub raw: String,
}

impl Dig {
    pub fn has_flag(&self, f: &str) -> bool {
        self.flags.iter().any(|x| x == f)
    }

    /// The data of the answer records, in order.
    pub fn answer_data(&self) -> Vec<String> {
        self.answer.iter().map(|r| r.data.clone()).collect()
    }

    pub fn sorted_answer_data(&self) -> Vec<String> {
        let mut v = self.answer_data();
        v.sort();
        v
    }
}

/// Runs dig against `server` with `args` (whitespace-separated) and parses its output.
pub fn dig(server: SocketAddr, args: &str) -> Dig {
    let out = Command::new("dig")
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string()])
        .args(["+norec", "+time=2", "+tries=2", "+nocookie"])
        .args(args.split_whitespace())
        .output()
        .expect("dig (dnsutils) is installed: scripts/test installs it");
    let raw = String::from_utf8_lossy(&out.stdout).into_owned();
    parse_dig(&raw)
}

pub fn parse_dig(raw: &str) -> Dig {
    let mut d = Dig {
        raw: raw.to_string(),
        ..Dig::default()
    };
    let mut section = "";
    for line in raw.lines() {
        if let Some(rest) = line.split("status: ").nth(1) {
            d.status = rest.split(',').next().unwrap_or("").trim().to_string();
        }
        if let Some(rest) = line.strip_prefix(";; flags: ") {
            let flags = rest.split(';').next().unwrap_or("");
            d.flags = flags.split_whitespace().map(str::to_string).collect();
        }
        if let Some(rest) = line.split("udp: ").nth(1) {
            d.edns_udp = rest.trim().parse().ok();
        }
        if line.starts_with(";; ") && line.ends_with("SECTION:") {
            section = match line {
                l if l.contains("QUESTION") => "question",
                l if l.contains("ANSWER") => "answer",
                l if l.contains("AUTHORITY") => "authority",
                l if l.contains("ADDITIONAL") => "additional",
                _ => "",
            };
            continue;
        }
        if line.trim().is_empty() || (line.starts_with(';') && section != "question") {
            if line.trim().is_empty() {
                section = "";
            }
            continue;
        }
        if section == "question" {
            d.question = line.trim_start_matches(';').trim().to_string();
            continue;
        }
        let mut parts = line.split_whitespace();
        let (Some(name), Some(ttl), Some(_class), Some(rtype)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let rr = Rr {
            name: name.to_string(),
            ttl: ttl.parse().unwrap_or(0),
            rtype: rtype.to_string(),
            data: parts.collect::<Vec<_>>().join(" "),
        };
        match section {
            "answer" => d.answer.push(rr),
            "authority" => d.authority.push(rr),
            "additional" => d.additional.push(rr),
            _ => {}
        }
    }
    d
}

/// A minimal HTTP/1.1 GET: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// A copy of `deploy/demo` in a fresh temporary directory, so a test can edit fleet files.
pub struct Demo {
    pub dir: tempfile::TempDir,
}

impl Demo {
    pub fn new() -> Demo {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/demo");
        for entry in std::fs::read_dir(&src).expect("deploy/demo") {
            let entry = entry.expect("entry");
            std::fs::copy(entry.path(), dir.path().join(entry.file_name())).expect("copy");
        }
        Demo { dir }
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("meshdns.yaml")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Replaces a file the way editors and ConfigMaps do: write aside, then rename over.
    pub fn write(&self, name: &str, text: &str) {
        let tmp = self.dir.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, self.path(name)).expect("rename");
    }
}

impl Default for Demo {
    fn default() -> Self {
        Self::new()
    }
}

/// One UDP query without dig (for tight loops): (rcode, answer data as text), or `None` when
/// no answer came within a second.
pub fn query(
    server: SocketAddr,
    name: &str,
    qtype: hickory_proto::rr::RecordType,
) -> Option<(u16, Vec<String>)> {
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::Name;
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").ok()?;
    sock.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    let mut msg = Message::query();
    msg.metadata.id = fastrand::u16(..);
    msg.add_query(Query::query(Name::from_ascii(name).ok()?, qtype));
    sock.send_to(&msg.to_vec().ok()?, server).ok()?;
    let mut buf = [0u8; 4096];
    let (n, _) = sock.recv_from(&mut buf).ok()?;
    let resp = Message::from_vec(&buf[..n]).ok()?;
    let data = resp.answers.iter().map(|r| r.data.to_string()).collect();
    Some((u16::from(resp.metadata.response_code), data))
}

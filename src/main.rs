//! The `meshdns` command: parses the command line, loads the config (exit 2 on any error,
//! before binding a socket), wires sources → catalog → DNS and ops together, and owns
//! shutdown and reload.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use meshdns::catalog::{self, Catalog};
use meshdns::config::{self, Config};
use meshdns::discovery::{self, Discovery};
use meshdns::fanout::publisher::{Plan, Publisher};
use meshdns::sources::{self, Sources};
use meshdns::{dns, metrics, ops};

/// Authoritative DNS for the services of every cluster in a fleet.
///
/// meshdns watches the Kubernetes API of its own cluster and of every peer cluster (or YAML
/// files), merges what it sees and serves one zone (default clusterset.local.) with the ready
/// endpoint IPs of every service, per cluster and per endpoint. Point kube-dns (stubDomains)
/// or CoreDNS (forward) at it for that zone.
#[derive(Parser, Debug)]
#[command(name = "meshdns", version, about, long_about)]
struct Cli {
    /// Log format on stderr. The level comes from RUST_LOG (default: info; hickory and kube client chatter quieter),
    /// e.g. RUST_LOG=meshdns=debug.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true, env = "MESHDNS_LOG_FORMAT")]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the zone over DNS (UDP and TCP) and the ops HTTP endpoints.
    Serve {
        /// The config file (YAML).
        #[arg(long, short, env = "MESHDNS_CONFIG")]
        config: PathBuf,
        /// DNS address (UDP and TCP), overriding `listen.dns`. Port 0 picks a free port.
        #[arg(long, value_name = "ADDR:PORT")]
        dns_addr: Option<SocketAddr>,
        /// Ops HTTP address (/metrics, /healthz, /readyz, /debug/*), overriding `listen.ops`.
        #[arg(long, value_name = "ADDR:PORT")]
        ops_addr: Option<SocketAddr>,
    },
    /// Validate the config and every file source; print a one-line summary.
    /// Exit 0 when valid, 2 with the file, line and key of the first error.
    Check {
        #[arg(long, short, env = "MESHDNS_CONFIG")]
        config: PathBuf,
    },
    /// Wait until every source has synced once, print the zone as an RFC 1035 master file.
    Dump {
        #[arg(long, short, env = "MESHDNS_CONFIG")]
        config: PathBuf,
        /// Give up (exit 1) if the sources have not synced after this long.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        timeout: Duration,
        /// Which zone: the forward zone (default) or one of the reverse zones of the
        /// clusters' networks, e.g. 8.10.in-addr.arpa.
        #[arg(long, value_name = "ZONE")]
        zone: Option<String>,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// hickory logs every request at info (that is query logging: off by default); kube's client
/// logs every failed retry, which our sources already report once per state change.
const DEFAULT_LOG_FILTER: &str =
    "info,hickory_server=warn,kube_client=error,kube_client::client::builder=off";

fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Loads and validates the config and its file sources, or says why not.
fn load(path: &std::path::Path) -> Result<(Config, usize), config::ConfigError> {
    let config = Config::load(path)?;
    let services = sources::check(&config)?;
    Ok((config, services))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let (config_path, command) = match &cli.command {
        Command::Serve { config, .. }
        | Command::Check { config }
        | Command::Dump { config, .. } => (config.clone(), &cli.command),
    };
    let (mut config, file_services) = match load(&config_path) {
        Ok(c) => c,
        Err(e) => {
            match cli.log_format {
                // Plain, for the person who ran `check` or `serve`.
                LogFormat::Text => eprintln!("Invalid configuration: {e}"),
                // One JSON line, like every other line of a JSON log.
                LogFormat::Json => error!("Invalid configuration: {e}"),
            }
            return ExitCode::from(2);
        }
    };
    if let Command::Check { .. } = command {
        println!(
            "{}: valid: zone {}, {} clusters, {} services in file sources",
            config_path.display(),
            config.zone,
            config.clusters.len(),
            file_services
        );
        return ExitCode::SUCCESS;
    }
    // kube's TLS needs a process-wide crypto provider; install ours before anything builds one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match command {
        Command::Serve {
            dns_addr, ops_addr, ..
        } => {
            let overrides = Listen {
                dns: *dns_addr,
                ops: *ops_addr,
            };
            overrides.apply(&mut config);
            runtime.block_on(serve(config, config_path, overrides))
        }
        Command::Dump { timeout, zone, .. } => {
            runtime.block_on(dump(config, *timeout, zone.as_deref()))
        }
        Command::Check { .. } => ExitCode::SUCCESS,
    }
}

async fn serve(config: Config, config_path: PathBuf, overrides: Listen) -> ExitCode {
    let catalog = Catalog::new(&config);
    let reader = catalog.reader();
    let sender = catalog.sender();
    let mut metrics = metrics::Metrics::new(reader.clone());
    // Peer clusters found in Istio's remote secrets, if the config asks for them.
    let mut discovery = Discovery::new();
    discovery.reconcile(&config);
    metrics.register_discovery(discovery.subscribe());
    let dns_settings = Arc::new(ArcSwap::from_pointee(dns::DnsSettings::from_config(
        &config,
    )));
    let handler = dns::Handler::new(reader.clone(), dns_settings.clone(), metrics.dns.clone());

    let (udp, tcp) = match dns::bind(config.listen.dns).await {
        Ok(s) => s,
        Err(e) => {
            error!(addr = %config.listen.dns, error = %e, "cannot bind the DNS address");
            return ExitCode::FAILURE;
        }
    };
    let ops_listener = match tokio::net::TcpListener::bind(config.listen.ops).await {
        Ok(l) => l,
        Err(e) => {
            error!(addr = %config.listen.ops, error = %e, "cannot bind the ops address");
            return ExitCode::FAILURE;
        }
    };
    let dns_addr = udp.local_addr().unwrap_or(config.listen.dns);
    let ops_addr = ops_listener.local_addr().unwrap_or(config.listen.ops);

    let mut sources = Sources::new(sender.clone());
    sources.reconcile(&config);
    // The local cluster's slice to Pub/Sub, from whichever instance holds the lease.
    let mut publisher = Plan::from_config(&config).map(|p| Publisher::start(p, reader.clone()));
    let catalog_task = tokio::spawn(catalog.run());

    let ops = Arc::new(ops::Ops {
        catalog: reader,
        metrics,
        draining: AtomicBool::new(false),
        started: std::time::Instant::now(),
        ready_timeout: config.ready_timeout,
        discovery: discovery.subscribe(),
        discovery_ready: AtomicBool::new(discovery.synced()),
    });
    let ops_stop = CancellationToken::new();
    let ops_task = tokio::spawn(ops::serve(ops_listener, ops.clone(), ops_stop.clone()));
    let mut server = match dns::serve(handler, udp, tcp) {
        Ok(s) => s,
        Err(e) => {
            error!(error = %e, "cannot start the DNS listeners");
            return ExitCode::FAILURE;
        }
    };
    info!(
        dns = %dns_addr,
        ops = %ops_addr,
        zone = %config.zone,
        clusters = config.clusters.len(),
        "meshdns listening"
    );

    let mut signals = match Signals::new() {
        Ok(s) => s,
        Err(e) => {
            error!(error = %e, "cannot install signal handlers");
            return ExitCode::FAILURE;
        }
    };
    // What runs is the config file's clusters plus the discovered ones (the file wins); both
    // change through the same path: SIGHUP reloads the first, discovery changes the second.
    let mut static_config = config.clone();
    let mut running = config;
    let mut discovered = discovery.subscribe();
    let mut apply_at: Option<tokio::time::Instant> = None;
    let failed = loop {
        tokio::select! {
            sig = signals.next() => match sig {
                Signal::Reload => {
                    if let Some(new) = reload(&static_config, &config_path, &overrides) {
                        static_config = new;
                        discovery.reconcile(&static_config);
                        running = apply(discovery.merge(&static_config), &sender, &dns_settings, &mut sources);
                        let plan = Plan::from_config(&static_config);
                        if publisher.as_ref().map(|p| &p.plan) != plan.as_ref() {
                            if let Some(p) = publisher.take() {
                                p.stop().await;
                            }
                            publisher = plan.map(|p| Publisher::start(p, ops.catalog.clone()));
                        }
                        info!(clusters = running.clusters.len(), "SIGHUP: configuration reloaded");
                    }
                }
                Signal::Stop => {
                    info!("shutting down");
                    break false;
                }
            },
            // Gather a burst of discovery changes (a relist, several secrets) into one apply.
            Ok(()) = discovered.changed(), if apply_at.is_none() => {
                apply_at = Some(tokio::time::Instant::now() + discovery::DEBOUNCE);
            }
            _ = tokio::time::sleep_until(apply_at.unwrap_or_else(tokio::time::Instant::now)), if apply_at.is_some() => {
                apply_at = None;
                discovered.borrow_and_update();
                let merged = discovery.merge(&static_config);
                if merged.clusters != running.clusters {
                    log_discovery_changes(&running, &merged);
                    running = apply(merged, &sender, &dns_settings, &mut sources);
                }
                if discovery.synced() && !ops.discovery_ready.load(Ordering::Relaxed) {
                    // Ready once the catalog knows every cluster found: they have to sync too.
                    let ops = ops.clone();
                    let names: Vec<_> = running.clusters.iter().map(|c| c.name.clone()).collect();
                    tokio::spawn(async move {
                        ops.catalog.wait_for(|s| names.iter().all(|n| s.cluster(n).is_some())).await;
                        ops.discovery_ready.store(true, Ordering::Relaxed);
                    });
                }
            }
            _ = dns::wait(&mut server) => break true,
        }
    };

    // Lame duck: /readyz fails at once so the Service stops sending new clients here, while
    // answers go on for the drain period; then the listeners close. A publisher steps down
    // first, so another instance of the cluster takes over while this one drains.
    ops.draining.store(true, Ordering::Relaxed);
    if let Some(p) = publisher.take() {
        p.stop().await;
    }
    if !failed && !running.drain.is_zero() {
        info!(drain = ?running.drain, "draining: /readyz is 503, answers go on");
        tokio::select! {
            _ = tokio::time::sleep(running.drain) => {}
            _ = signals.next() => info!("second signal: stopping now"),
        }
    }
    server.shutdown().await;
    ops_stop.cancel();
    discovery.shutdown().await;
    sources.shutdown().await;
    drop(sender);
    let _ = catalog_task.await;
    let _ = ops_task.await;
    info!("stopped");
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// SIGHUP: loads the config file again. A valid one is returned, to be merged with the
/// discovered clusters and applied; an invalid one is logged and the running one stays.
fn reload(running: &Config, path: &std::path::Path, overrides: &Listen) -> Option<Config> {
    let mut new = match load(path) {
        Ok((c, _)) => c,
        Err(e) => {
            error!(error = %e, "SIGHUP: invalid configuration, keeping the running one");
            return None;
        }
    };
    overrides.apply(&mut new);
    if new.listen != running.listen {
        warn!(running = %running.listen, new = %new.listen, "listen addresses change only with a restart");
        new.listen = running.listen.clone();
    }
    Some(new)
}

/// Applies a config (after SIGHUP or a discovery change): sources of clusters added, removed
/// or changed start or stop, the others are not touched; zone settings take effect.
fn apply(
    new: Config,
    sender: &catalog::CatalogSender,
    dns_settings: &ArcSwap<dns::DnsSettings>,
    sources: &mut Sources,
) -> Config {
    sender.reconfigure(&new);
    dns_settings.store(Arc::new(dns::DnsSettings::from_config(&new)));
    sources.reconcile(&new);
    new
}

/// One line per discovery change: which clusters were added, removed or changed.
fn log_discovery_changes(old: &Config, new: &Config) {
    let find = |cfg: &Config, name: &str| cfg.clusters.iter().find(|c| &*c.name == name).cloned();
    let names = |cfg: &Config, pred: &dyn Fn(&config::ClusterConfig) -> bool| -> String {
        cfg.clusters
            .iter()
            .filter(|c| pred(c))
            .map(|c| c.name.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let added = names(new, &|c| find(old, &c.name).is_none());
    let removed = names(old, &|c| find(new, &c.name).is_none());
    let changed = names(new, &|c| find(old, &c.name).is_some_and(|o| o != *c));
    info!(
        %added,
        %removed,
        %changed,
        clusters = new.clusters.len(),
        "discovered clusters applied"
    );
}

/// `--dns-addr` / `--ops-addr`, which win over the config file's `listen`, also on reload.
struct Listen {
    dns: Option<SocketAddr>,
    ops: Option<SocketAddr>,
}

impl Listen {
    fn apply(&self, config: &mut Config) {
        if let Some(a) = self.dns {
            config.listen.dns = a;
        }
        if let Some(a) = self.ops {
            config.listen.ops = a;
        }
    }
}

enum Signal {
    Reload,
    Stop,
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::Stop,
            _ = self.int.recv() => Signal::Stop,
            _ = self.hup.recv() => Signal::Reload,
        }
    }
}

async fn dump(config: Config, timeout: Duration, zone: Option<&str>) -> ExitCode {
    let apex = match zone.map(config::parse_fqdn) {
        None => None,
        Some(Ok(name)) => Some(name),
        Some(Err(e)) => {
            eprintln!("--zone: {e}");
            return ExitCode::from(2);
        }
    };
    let deadline = tokio::time::Instant::now() + timeout;
    // Discovered clusters are part of the zone: list the remote secrets first.
    let mut discovery = Discovery::new();
    discovery.reconcile(&config);
    let mut discovered = discovery.subscribe();
    let listed = tokio::time::timeout_at(
        deadline,
        discovered.wait_for(|d| d.watching.is_none() || d.synced),
    )
    .await
    .is_ok();
    if !listed {
        let error = discovered.borrow().last_error.clone().unwrap_or_default();
        eprintln!(
            "the remote secrets were not listed within {}: {error}",
            humantime::format_duration(timeout)
        );
        discovery.shutdown().await;
        return ExitCode::FAILURE;
    }
    let config = discovery.merge(&config);
    discovery.shutdown().await;
    let catalog = Catalog::new(&config);
    let reader = catalog.reader();
    let mut sources = Sources::new(catalog.sender());
    sources.reconcile(&config);
    tokio::spawn(catalog.run());
    let synced = tokio::time::timeout_at(deadline, reader.wait_for(|s| s.all_synced())).await;
    sources.shutdown().await;
    match synced {
        Ok(snap) => {
            let text = match &apex {
                None => Some(snap.zone.master_file()),
                Some(apex) if *apex == snap.zone.settings.origin => Some(snap.zone.master_file()),
                Some(apex) => snap.zone.reverse_master_file(apex),
            };
            match text {
                Some(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                None => {
                    let mut zones = vec![snap.zone.settings.origin.to_ascii()];
                    zones.extend(
                        snap.zone
                            .settings
                            .reverse
                            .iter()
                            .map(|z| z.apex.to_string()),
                    );
                    eprintln!("not a zone meshdns serves; these are: {}", zones.join(" "));
                    ExitCode::from(2)
                }
            }
        }
        Err(_) => {
            let snap = reader.load();
            let waiting: Vec<&str> = snap
                .clusters
                .iter()
                .filter(|c| !c.synced_once)
                .map(|c| &*c.name)
                .collect();
            eprintln!(
                "sources did not sync within {}: {}",
                humantime::format_duration(timeout),
                waiting.join(", ")
            );
            ExitCode::FAILURE
        }
    }
}

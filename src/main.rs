//! The `ferry` command.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use ferry::config::{Config, LogFormat, SinkConfig, SourceConfig};
use ferry::Gateway;
use tracing_subscriber::EnvFilter;

/// Every event allocates a few small buffers on one worker thread and frees them on another;
/// mimalloc's per-thread free lists make that much cheaper than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DEFAULT_CONFIG: &str = "config/ferry.toml";

/// Ferry, a multi-protocol CloudEvents gateway. Without a command, runs config/ferry.toml.
#[derive(Parser)]
#[command(name = "ferry", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Run(RunArgs),
    /// Validate a config file and print its routes; exits 1 on error.
    Check(CheckArgs),
    /// GET a URL and exit 0 on a 2xx answer (a container health check without curl).
    Probe(ProbeArgs),
    /// Certificate tools.
    #[command(subcommand)]
    Certs(CertsCommand),
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Generate a development CA, a server certificate for localhost/127.0.0.1 and a client
    /// certificate (never for production).
    Dev {
        /// Output directory.
        #[arg(long, default_value = "certs/dev")]
        out: PathBuf,
        /// The CA's name (its subject CN). Give a second CA another name: TLS clients find a
        /// CA by its name, so two of the same name in one trust bundle confuse them.
        #[arg(long, default_value = "Ferry development CA")]
        ca_name: String,
    },
}

#[derive(clap::Args)]
struct ProbeArgs {
    /// The URL, e.g. http://127.0.0.1:9090/healthz
    url: String,
    /// Give up after this many milliseconds.
    #[arg(long, default_value_t = 2000)]
    timeout_ms: u64,
}

#[derive(clap::Args)]
struct RunArgs {
    /// The config file.
    #[arg(short, long, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// Log format; overrides `log.format` in the config.
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
}

#[derive(clap::Args)]
struct CheckArgs {
    /// The config file.
    #[arg(short, long, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// Report what a reload from this config to `--config` would change: another config
    /// file, or a running gateway's admin address (`http://127.0.0.1:9090`).
    #[arg(long, value_name = "FILE|URL")]
    diff_against: Option<String>,
    /// Say for an event (a JSON-format file, or `{"event": …, "source": …, "metadata": …}`)
    /// whether each route matches, and the first filter that fails if not.
    #[arg(long, value_name = "EVENT.json", conflicts_with = "diff_against")]
    explain: Option<PathBuf>,
    /// With `--explain`: only the routes of this source.
    #[arg(long, requires = "explain")]
    source: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    ferry::tls::install_default_provider();
    let command = cli.command.unwrap_or(Command::Run(RunArgs {
        config: PathBuf::from(DEFAULT_CONFIG),
        log_format: None,
    }));
    match command {
        Command::Check(args) => match (&args.diff_against, &args.explain) {
            (_, Some(event)) => check_explain(&args.config, event, args.source.as_deref()),
            (None, None) => check(&args.config),
            (Some(base), None) => check_diff(&args.config, base),
        },
        Command::Probe(args) => probe(&args),
        Command::Certs(CertsCommand::Dev { out, ca_name }) => {
            match ferry::certs::generate(&out, &ca_name, ferry::certs::CLIENT_IDENTITY) {
                Ok(files) => {
                    for f in files {
                        println!("wrote {}", f.display());
                    }
                    println!(
                        "client certificate identity: {}",
                        ferry::certs::CLIENT_IDENTITY
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {}: {e}", out.display());
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run(args) => match run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn check(path: &Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("{}: ok", path.display());
    if let Some(admin) = &config.admin {
        println!("admin    {}", admin.listen);
    }
    for (name, source) in &config.sources {
        match source {
            SourceConfig::Http(c) => println!("source   {name} (http) {}{}", c.listen, c.path),
            SourceConfig::Amqp(c) => println!("source   {name} (amqp) queue {}", c.queue),
            SourceConfig::Mqtt(c) => println!("source   {name} (mqtt) {}", c.topics.join(", ")),
            SourceConfig::Nats(c) => println!("source   {name} (nats) {}", c.subject),
            SourceConfig::Websocket(c) => {
                println!("source   {name} (websocket) {}{}", c.listen, c.path)
            }
            SourceConfig::MqttServer(c) => {
                let ws = c
                    .websocket
                    .as_ref()
                    .map_or(String::new(), |w| format!(", ws://{}{}", w.listen, w.path));
                let scheme = if c.tls.is_some() { "mqtts" } else { "mqtt" };
                println!("source   {name} (mqtt-server) {scheme}://{}{ws}", c.listen)
            }
        }
    }
    for (name, sink) in &config.sinks {
        let target = match sink {
            SinkConfig::File(c) => c.path.display().to_string(),
            SinkConfig::Stdout(_) => "-".into(),
            SinkConfig::Http(c) => format!(
                "{} ({})",
                ferry::redacted_url::redacted_url(&c.url),
                format!("{:?}", c.mode).to_lowercase()
            ),
            SinkConfig::Amqp(c) => {
                format!("exchange {:?} routing key {}", c.exchange, c.routing_key)
            }
            SinkConfig::Mqtt(c) => format!("topic {}", c.topic),
            SinkConfig::Websocket(c) => format!("{}{} (push)", c.listen, c.path),
            SinkConfig::MqttServer(c) => format!("topic {} via source {}", c.topic, c.server),
            SinkConfig::Nats(c) => format!(
                "subject {}{}",
                c.subject,
                if c.jetstream { " (jetstream)" } else { "" }
            ),
        };
        println!("sink     {name} ({}) {target}", sink.kind());
    }
    // Every route of a small config; the first ones of a large one.
    const LISTED: usize = 50;
    for (name, route) in config.routes.iter().take(LISTED) {
        let filters = match route.filters.len() {
            0 => "all events".to_owned(),
            1 => "1 filter".to_owned(),
            n => format!("{n} filters"),
        };
        println!(
            "route    {name}: {} -> {} ({filters})",
            route.from.join(", "),
            route.to.join(", ")
        );
    }
    if config.routes.len() > LISTED {
        println!("route    … and {} more", config.routes.len() - LISTED);
    }
    if let Some(stats) = route_index(&config) {
        println!(
            "routes   {} (index: {} exact and {} prefix entries; {} evaluated for every event of their source)",
            stats.routes, stats.exact_entries, stats.prefix_entries, stats.unindexed
        );
    }
    for warning in ferry::router::lint(&config.routes) {
        eprintln!("warning: {warning}");
    }
    ExitCode::SUCCESS
}

/// Prints, for the event in `event`, whether each route matches and why not.
fn check_explain(path: &Path, event: &Path, source: Option<&str>) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let body = match std::fs::read(event) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {}: {e}", event.display());
            return ExitCode::FAILURE;
        }
    };
    let Some(table) = route_table(&config) else {
        eprintln!("error: the routes do not compile");
        return ExitCode::FAILURE;
    };
    let answer = match ferry::router::explain(&table, &body, source, false) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {}: {e}", event.display());
            return ExitCode::FAILURE;
        }
    };
    for s in answer["sources"].as_array().into_iter().flatten() {
        println!("source {}", s["source"].as_str().unwrap_or(""));
        for r in s["routes"].as_array().into_iter().flatten() {
            let name = r["route"].as_str().unwrap_or("");
            if r["matched"].as_bool() == Some(true) {
                let to: Vec<&str> = r["to"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str())
                    .collect();
                println!("  {name}: matches -> {}", to.join(", "));
            } else {
                println!(
                    "  {name}: no: {} (saw {})",
                    r["failed"]["filter"].as_str().unwrap_or(""),
                    r["failed"]["saw"].as_str().unwrap_or("")
                );
            }
        }
    }
    ExitCode::SUCCESS
}

/// The route table of a checked config.
fn route_table(config: &Config) -> Option<ferry::router::RouteTable> {
    let sinks: std::collections::HashMap<String, usize> = config
        .sinks
        .keys()
        .enumerate()
        .map(|(i, n)| (n.clone(), i))
        .collect();
    let metrics =
        ferry::metrics::Metrics::new(&mut prometheus_client::registry::Registry::default());
    ferry::router::RouteTable::build(
        &config.routes,
        &sinks,
        &metrics,
        &ferry::router::DedupStore::default(),
    )
    .ok()
}

/// How the routes of a checked config are indexed.
fn route_index(config: &Config) -> Option<ferry::router::IndexStats> {
    route_table(config).map(|t| t.stats())
}

/// Prints the components a reload from `base` to `path` would add, remove or change.
fn check_diff(path: &Path, base: &str) -> ExitCode {
    let new = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let remote = base.starts_with("http://") || base.starts_with("https://");
    let pair = if remote {
        // Both sides as `/-/config` shows them, so redaction and references compare alike.
        running_config(base).and_then(|old| {
            let new = Config::outline(&new.origin.redacted, path).map_err(|e| e.to_string())?;
            Ok((old, new))
        })
    } else {
        Config::load(Path::new(base))
            .map(|old| (old, new))
            .map_err(|e| e.to_string())
    };
    let (old, new) = match pair {
        Ok(pair) => pair,
        Err(e) => {
            eprintln!("error: {base}: {e}");
            return ExitCode::FAILURE;
        }
    };
    if remote {
        eprintln!(
            "note: compared with {base}/-/config, which shows neither literal secrets nor the \
             contents of referenced files: a change to those alone is not listed (compare with \
             the running config file to see them)"
        );
    }
    let changes = ferry::reload::diff(&old, &new);
    if changes.is_empty() {
        println!("no changes");
    }
    for (mark, list) in [
        ("+", &changes.added),
        ("-", &changes.removed),
        ("~", &changes.changed),
    ] {
        for c in list {
            println!("{mark} {c}");
        }
    }
    ExitCode::SUCCESS
}

/// The config a running gateway reports on `/-/config`, parsed to compare (see
/// [`Config::outline`]).
fn running_config(admin: &str) -> Result<Config, String> {
    let url = format!("{}/-/config", admin.trim_end_matches('/'));
    let body: serde_json::Value = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?
        .block_on(async {
            let mut req = reqwest::Client::new().get(&url);
            // The admin API's token, when it has one.
            if let Some(token) = std::env::var("FERRY_ADMIN_TOKEN")
                .ok()
                .filter(|t| !t.is_empty())
            {
                req = req.bearer_auth(token);
            }
            req.send().await?.error_for_status()?.json().await
        })
        .map_err(|e: reqwest::Error| e.to_string())?;
    let text = body["config"].as_str().ok_or("no config in the answer")?;
    Config::outline(text, Path::new(&url)).map_err(|e| e.to_string())
}

fn probe(args: &ProbeArgs) -> ExitCode {
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| {
            rt.block_on(async {
                let client = reqwest::Client::builder()
                    .timeout(std::time::Duration::from_millis(args.timeout_ms))
                    .build()?;
                Ok(client.get(&args.url).send().await?.status())
            })
        });
    match result {
        Ok(status) if status.is_success() => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("probe: {} answered {status}", args.url);
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("probe: {}: {e:#}", args.url);
            ExitCode::FAILURE
        }
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config).map_err(|e| anyhow::anyhow!("{e}"))?;
    init_logging(&config, args.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let watch = config.reload.clone();
    runtime.block_on(async move {
        let summary = Summary::of(&config);
        let gateway = Gateway::start(config).await?;
        summary.log(&gateway, &args.config);
        let stop_watch = tokio_util::sync::CancellationToken::new();
        if watch.watch {
            ferry::watch::spawn(
                gateway.reloader(),
                std::time::Duration::from_millis(watch.debounce_ms),
                stop_watch.clone(),
            );
        }
        let mut signals = Signals::install()?;
        let first = signals.wait_for_stop(&gateway).await;
        stop_watch.cancel();
        tracing::info!(signal = first, "shutting down: no new events; finishing in-flight ones (send it again to exit at once)");
        tokio::select! {
            done = gateway.shutdown() => {
                if done {
                    tracing::info!("shutdown complete");
                } else {
                    tracing::warn!("shutdown deadline passed with deliveries still in flight; they were not acknowledged");
                }
            }
            second = signals.next_stop() => {
                tracing::warn!(signal = second, "second signal: exiting at once; events still in flight were not acknowledged, so their senders deliver them again");
                std::process::exit(130);
            }
        }
        Ok(())
    })
}

/// The signals `ferry run` answers: SIGTERM and SIGINT stop it (gracefully, then at once on
/// the second), SIGHUP reloads the config file.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("installing the SIGHUP handler")?,
        })
    }

    /// Waits for SIGTERM or SIGINT (its name); SIGHUP reloads the config file meanwhile.
    async fn wait_for_stop(&mut self, gateway: &Gateway) -> &'static str {
        loop {
            tokio::select! {
                _ = self.term.recv() => return "SIGTERM",
                _ = self.int.recv() => return "SIGINT",
                _ = self.hup.recv() => {
                    // The outcome is logged (and counted) by the reloader.
                    let _ = gateway.reloader().reload_file(ferry::reload::Trigger::Signal).await;
                }
            }
        }
    }

    /// The next SIGTERM or SIGINT.
    async fn next_stop(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// What the start-up line names: the version, every listener with its address, the sinks and
/// the number of routes.
struct Summary {
    sources: Vec<(String, &'static str)>,
    sinks: Vec<(String, &'static str)>,
    routes: usize,
}

impl Summary {
    fn of(config: &Config) -> Summary {
        Summary {
            sources: config
                .sources
                .iter()
                .map(|(n, s)| (n.clone(), s.kind()))
                .collect(),
            sinks: config
                .sinks
                .iter()
                .map(|(n, s)| (n.clone(), s.kind()))
                .collect(),
            routes: config.routes.len(),
        }
    }

    fn log(&self, gateway: &Gateway, path: &std::path::Path) {
        let with_addr = |name: &str, kind: &str, addr: Option<std::net::SocketAddr>| match addr {
            Some(a) => format!("{name} ({kind}) {a}"),
            None => format!("{name} ({kind})"),
        };
        let sources: Vec<String> = (self.sources.iter())
            .map(|(n, k)| with_addr(n, k, gateway.source_addr(n)))
            .collect();
        let sinks: Vec<String> = (self.sinks.iter())
            .map(|(n, k)| with_addr(n, k, gateway.sink_addr(n)))
            .collect();
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            commit = ferry::process_metrics::COMMIT,
            config = %path.display(),
            admin = %gateway.admin_addr().map_or_else(|| "off".to_owned(), |a| a.to_string()),
            sources = %sources.join(", "),
            sinks = %sinks.join(", "),
            routes = self.routes,
            "ferry started"
        );
    }
}

fn init_logging(config: &Config, format: Option<LogFormat>) {
    let level = std::env::var("RUST_LOG")
        .ok()
        .filter(|l| EnvFilter::try_new(l).is_ok())
        .unwrap_or_else(|| config.log.level.clone());
    let filter = EnvFilter::try_new(ferry::log_filter::directives(&level))
        .unwrap_or_else(|_| EnvFilter::new(ferry::log_filter::directives("info")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format.unwrap_or(config.log.format) {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

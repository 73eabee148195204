//! `lockstep-coordinator`: parse arguments, start tracing, load config, wire signals, run.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lockstep_coordinator::{RawConfig, Server};
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// Exit code for bad configuration (EX_CONFIG would be 78; BSD's EX_USAGE 64 is what the house
/// style asks for bad config).
const EXIT_CONFIG: u8 = 64;

/// `--help` description, man-page style.
const LONG_ABOUT: &str =
    "The Lockstep coordinator: jobs, dispatch, archive, transparency log, quorum and decisions.

Takes operators' rebuild jobs, fetches and archives the source from the machine's apt sources,
dispatches one job per trusted builder over RabbitMQ, verifies the builders' signed attestations
into a write-once archive, keeps a C2SP transparency log over every record, and records a signed
ship / hold / pending / failed decision per (source, version, arch). Serves the HTTP API, the
log, a web page (/) and Prometheus metrics (/metrics).

Configuration comes from --config FILE (TOML, see config/coordinator.sample.toml), overridden by
LOCKSTEP__<KEY> environment variables. SIGHUP reloads the policy; SIGINT/SIGTERM drain and stop.";

/// Shown after the options by `--help`.
const AFTER_HELP: &str = "FILES:
  /etc/lockstep/coordinator.toml        configuration
  /etc/lockstep/policy.toml             trusted builders and thresholds
  <data_dir>/archive/                   the write-once archive and log (back it up)
  <data_dir>/coordinator-key.asc        the key decisions are signed with

EXAMPLES:
  lockstep-coordinator --config /etc/lockstep/coordinator.toml check-config
  lockstep-coordinator --config /etc/lockstep/coordinator.toml run
  LOCKSTEP__LISTEN=0.0.0.0:8440 lockstep-coordinator --log-format json run

EXIT STATUS:
  0 stopped cleanly; 1 runtime error; 2 usage error; 64 invalid configuration.

SEE ALSO: lockstep(1), lockstep-agent(1), docs/operations.md";

/// The Lockstep coordinator: jobs, dispatch, archive, transparency log, quorum and decisions.
#[derive(Parser)]
#[command(version, about, long_about = LONG_ABOUT, after_long_help = AFTER_HELP)]
struct Args {
    /// Configuration file (TOML). Environment variables LOCKSTEP__<KEY> override it.
    #[arg(short, long, global = true, env = "LOCKSTEP_COORDINATOR_CONFIG")]
    config: Option<PathBuf>,
    /// Log format: plain or json.
    #[arg(long, global = true, default_value = "plain")]
    log_format: String,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the coordinator (the default).
    Run,
    /// Print the resolved configuration (secrets redacted) and exit; exit 64 if it is invalid.
    CheckConfig,
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if format == "json" {
        b.json().init();
    } else {
        b.init();
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_tracing(&args.log_format);
    let cfg = match RawConfig::load(args.config.as_deref()).and_then(|r| r.resolve()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("lockstep-coordinator: bad configuration: {e:#}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Some(Command::CheckConfig) = args.command {
        match toml::to_string_pretty(&cfg.redacted()) {
            Ok(s) => {
                print!("{s}");
                return ExitCode::SUCCESS;
            }
            Err(e) => {
                eprintln!("lockstep-coordinator: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        }
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lockstep-coordinator: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cfg, args.config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lockstep-coordinator: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cfg: lockstep_coordinator::Config, file: Option<PathBuf>) -> anyhow::Result<()> {
    let server = Server::build(cfg).await?;
    let svc = server.service.clone();
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        config = %file.as_ref().map_or("(none)".into(), |f| f.display().to_string()),
        listen = %server.addr,
        data_dir = %svc.cfg.data_dir.display(),
        amqp = %lockstep_proto::broker::redact_all(&svc.cfg.amqp_urls),
        policy = %svc.cfg.policy.display(),
        builders = svc.builder_fingerprints().len(),
        fingerprint = %svc.key.fingerprint(),
        log_key = %svc.archive.verifier_key(),
        "lockstep-coordinator starting"
    );
    let shutdown = CancellationToken::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let stop = shutdown.clone();
    let reload_svc = svc.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM"); stop.cancel(); return; }
                _ = int.recv() => { tracing::info!("SIGINT"); stop.cancel(); return; }
                _ = hup.recv() => {
                    let s = reload_svc.clone();
                    match tokio::task::spawn_blocking(move || s.reload_policy()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => tracing::error!(error = %e, "policy reload refused; the previous policy stays in force"),
                        Err(e) => tracing::error!(error = %e, "policy reload task failed"),
                    }
                }
            }
        }
    });
    server.run(shutdown).await
}

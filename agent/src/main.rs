//! `lockstep-agent`: parse arguments, start tracing, load config, wire signals, run.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lockstep_agent::{Agent, RawConfig};
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// Exit code for bad configuration.
const EXIT_CONFIG: u8 = 64;

/// `--help` description, man-page style.
const LONG_ABOUT: &str = "The Lockstep build agent: rebuilds source packages in hardened containers and signs the results.

Consumes its builder identity's RabbitMQ queue, fetches each job's source from the coordinator by
digest, rebuilds it in a network-less Docker container from the pinned build image, hashes the
results on the host, clearsigns Debian's .buildinfo and signs a statement with its OpenPGP key
(which never enters a container), uploads them and acknowledges the job. Publishes a heartbeat
every 15 s and every phase change on the lockstep.events exchange.

Configuration comes from --config FILE (TOML, see config/agent.sample.toml), overridden by
LOCKSTEP__<KEY> environment variables. SIGINT/SIGTERM stop consuming, let running builds finish
within the grace period, then stop and requeue them.";

/// Shown after the options by `--help`.
const AFTER_HELP: &str = "FILES:
  /etc/lockstep/agent-NAME.toml          configuration (systemd unit lockstep-agent@NAME)
  <state_dir>/key.asc                    this agent's signing key (0600; back it up)

EXAMPLES:
  lockstep-agent --config /etc/lockstep/agent-buildd1.toml init --export buildd1.asc
      create the key if missing, print its fingerprint, write the public key for the policy
  lockstep-agent --config /etc/lockstep/agent-buildd1.toml check-config
  lockstep-agent --config /etc/lockstep/agent-buildd1.toml run

EXIT STATUS:
  0 stopped cleanly; 1 runtime error; 2 usage error; 64 invalid configuration.

SEE ALSO: lockstep(1), lockstep-coordinator(1), docs/operations.md";

/// The Lockstep build agent: rebuilds source packages in hardened containers and signs the results.
#[derive(Parser)]
#[command(version, about, long_about = LONG_ABOUT, after_long_help = AFTER_HELP)]
struct Args {
    /// Configuration file (TOML). Environment variables LOCKSTEP__<KEY> override it.
    #[arg(short, long, global = true, env = "LOCKSTEP_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// Log format: plain or json.
    #[arg(long, global = true, default_value = "plain")]
    log_format: String,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent (the default).
    Run,
    /// Print the resolved configuration and exit; exit 64 if it is invalid.
    CheckConfig,
    /// Create the signing key if missing, print its fingerprint, and export the public key.
    Init {
        /// Write the armored public key here (for the coordinator's policy).
        #[arg(long)]
        export: Option<PathBuf>,
    },
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
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
            eprintln!("lockstep-agent: bad configuration: {e:#}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match args.command {
        Some(Command::CheckConfig) => {
            println!("{:#?}", cfg.redacted());
            return ExitCode::SUCCESS;
        }
        Some(Command::Init { export }) => {
            return match lockstep_agent::agent::load_key(&cfg).and_then(|(key, _)| {
                if let Some(path) = export {
                    std::fs::write(&path, key.public_armored()?)?;
                }
                println!("{}", key.fingerprint());
                Ok(())
            }) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("lockstep-agent: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        _ => {}
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lockstep-agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cfg, args.config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lockstep-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cfg: lockstep_agent::Config, file: Option<PathBuf>) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let stop = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: draining"),
            _ = int.recv() => tracing::info!("SIGINT: draining"),
        }
        stop.cancel();
    });
    let (name, coordinator, state_dir, image) = (
        cfg.name.clone(),
        cfg.coordinator_url.clone(),
        cfg.state_dir.clone(),
        cfg.runtime.image.clone(),
    );
    let Some(agent) = Agent::build(cfg, &shutdown).await? else {
        return Ok(());
    };
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        %name,
        config = %file.as_ref().map_or("(none)".into(), |f| f.display().to_string()),
        %coordinator,
        state_dir = %state_dir.display(),
        %image,
        queue = %lockstep_proto::v1::builder_queue(&agent.worker.key.fingerprint()),
        fingerprint = %agent.worker.key.fingerprint(),
        "lockstep-agent starting"
    );
    agent.run(shutdown).await
}

//! `keycap`: the one binary. Wiring only: parse flags, load config, open the database, and hand
//! over to the crate that does the work.

mod cli;
mod config;
mod database;
mod demo;
mod up;
mod verbs;

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{FilterExt, LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::cli::{Cli, Command};
use crate::config::{Config, FlagOverrides};
use crate::database::Database;

/// mimalloc rather than glibc's allocator: the gateway allocates and frees small buffers for every
/// request while holding long-lived key state, a mix under which glibc's free lists fragment
/// and slow down (see benches/README.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let mut flags = FlagOverrides {
        data_dir: cli.data_dir.clone(),
        log_level: cli.log_level.clone(),
        ..Default::default()
    };
    if let Command::Up(args) | Command::Demo(args) | Command::Gateway(args) | Command::Admin(args) =
        &cli.command
    {
        flags.gateway_listen = args.gateway_listen.clone();
        flags.admin_listen = args.admin_listen.clone();
        flags.metrics_listen = args.metrics_listen.clone();
    }
    let env: Vec<(String, String)> = std::env::vars().collect();
    let config = Config::load(cli.config.as_deref(), &env, &flags)?;
    init_logging(
        &config.log.level,
        matches!(
            cli.command,
            Command::Up(_) | Command::Gateway(_) | Command::Admin(_) | Command::MockOpenrouter(_)
        ),
    )?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(dispatch(cli.command, config))
}

/// Logs go to standard error. Servers log at the configured level; one-shot commands log only
/// warnings unless asked, so their output stays readable.
fn init_logging(level: &str, server: bool) -> anyhow::Result<()> {
    let filter = match std::env::var("KEYCAP_LOG") {
        Ok(filter) => filter,
        Err(_) if server => level.to_string(),
        Err(_) => "warn".to_string(),
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .with_context(|| format!("log filter {filter:?}"))?;
    // pingora logs the requests it sends upstream, with their headers (the master key among
    // them), at debug and trace: whatever the filter asks, its crates log at info at most.
    let pingora_at_most_info = Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_target("pingora", LevelFilter::INFO);
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .with_filter(filter.and(pingora_at_most_info)),
        )
        .init();
    Ok(())
}

async fn dispatch(command: Command, config: Config) -> anyhow::Result<()> {
    match command {
        Command::Up(_) => up::run(config, up::Mode::Up).await,
        Command::Demo(_) => up::run(config, up::Mode::Demo).await,
        Command::Gateway(_) => up::run(config, up::Mode::Gateway).await,
        Command::Admin(_) => up::run(config, up::Mode::Admin).await,
        Command::MockOpenrouter(args) => {
            let mut mock_config = openrouter_mock::MockConfig::default();
            if let Some(key) = args.master_key {
                mock_config.master_key = key;
            }
            let listener = tokio::net::TcpListener::bind(args.listen)
                .await
                .with_context(|| format!("listening on {}", args.listen))?;
            eprintln!(
                "openrouter-mock listening on http://{}",
                listener.local_addr()?
            );
            eprintln!("it accepts the master key {}", mock_config.master_key);
            openrouter_mock::serve(listener, mock_config)
                .await
                .context("serving the mock")?;
            Ok(())
        }
        command => {
            let database = Database::open(&config).await?;
            let result = run_verb(&database, &config, command).await;
            database.close().await;
            result
        }
    }
}

async fn run_verb(database: &Database, config: &Config, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Migrate => {
            eprintln!(
                "database schema is up to date ({} migrations)",
                db::MIGRATIONS.len()
            );
            Ok(())
        }
        Command::Org(command) => verbs::org(database, command).await,
        Command::Member(command) => {
            verbs::member(database, &config.admin_public_url(), &config.admin, command).await
        }
        Command::Budget(command) => verbs::budget(database, command).await,
        Command::Vault(command) => {
            let keyring = up::load_keyring(config, database, true).await?;
            verbs::vault(database, &keyring, command).await
        }
        Command::Key(command) => verbs::key(database, command).await,
        Command::Audit(args) => verbs::audit(database, args).await,
        Command::Token(command) => verbs::token(database, command).await,
        Command::Up(_)
        | Command::Demo(_)
        | Command::Gateway(_)
        | Command::Admin(_)
        | Command::MockOpenrouter(_) => {
            unreachable!("handled in dispatch")
        }
    }
}

//! `baton`: validate, run, resume and draw workflows.
//!
//! Exit codes: 0 success; 1 a run failed or was cancelled, or `validate` found problems;
//! 2 a usage, config or environment error (nothing ran); 141 the output was a pipe that its
//! reader closed (`baton validate | head -1`).

mod adapters;
mod client;
mod completions;
mod init;
mod man;
mod pipe;
mod progress;
mod relays;
mod run;
mod serve;
mod setup;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// mimalloc: the intake allocates a few small buffers per webhook on one runtime thread
/// while the store's writer frees them on another; glibc's malloc spent about 6% of the
/// intake's CPU there. Metered: the memory bound of jq evaluations (`[expressions]`)
/// counts what each evaluation allocates.
#[global_allocator]
static ALLOCATOR: baton_core::expr_bound::MeteredAlloc<mimalloc::MiMalloc> =
    baton_core::expr_bound::MeteredAlloc::new(mimalloc::MiMalloc);

/// baton coordinates the CI/CD systems you already run: it takes events, runs workflow
/// graphs of stages through adapters (local commands, approvals, CI servers), passes JSON
/// outputs from stage to stage, and keeps every step in a durable store.
#[derive(Parser, Debug)]
#[command(name = "baton", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check the gateway config and every workflow; print every problem found.
    Validate(ValidateArgs),
    /// Run one workflow to its end in this process, with live progress.
    Run(run::RunArgs),
    /// Finish runs that a killed `baton` left unfinished in the store.
    Resume(run::ResumeArgs),
    /// Draw a workflow's stage graph as Graphviz DOT or as an SVG picture.
    Graph(GraphArgs),
    /// Run the gateway: webhook intake, the REST API, health and metrics.
    Serve(serve::ServeArgs),
    /// List, show, cancel, retry and approve runs on a running `baton serve`.
    Runs(client::RunsArgs),
    /// List, show and replay webhook deliveries stored by a running `baton serve`.
    Deliveries(client::DeliveriesArgs),
    /// List relay targets and messages of a running `baton serve`, and replay messages.
    Relays(relays::RelaysArgs),
    /// List the adapter kinds built into this baton: what each does and where it is
    /// documented.
    Adapters(adapters::AdaptersArgs),
    /// Write a commented starter `baton.toml` and workflow into a folder.
    Init(init::InitArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(completions::CompletionsArgs),
    /// Print the manual page, or write every page into a folder.
    Man(man::ManArgs),
}

/// How logs are written.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Logs go to standard error, filtered by `BATON_LOG`. A server logs what it does (`info`
/// unless `BATON_LOG` says otherwise), in the format `--log-format` asks for; the other
/// commands print their own progress and log only warnings and errors.
fn init_logs(command: &Command) {
    let (format, default_filter) = match command {
        Command::Serve(args) => (args.log_format, "info"),
        _ => (LogFormat::Text, "warn"),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("BATON_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(escapes_on_stderr())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
}

/// Whether standard error may carry terminal escape codes (colours, redrawn lines): only for
/// a person at a terminal who has not set `NO_COLOR`. A file, a pipe or a log collector gets
/// plain text.
fn escapes_on_stderr() -> bool {
    std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Where the config comes from.
#[derive(Args, Debug, Clone)]
pub struct ConfigArgs {
    /// The gateway config (TOML or YAML). Default: ./baton.toml or ./baton.yaml if present.
    #[arg(short, long, env = "BATON_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct ValidateArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Extra workflow files to check (besides those the config's `workflows` globs find).
    files: Vec<PathBuf>,
    /// Check a config meant for another machine: a secret variable that is not set here or a
    /// secret file that does not exist here is a warning, not a problem.
    #[arg(long)]
    secrets_elsewhere: bool,
}

#[derive(Args, Debug)]
struct GraphArgs {
    /// A workflow name from the config, or a path to a workflow file.
    workflow: String,
    #[command(flatten)]
    config: ConfigArgs,
    /// Output format.
    #[arg(long, value_enum, default_value = "dot")]
    format: GraphFormat,
    /// Write to this file instead of standard output.
    #[arg(short, long)]
    output: Option<PathBuf>,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum GraphFormat {
    /// Graphviz DOT text (render with `dot -Tpng`).
    Dot,
    /// A standalone SVG picture (needs no Graphviz).
    Svg,
}

fn main() -> ExitCode {
    pipe::exit_quietly_when_closed();
    let cli = Cli::parse();
    init_logs(&cli.command);
    match cli.command {
        Command::Validate(args) => validate(args),
        Command::Graph(args) => graph(args),
        Command::Run(args) => run::block_on(run::run(args)),
        Command::Resume(args) => run::block_on(run::resume(args)),
        Command::Serve(args) => run::block_on_with(args.workers, serve::serve(args)),
        Command::Runs(args) => run::block_on(client::runs(args)),
        Command::Deliveries(args) => run::block_on(client::deliveries(args)),
        Command::Relays(args) => run::block_on(relays::relays(args)),
        Command::Adapters(args) => adapters::adapters(args),
        Command::Init(args) => init::init(args),
        Command::Completions(args) => completions::completions(args),
        Command::Man(args) => man::man(args),
    }
}

fn validate(args: ValidateArgs) -> ExitCode {
    let config = setup::config_file(args.config.config.as_deref(), None);
    if config.is_none() && args.files.is_empty() {
        eprintln!(
            "baton validate: no config given (-c FILE), no ./baton.toml, and no workflow files to check"
        );
        return ExitCode::from(2);
    }
    let secrets = if args.secrets_elsewhere {
        baton_config::SecretsFrom::Elsewhere
    } else {
        baton_config::SecretsFrom::Here
    };
    let checked = setup::load_reading_secrets(config.as_deref(), &args.files, secrets);
    for warning in &checked.warnings {
        println!("warning: {warning}");
    }
    match checked.loaded {
        Ok(loaded) => {
            let adapters = loaded.gateway.adapters.len();
            let sources = loaded.gateway.sources.len();
            let stages: usize = loaded
                .workflows
                .iter()
                .map(|w| w.workflow.stages.len())
                .sum();
            let relays = loaded.gateway.relays.len();
            let targets: usize = loaded.gateway.relays.values().map(|r| r.to.len()).sum();
            let relays = if relays == 0 {
                String::new()
            } else {
                format!(
                    ", {relays} relay{} ({targets} target{})",
                    plural(relays),
                    plural(targets)
                )
            };
            println!(
                "ok: {} workflow{} ({stages} stage{}), {adapters} adapter instance{}, {sources} source{}{relays}",
                loaded.workflows.len(),
                plural(loaded.workflows.len()),
                plural(stages),
                plural(adapters),
                plural(sources)
            );
            for w in &loaded.workflows {
                let n = w.workflow.stages.len();
                println!(
                    "  {} ({}): {n} stage{}",
                    w.workflow.name(),
                    w.file.display(),
                    plural(n)
                );
            }
            if loaded.config_file.is_some() {
                println!("{}", store_line(&loaded.gateway));
            }
            ExitCode::SUCCESS
        }
        Err(problems) => {
            print!("{problems}");
            if !problems.to_string().ends_with('\n') {
                println!();
            }
            ExitCode::from(1)
        }
    }
}

/// What `validate` says of the store: its URL (password hidden) and, for a store replicas
/// share, how long their claims last.
fn store_line(gateway: &baton_config::GatewayConfig) -> String {
    let url = baton_store::redact_url(&gateway.store_url());
    if gateway.store.is_postgres() {
        let password = if gateway.store.password.is_some() {
            ", password from store.password"
        } else {
            ""
        };
        format!(
            "store: {url} (shared by replicas, lease {}{password})",
            baton_core::HumanDuration(gateway.store.lease())
        )
    } else {
        format!("store: {url}")
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn graph(args: GraphArgs) -> ExitCode {
    let lone = std::path::Path::new(&args.workflow);
    let lone = lone.is_file().then_some(lone);
    let config = setup::config_file(args.config.config.as_deref(), lone);
    let files: Vec<PathBuf> = lone.map(|p| vec![p.to_path_buf()]).unwrap_or_default();
    let loaded = match setup::load(config.as_deref(), &files, None) {
        Ok(loaded) => loaded,
        Err(problems) => {
            eprint!("{problems}");
            return ExitCode::from(2);
        }
    };
    let Some(found) = loaded.workflow(&args.workflow) else {
        eprintln!(
            "baton graph: no workflow `{}` (known: {})",
            args.workflow,
            run::names(&loaded)
        );
        return ExitCode::from(2);
    };
    let deciding = setup::decision_instances(&loaded);
    let waits_for_person = |stage: &baton_core::Stage| deciding.contains(&stage.uses);
    let text = match args.format {
        GraphFormat::Dot => baton_core::graph::to_dot(&found.workflow, waits_for_person),
        GraphFormat::Svg => baton_core::graph::to_svg(&found.workflow, waits_for_person),
    };
    match args.output {
        Some(path) => match std::fs::write(&path, text) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("baton graph: cannot write {}: {e}", path.display());
                ExitCode::from(2)
            }
        },
        None => {
            print!("{text}");
            ExitCode::SUCCESS
        }
    }
}

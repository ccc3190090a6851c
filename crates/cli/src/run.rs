//! `baton run` and `baton resume`.

use std::collections::{BTreeSet, HashSet};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use baton_config::Loaded;
use baton_core::context::TriggerInfo;
use baton_core::{Decision, RunStatus};
use baton_engine::{Engine, Event, RunView};
use baton_store::now_millis;
use clap::Args;
use serde_json::Value;

use crate::ConfigArgs;
use crate::progress::Progress;
use crate::setup;

/// `baton run`.
#[derive(Args, Debug)]
pub(crate) struct RunArgs {
    /// A workflow name from the config, or a path to a workflow file (a lone file needs no
    /// config when it uses only `exec` and `approval`).
    workflow: String,
    #[command(flatten)]
    config: ConfigArgs,
    /// The event as a JSON (or YAML) file; `-` reads standard input. Default: `{}`.
    #[arg(long, value_name = "FILE")]
    event: Option<PathBuf>,
    /// The source the run is attributed to (`.trigger.source`).
    #[arg(long, default_value = "manual")]
    source: String,
    /// The event type (`.trigger.event`).
    #[arg(long = "event-type", default_value = "manual")]
    event_type: String,
    /// Approve this approval stage when it waits (repeatable).
    #[arg(long = "approve", value_name = "STAGE")]
    approve: Vec<String>,
    /// Print the finished run (stages, statuses, outputs, external references) as JSON on
    /// standard output; progress goes to standard error.
    #[arg(long)]
    json: bool,
    /// The store URL (`sqlite://PATH`). Default: the config's `[store]`, or
    /// `.baton/baton.db` for a lone workflow file.
    #[arg(long, env = "BATON_STORE")]
    store: Option<String>,
}

/// `baton resume`.
#[derive(Args, Debug)]
pub(crate) struct ResumeArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// The store URL, as for `baton run`.
    #[arg(long, env = "BATON_STORE")]
    store: Option<String>,
    /// Print the finished runs as JSON (an array) on standard output.
    #[arg(long)]
    json: bool,
}

/// Runs a command's future on a runtime; maps errors to exit code 2.
pub(crate) fn block_on(future: impl Future<Output = Result<ExitCode>>) -> ExitCode {
    block_on_with(None, future)
}

/// [`block_on`] with `workers` runtime threads (tokio's default when `None`).
pub(crate) fn block_on_with(
    workers: Option<usize>,
    future: impl Future<Output = Result<ExitCode>>,
) -> ExitCode {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(n) = workers {
        builder.worker_threads(n.max(1));
    }
    let runtime = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("baton: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(future) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("baton: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The workflow names, for error messages.
pub(crate) fn names(loaded: &Loaded) -> String {
    let names: Vec<&str> = loaded.workflows.iter().map(|w| w.workflow.name()).collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

fn read_event(path: Option<&Path>) -> Result<Value> {
    let Some(path) = path else {
        return Ok(Value::Object(Default::default()));
    };
    let text = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin())
            .context("reading the event from standard input")?
    } else {
        std::fs::read_to_string(path)
            .with_context(|| format!("reading the event file {}", path.display()))?
    };
    match serde_json::from_str(&text) {
        Ok(v) => Ok(v),
        Err(json_error) => serde_yaml_ng::from_str(&text).map_err(|_| {
            anyhow::anyhow!(
                "the event file {} is not JSON: {json_error}",
                path.display()
            )
        }),
    }
}

fn load_or_report(
    config: Option<&Path>,
    files: &[PathBuf],
    store: Option<&str>,
) -> Result<Loaded, ExitCode> {
    setup::load(config, files, store).map_err(|problems| {
        eprint!("{problems}");
        ExitCode::from(2)
    })
}

fn exit_for(status: RunStatus) -> ExitCode {
    if status == RunStatus::Succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `baton run WORKFLOW`.
pub(crate) async fn run(args: RunArgs) -> Result<ExitCode> {
    let lone = Path::new(&args.workflow);
    let lone = (lone.is_file()).then_some(lone);
    let config = setup::config_file(args.config.config.as_deref(), lone);
    let files: Vec<PathBuf> = lone.map(|p| vec![p.to_path_buf()]).unwrap_or_default();
    let loaded = match load_or_report(config.as_deref(), &files, args.store.as_deref()) {
        Ok(l) => l,
        Err(code) => return Ok(code),
    };
    let Some(found) = loaded.workflow(&args.workflow) else {
        eprintln!(
            "baton run: no workflow `{}` in the config (known: {})",
            args.workflow,
            names(&loaded)
        );
        return Ok(ExitCode::from(2));
    };
    let workflow = Arc::new(found.workflow.clone());
    let deciding = setup::decision_instances(&loaded);
    for stage in &args.approve {
        match workflow.stage(stage) {
            None => bail!(
                "--approve {stage}: workflow `{}` has no stage `{stage}`",
                workflow.name()
            ),
            Some(s) if !deciding.contains(&s.uses) => {
                bail!(
                    "--approve {stage}: stage `{stage}` is not an approval stage (it uses `{}`)",
                    s.uses
                )
            }
            Some(_) => {}
        }
    }
    let event = read_event(args.event.as_deref())?;
    let engine = setup::build_engine(&loaded).await?;
    let mut events = engine.subscribe();
    engine.start().await?;
    let trigger = TriggerInfo {
        source: args.source.clone(),
        event: args.event_type.clone(),
        delivery_id: None,
    };
    let run_id = engine.create_run(workflow.clone(), event, trigger).await?;

    let live = crate::escapes_on_stderr();
    let out: Box<dyn Write + Send> = if args.json || live {
        Box::new(std::io::stderr())
    } else {
        Box::new(std::io::stdout())
    };
    // File order reads best: it is how the user wrote the workflow.
    let stages: Vec<String> = workflow.spec.stages.keys().cloned().collect();
    let mut progress = Progress::new(
        format!("{} · run {run_id}", workflow.name()),
        &stages,
        live,
        out,
    );
    let approve: HashSet<String> = args.approve.iter().cloned().collect();
    let ask = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();

    let finished = drive(
        &engine,
        &deciding,
        &run_id,
        &mut events,
        &mut progress,
        &approve,
        ask,
    )
    .await?;
    let snapshot = engine.snapshot(&run_id).await?;
    let view = RunView::from_snapshot(&snapshot, now_millis());
    progress.finish(&view);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&view)?);
    }
    engine.shutdown(Duration::from_secs(5)).await;
    Ok(exit_for(finished))
}

/// Follows one run until it ends: progress, approvals, Ctrl-C. `deciding` names the adapter
/// instances whose stages wait for a person's decision.
async fn drive(
    engine: &Engine,
    deciding: &BTreeSet<String>,
    run_id: &str,
    events: &mut tokio::sync::broadcast::Receiver<Event>,
    progress: &mut Progress,
    approve: &HashSet<String>,
    ask: bool,
) -> Result<RunStatus> {
    let mut ticker = tokio::time::interval(Duration::from_millis(100));
    let mut interrupts = Interrupts::listen()?;
    let mut interrupted = false;
    let mut hinted = HashSet::new();
    let mut asked = HashSet::new();
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Ok(Event::Run { run_id: id, status, .. }) if id == run_id && status.is_terminal() => return Ok(status),
                Ok(event @ Event::Stage { .. }) => {
                    let Event::Stage { run_id: id, stage_id, status, uses, .. } = &event else { continue };
                    if id != run_id {
                        continue;
                    }
                    progress.on_event(&event);
                    if *status == baton_core::StageStatus::Waiting && deciding.contains(uses) && asked.insert(stage_id.clone()) {
                        if approve.contains(stage_id) {
                            let decision = Decision::approved("baton run --approve").to_signal();
                            engine.signal(run_id, stage_id, decision).await?;
                        } else if ask {
                            let decision = prompt(engine, run_id, stage_id, progress).await?;
                            engine.signal(run_id, stage_id, decision.to_signal()).await?;
                        } else if hinted.insert(stage_id.clone()) {
                            eprintln!("stage `{stage_id}` waits for approval: pass `--approve {stage_id}` (it waits until its timeout)");
                        }
                    }
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    let header = engine.snapshot(run_id).await?.header;
                    if header.status.is_terminal() {
                        return Ok(header.status);
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => bail!("the engine stopped"),
            },
            _ = ticker.tick() => progress.tick(),
            _ = interrupts.next() => {
                if interrupted {
                    eprintln!("\ninterrupted again: leaving; `baton resume` finishes the run from the store");
                    std::process::exit(130);
                }
                interrupted = true;
                eprintln!("\ncancelling run {run_id} (Ctrl-C again to leave it to `baton resume`)");
                engine.cancel_run(run_id).await.ok();
            }
        }
    }
}

/// Ctrl-C presses, from one listener for the whole run. A `ctrl_c()` future made anew on each
/// turn of the loop listens only while that turn waits: a press that landed while the loop
/// was handling an event was lost, and the run went on.
struct Interrupts {
    #[cfg(unix)]
    signals: tokio::signal::unix::Signal,
}

impl Interrupts {
    fn listen() -> Result<Self> {
        Ok(Self {
            #[cfg(unix)]
            signals: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
                .context("cannot listen for Ctrl-C")?,
        })
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        self.signals.recv().await;
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Asks on the terminal whether to approve a waiting stage.
async fn prompt(
    engine: &Engine,
    run_id: &str,
    stage_id: &str,
    progress: &mut Progress,
) -> Result<Decision> {
    let snapshot = engine.snapshot(run_id).await?;
    let message = snapshot
        .stages
        .iter()
        .find(|s| s.stage_id == stage_id)
        .and_then(|s| {
            s.input
                .as_ref()?
                .get("message")?
                .as_str()
                .map(str::to_owned)
        })
        .unwrap_or_default();
    progress.tick();
    progress.pause();
    let question = format!(
        "\napprove stage `{stage_id}`{}{message}? [y/N] ",
        if message.is_empty() { "" } else { ": " }
    );
    let answer = tokio::task::spawn_blocking(move || {
        eprint!("{question}");
        let _ = std::io::stderr().flush();
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map(|_| line)
    })
    .await??;
    let by = std::env::var("USER").unwrap_or_else(|_| "terminal".into());
    Ok(if matches!(answer.trim(), "y" | "Y" | "yes") {
        Decision::approved(by)
    } else {
        Decision::rejected(by)
    })
}

/// `baton resume`: finishes every unfinished run in the store.
pub(crate) async fn resume(args: ResumeArgs) -> Result<ExitCode> {
    let config = setup::config_file(args.config.config.as_deref(), None);
    let loaded = match load_or_report(config.as_deref(), &[], args.store.as_deref()) {
        Ok(l) => l,
        Err(code) => return Ok(code),
    };
    let engine = setup::build_engine(&loaded).await?;
    let unfinished = engine.store().unfinished_runs().await?;
    let out: &mut dyn Write = if args.json {
        &mut std::io::stderr()
    } else {
        &mut std::io::stdout()
    };
    if unfinished.is_empty() {
        writeln!(
            out,
            "nothing to resume in {}",
            baton_store::redact_url(&loaded.gateway.store_url())
        )?;
        if args.json {
            println!("[]");
        }
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "resuming {} run{}: {}",
        unfinished.len(),
        if unfinished.len() == 1 { "" } else { "s" },
        unfinished.join(", ")
    )?;
    engine.start().await?;
    let mut worst = RunStatus::Succeeded;
    let mut views = Vec::new();
    for id in &unfinished {
        let header = engine.wait(id).await?;
        let view = RunView::from_snapshot(&engine.snapshot(id).await?, now_millis());
        writeln!(
            out,
            "run {id} ({}) {}{}",
            header.workflow,
            header.status,
            header.message.map(|m| format!(": {m}")).unwrap_or_default()
        )?;
        if header.status != RunStatus::Succeeded {
            worst = header.status;
        }
        views.push(view);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&views)?);
    }
    engine.shutdown(Duration::from_secs(5)).await;
    Ok(exit_for(worst))
}

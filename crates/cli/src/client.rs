//! `baton runs …` and `baton deliveries …`: the REST API of a running `baton serve` (and
//! what `baton relays …` shares with them).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

/// Where the server is and who is calling.
#[derive(Args, Debug, Clone)]
pub(crate) struct Remote {
    /// The server's URL.
    #[arg(
        long,
        env = "BATON_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    url: String,
    /// A bearer token from the server's `[api] tokens`.
    #[arg(long, env = "BATON_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Print the server's JSON answer instead of a summary.
    #[arg(long, global = true)]
    json: bool,
}

/// `baton runs`.
#[derive(Subcommand, Debug)]
pub(crate) enum RunsCommand {
    /// List runs, newest first.
    List {
        /// Only this workflow.
        #[arg(long)]
        workflow: Option<String>,
        /// Only this status (queued, running, succeeded, failed, cancelled).
        #[arg(long)]
        status: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Show one run: stages, statuses, attempts, outputs, external links.
    Show {
        /// Run id.
        run: String,
    },
    /// Cancel a run and its external work.
    Cancel {
        /// Run id.
        run: String,
    },
    /// Run a failed or cancelled stage again (and what follows it).
    Retry {
        /// Run id.
        run: String,
        /// Stage id.
        stage: String,
    },
    /// Approve (or with --reject, reject) a waiting approval stage.
    Approve {
        /// Run id.
        run: String,
        /// Stage id.
        stage: String,
        /// Reject instead of approving.
        #[arg(long)]
        reject: bool,
        /// A comment recorded with the decision.
        #[arg(long)]
        comment: Option<String>,
    },
}

/// `baton deliveries`.
#[derive(Subcommand, Debug)]
pub(crate) enum DeliveriesCommand {
    /// List stored webhook deliveries, newest first.
    List {
        /// Only this source.
        #[arg(long)]
        source: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Show one delivery: headers (without secrets), body, the runs it started.
    Show {
        /// Delivery id.
        id: i64,
    },
    /// Process a stored delivery again.
    Replay {
        /// Delivery id.
        id: i64,
    },
}

/// `baton runs …` arguments.
#[derive(Args, Debug)]
pub(crate) struct RunsArgs {
    #[command(subcommand)]
    command: RunsCommand,
    #[command(flatten)]
    remote: Remote,
}

/// `baton deliveries …` arguments.
#[derive(Args, Debug)]
pub(crate) struct DeliveriesArgs {
    #[command(subcommand)]
    command: DeliveriesCommand,
    #[command(flatten)]
    remote: Remote,
}

/// A client of the REST API.
pub(crate) struct Api {
    http: reqwest::Client,
    remote: Remote,
}

impl Api {
    /// A client for `remote`.
    pub(crate) fn new(remote: Remote) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?;
        Ok(Self { http, remote })
    }

    /// Calls the API; `Ok(Err(code))` is an answer the user must see as an error.
    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Result<Value, ExitCode>> {
        let url = format!("{}{path}", self.remote.url.trim_end_matches('/'));
        let mut request = self.http.request(method, &url);
        if let Some(token) = &self.remote.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach baton at {url}"))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_success() {
            return Ok(Ok(value));
        }
        let message = value["error"]["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| value.to_string());
        eprintln!(
            "baton: {} {}: {message}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        );
        if status == reqwest::StatusCode::UNAUTHORIZED && self.remote.token.is_none() {
            eprintln!("  pass a token with --token or BATON_TOKEN");
        }
        Ok(Err(ExitCode::from(1)))
    }

    /// Prints `value` as JSON with `--json`, else as `summary` prints it.
    pub(crate) fn print(&self, value: &Value, summary: impl FnOnce(&Value)) {
        if self.remote.json {
            println!(
                "{}",
                serde_json::to_string_pretty(value).unwrap_or_default()
            );
        } else {
            summary(value);
        }
    }
}

/// A wall-clock time past, for people (`12.3s ago`).
pub(crate) fn time(ms: &Value) -> String {
    ms.as_i64().map_or_else(
        || "-".into(),
        |ms| {
            format!(
                "{:.1}s ago",
                (baton_store::now_millis() - ms) as f64 / 1000.0
            )
        },
    )
}

/// A string value, or `-`.
pub(crate) fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

/// `baton runs …`.
pub(crate) async fn runs(args: RunsArgs) -> Result<ExitCode> {
    let api = Api::new(args.remote)?;
    use reqwest::Method;
    let answer = match &args.command {
        RunsCommand::List {
            workflow,
            status,
            limit,
        } => {
            let mut path = format!("/api/v1/runs?limit={limit}");
            if let Some(w) = workflow {
                path.push_str(&format!("&workflow={w}"));
            }
            if let Some(s) = status {
                path.push_str(&format!("&status={s}"));
            }
            api.call(Method::GET, &path, None).await?
        }
        RunsCommand::Show { run } => {
            api.call(Method::GET, &format!("/api/v1/runs/{run}"), None)
                .await?
        }
        RunsCommand::Cancel { run } => {
            api.call(Method::POST, &format!("/api/v1/runs/{run}/cancel"), None)
                .await?
        }
        RunsCommand::Retry { run, stage } => {
            api.call(
                Method::POST,
                &format!("/api/v1/runs/{run}/stages/{stage}/retry"),
                None,
            )
            .await?
        }
        RunsCommand::Approve {
            run,
            stage,
            reject,
            comment,
        } => {
            let verb = if *reject { "reject" } else { "approve" };
            let body = comment.as_ref().map(|c| json!({"comment": c}));
            api.call(
                Method::POST,
                &format!("/api/v1/runs/{run}/stages/{stage}/{verb}"),
                body,
            )
            .await?
        }
    };
    let value = match answer {
        Ok(v) => v,
        Err(code) => return Ok(code),
    };
    api.print(&value, |v| match &args.command {
        RunsCommand::List { .. } => {
            println!("{:<34} {:<20} {:<10} created", "RUN", "WORKFLOW", "STATUS");
            for run in v["runs"].as_array().into_iter().flatten() {
                println!(
                    "{:<34} {:<20} {:<10} {}",
                    text(&run["id"]),
                    text(&run["workflow"]),
                    text(&run["status"]),
                    time(&run["created_at"])
                );
            }
        }
        RunsCommand::Show { .. } => {
            println!(
                "run {} ({}) {}{}",
                text(&v["id"]),
                text(&v["workflow"]),
                text(&v["status"]),
                v["message"]
                    .as_str()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            );
            for stage in v["stages"].as_array().into_iter().flatten() {
                let link = stage["external"]["url"]
                    .as_str()
                    .map(|u| format!("  {u}"))
                    .unwrap_or_default();
                let message = stage["message"]
                    .as_str()
                    .map(|m| format!("  {}", m.lines().next().unwrap_or("")))
                    .unwrap_or_default();
                println!(
                    "  {:<20} {:<10} attempt {}{message}{link}",
                    text(&stage["id"]),
                    text(&stage["status"]),
                    stage["attempt"]
                );
                if stage["outputs"].as_object().is_some_and(|o| !o.is_empty()) {
                    println!("    outputs: {}", stage["outputs"]);
                }
            }
        }
        RunsCommand::Cancel { run } => println!("cancelling run {run}"),
        RunsCommand::Retry { run, stage } => println!(
            "retrying stage {stage} of run {run} (attempt {})",
            v["attempt"]
        ),
        RunsCommand::Approve { run, stage, .. } => {
            println!("stage {stage} of run {run}: {}", text(&v["decision"]));
        }
    });
    Ok(ExitCode::SUCCESS)
}

/// `baton deliveries …`.
pub(crate) async fn deliveries(args: DeliveriesArgs) -> Result<ExitCode> {
    let api = Api::new(args.remote)?;
    use reqwest::Method;
    let answer = match &args.command {
        DeliveriesCommand::List { source, limit } => {
            let mut path = format!("/api/v1/deliveries?limit={limit}");
            if let Some(s) = source {
                path.push_str(&format!("&source={s}"));
            }
            api.call(Method::GET, &path, None).await?
        }
        DeliveriesCommand::Show { id } => {
            api.call(Method::GET, &format!("/api/v1/deliveries/{id}"), None)
                .await?
        }
        DeliveriesCommand::Replay { id } => {
            api.call(
                Method::POST,
                &format!("/api/v1/deliveries/{id}/replay"),
                None,
            )
            .await?
        }
    };
    let value = match answer {
        Ok(v) => v,
        Err(code) => return Ok(code),
    };
    api.print(&value, |v| match &args.command {
        DeliveriesCommand::List { .. } => {
            println!(
                "{:<8} {:<12} {:<20} {:<10} {:<5} received",
                "ID", "SOURCE", "EVENT", "STATUS", "RUNS"
            );
            for d in v["deliveries"].as_array().into_iter().flatten() {
                let runs = d["runs"].as_array().map_or(0, Vec::len);
                println!(
                    "{:<8} {:<12} {:<20} {:<10} {:<5} {}",
                    d["id"],
                    text(&d["source"]),
                    text(&d["event"]),
                    text(&d["status"]),
                    runs,
                    time(&d["received_at"])
                );
            }
        }
        DeliveriesCommand::Show { .. } => {
            println!(
                "delivery {} from {} ({}), {}: {}",
                v["id"],
                text(&v["source"]),
                text(&v["event"]),
                text(&v["delivery_id"]),
                text(&v["status"])
            );
            if let Some(m) = v["message"].as_str() {
                println!("  problem: {m}");
            }
            println!("  runs: {}", v["runs"]);
            println!("  headers: {}", v["headers"]);
            println!(
                "  body: {}",
                serde_json::to_string_pretty(&v["body"]).unwrap_or_default()
            );
        }
        DeliveriesCommand::Replay { id } => println!("replaying delivery {id}"),
    });
    Ok(ExitCode::SUCCESS)
}

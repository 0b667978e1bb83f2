//! The command line of serving: `llmlab serve`, `llmlab bench serve` and `llmlab run
//! --metrics-port`, their flags and what they do (main.rs only dispatches here).

use std::path::{Path, PathBuf};

use clap::Args;

use super::bench::{parse_levels, run_level, LoadOptions};
use super::client::loopback_addr;
use super::{load, model_id_for, Limits, ServeOptions, Server};
use crate::script::Session;

#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// tokenizer.json; default: the one saved beside the model (its directory or the parent's).
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,
    /// Sequences decoded together at most (the continuous batch).
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub max_batch: usize,
    /// Sequences waiting for a batch slot at most; beyond it requests get 429 + Retry-After.
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub queue: usize,
    /// Largest request body in bytes (413 beyond).
    #[arg(long, default_value_t = 1 << 20, value_name = "BYTES")]
    pub max_body_bytes: usize,
    /// The model id `/v1/models` lists (default: the model's directory or file name).
    #[arg(long, value_name = "NAME")]
    pub model_name: Option<String>,
    /// A pause before every decoding step, for tests and demonstrations (hidden).
    #[arg(long, default_value_t = 0, value_name = "MS", hide = true)]
    pub step_delay_ms: u64,
}

impl ServerArgs {
    fn limits(&self) -> Limits {
        Limits {
            max_body_bytes: self.max_body_bytes,
            max_batch: self.max_batch,
            queue_capacity: self.queue,
            step_delay: std::time::Duration::from_millis(self.step_delay_ms),
            ..Limits::default()
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// A saved model directory (`m.save(dir)`, a run's `model/`) or a GGUF file.
    #[arg(long, value_name = "DIR_OR_GGUF")]
    pub model: PathBuf,
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Address to listen on; 0.0.0.0 serves other machines too.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Require `Authorization: Bearer KEY` on every route but /, /health and /metrics.
    #[arg(long, value_name = "KEY")]
    pub api_key: Option<String>,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, Clone, Args)]
pub struct BenchServeArgs {
    /// Concurrent clients per measurement, separated by commas.
    #[arg(long, default_value = "1,4,16,64")]
    pub concurrency: String,
    /// Requests per concurrency level.
    #[arg(long, default_value_t = 64)]
    pub requests: usize,
    /// New tokens per request.
    #[arg(long, default_value_t = 32)]
    pub max_tokens: usize,
    #[arg(long, default_value = "Once upon a time")]
    pub prompt: String,
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f64,
    /// A server already running on this machine (http://127.0.0.1:PORT) ...
    #[arg(long, value_name = "URL", conflicts_with = "model")]
    pub url: Option<String>,
    /// ... or a model to serve on 127.0.0.1 for the measurement.
    #[arg(long, value_name = "DIR_OR_GGUF")]
    pub model: Option<PathBuf>,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, Clone, Args)]
pub struct MetricsArgs {
    /// Serve Prometheus metrics at http://HOST:PORT/metrics: training runs' step, loss, lr and
    /// tokens/s (0 = any free port, printed).
    #[arg(long, global = true, value_name = "PORT")]
    pub metrics_port: Option<u16>,
    /// Address for --metrics-port.
    #[arg(long, global = true, default_value = "127.0.0.1", value_name = "HOST")]
    pub metrics_host: String,
}

impl MetricsArgs {
    /// Starts the metrics endpoint when asked.
    pub fn start(&self) -> Result<(), String> {
        if let Some(port) = self.metrics_port {
            let addr = super::serve_metrics(&self.metrics_host, port)?;
            eprintln!("metrics: http://{addr}/metrics");
        }
        Ok(())
    }
}

fn start(
    session: &Session,
    model: &Path,
    host: &str,
    port: u16,
    api_key: Option<String>,
    args: &ServerArgs,
    on_signals: bool,
) -> Result<Server, String> {
    let (model_component, tokenizer) = load(session.host(), model, args.tokenizer.as_deref())?;
    Server::start(
        model_component,
        tokenizer,
        ServeOptions {
            host: host.to_string(),
            port,
            api_key,
            model_id: args
                .model_name
                .clone()
                .unwrap_or_else(|| model_id_for(model)),
            limits: args.limits(),
            on_signals,
        },
    )
}

/// `llmlab serve`: serves until SIGTERM or Ctrl-C, then finishes what is in flight.
pub fn serve(session: &Session, args: &ServeArgs) -> Result<(), String> {
    let mut server = start(
        session,
        &args.model,
        &args.host,
        args.port,
        args.api_key.clone(),
        &args.server,
        true,
    )?;
    eprintln!(
        "serving {} at {} (playground {}/, metrics {}/metrics); SIGTERM or Ctrl-C stops",
        args.model.display(),
        server.url(),
        server.url(),
        server.url()
    );
    server.wait()?;
    eprintln!("serve: stopped");
    Ok(())
}

/// `llmlab bench serve`: one JSON line per concurrency level.
pub fn bench(session: &Session, args: &BenchServeArgs) -> Result<(), String> {
    let levels = parse_levels(&args.concurrency)?;
    if args.requests == 0 {
        return Err("--requests must be at least 1".into());
    }
    let options = LoadOptions {
        requests: args.requests,
        max_tokens: args.max_tokens,
        prompt: args.prompt.clone(),
        temperature: args.temperature,
    };
    let (addr, mut server) = match (&args.url, &args.model) {
        (Some(url), None) => (loopback_addr(url)?, None),
        (None, Some(model)) => {
            let server = start(session, model, "127.0.0.1", 0, None, &args.server, false)?;
            (server.addr(), Some(server))
        }
        _ => return Err("bench serve: give --model DIR_OR_GGUF (served here for the measurement) or --url http://127.0.0.1:PORT".into()),
    };
    // One untimed request first: page faults and allocator warm-up are not the server's speed.
    let _ = run_level(
        addr,
        1,
        &LoadOptions {
            requests: 1,
            ..options.clone()
        },
    );
    for concurrency in levels {
        let mut line = run_level(addr, concurrency, &options);
        line["max_batch"] = args.server.max_batch.into();
        if let Some(model) = &args.model {
            line["model"] = model.display().to_string().into();
        }
        println!("{line}");
    }
    if let Some(server) = server.as_mut() {
        server.stop()?;
    }
    Ok(())
}

//! `llmlab serve` and `serve(m, tok, #{..})`: an OpenAI-compatible HTTP server (axum on tokio)
//! over one model, with continuous batching, Prometheus metrics and a web playground
//! (docs/serving.md).
//!
//! A [`Server`] runs on its own threads: the tokio runtime for HTTP, and the scheduler thread
//! that owns the decoding batch (scheduler.rs). It is stopped gracefully: new generation
//! requests get 503, everything accepted finishes and is delivered, then the threads end.
//!
//! * routes.rs — the routes and the layers around them (key, request counter, body limit)
//! * openai.rs — request and response JSON; errors.rs — OpenAI's error JSON
//! * generation.rs — one request's sequences and their text; text.rs — detokenizing, stops
//! * scheduler.rs — continuous batching; sampling.rs — choosing tokens
//! * limits.rs — the server's limits and parameter checks; chat_prompt.rs — chat templates
//! * metrics.rs — Prometheus; playground.rs — the page at `/`
//! * client.rs, bench.rs — `llmlab bench serve`, the load test; cli.rs — the command line

pub mod bench;
mod chat_prompt;
pub mod cli;
pub mod client;
mod errors;
mod generation;
pub mod limits;
pub mod metrics;
mod openai;
mod playground;
mod routes;
mod sampling;
mod scheduler;
mod text;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use llmlab_plugin_api::{Model, Tokenizer};
use tokio::sync::oneshot;

pub use limits::Limits;

use routes::App;
use scheduler::{Queue, Scheduler};

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub host: String,
    /// 0: any free port (see [`Server::addr`]).
    pub port: u16,
    pub api_key: Option<String>,
    /// The id `/v1/models` lists.
    pub model_id: String,
    pub limits: Limits,
    /// Stop gracefully on SIGTERM and Ctrl-C (the command line; not the REPL).
    pub on_signals: bool,
}

pub struct Server {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<Result<(), String>>>,
}

impl Server {
    /// Binds `host:port` and serves `model` until [`Server::stop`] (or a signal, with
    /// `on_signals`); returns once the port is bound.
    pub fn start(
        model: Arc<dyn Model>,
        tokenizer: Arc<dyn Tokenizer>,
        options: ServeOptions,
    ) -> Result<Server, String> {
        if options.limits.max_batch == 0 || options.limits.queue_capacity == 0 {
            return Err("serve: max_batch and queue must be at least 1".into());
        }
        metrics::handle()?;
        metrics::register_serving();
        let queue = Arc::new(Queue::new(options.limits.queue_capacity));
        let app = Arc::new(App {
            model: model.clone(),
            model_id: options.model_id.clone(),
            created: generation::unix_seconds(),
            queue: queue.clone(),
            limits: options.limits.clone(),
            api_key: options.api_key.clone().filter(|k| !k.is_empty()),
            chat: chat_prompt::ChatPrompt::for_tokenizer(tokenizer.as_ref()),
            tokenizer,
        });
        let scheduler = Scheduler {
            kv_bytes_per_token: scheduler::kv_bytes_per_token(&model.config()),
            model,
            queue: queue.clone(),
            max_batch: options.limits.max_batch,
            step_delay: options.limits.step_delay,
        };
        let (bound_tx, bound_rx) = std::sync::mpsc::channel::<Result<SocketAddr, String>>();
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let address = format!("{}:{}", options.host, options.port);
        let on_signals = options.on_signals;
        let thread = std::thread::Builder::new()
            .name("llmlab-serve".into())
            .spawn(move || -> Result<(), String> {
                let runtime = runtime()?;
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::bind(&address).await {
                        Ok(l) => l,
                        Err(e) => {
                            let message = format!("serve: cannot listen on {address}: {e}");
                            let _ = bound_tx.send(Err(message.clone()));
                            return Err(message);
                        }
                    };
                    let _ = bound_tx.send(listener.local_addr().map_err(|e| e.to_string()));
                    let batcher = std::thread::Builder::new()
                        .name("llmlab-batch".into())
                        .spawn(move || scheduler.run())
                        .map_err(|e| format!("serve: cannot start the scheduler thread: {e}"))?;
                    let drain_queue = queue.clone();
                    let stopping = async move {
                        wait_for_stop(shutdown_rx, on_signals).await;
                        // New generation requests get 503 from now on; queued ones still run.
                        drain_queue.close();
                    };
                    let served = axum::serve(listener, routes::router(app))
                        .with_graceful_shutdown(stopping)
                        .await
                        .map_err(|e| format!("serve: {e}"));
                    queue.close();
                    let _ = tokio::task::spawn_blocking(move || batcher.join()).await;
                    served
                })
            })
            .map_err(|e| format!("serve: cannot start the server thread: {e}"))?;
        match bound_rx.recv() {
            Ok(Ok(addr)) => Ok(Server {
                addr,
                shutdown: Some(shutdown_tx),
                thread: Some(thread),
            }),
            Ok(Err(message)) => {
                let _ = thread.join();
                Err(message)
            }
            Err(_) => Err(match thread.join() {
                Ok(Err(message)) => message,
                _ => "serve: the server thread ended before binding".into(),
            }),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops taking requests, finishes those accepted, and returns when all are delivered.
    pub fn stop(&mut self) -> Result<(), String> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        self.wait()
    }

    /// Blocks until the server has stopped (by [`Server::stop`] or a signal).
    pub fn wait(&mut self) -> Result<(), String> {
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .map_err(|_| "serve: the server thread panicked".to_string())?,
            None => Ok(()),
        }
    }

    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("llmlab-http")
        .enable_all()
        .build()
        .map_err(|e| format!("serve: cannot start the tokio runtime: {e}"))
}

async fn wait_for_stop(shutdown: oneshot::Receiver<()>, on_signals: bool) {
    if !on_signals {
        let _ = shutdown.await;
        return;
    }
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = shutdown => {}
        _ = terminate => eprintln!("serve: SIGTERM: finishing the requests in flight, then stopping"),
        _ = tokio::signal::ctrl_c() => eprintln!("serve: Ctrl-C: finishing the requests in flight, then stopping"),
    }
}

/// Serves `GET /metrics` on `host:port` for the life of the process (`llmlab run
/// --metrics-port`): a training run's step, loss, lr and tokens/s as gauges.
pub fn serve_metrics(host: &str, port: u16) -> Result<SocketAddr, String> {
    metrics::handle()?;
    let address = format!("{host}:{port}");
    let (bound_tx, bound_rx) = std::sync::mpsc::channel::<Result<SocketAddr, String>>();
    std::thread::Builder::new()
        .name("llmlab-metrics".into())
        .spawn(move || {
            let runtime = match runtime() {
                Ok(r) => r,
                Err(e) => {
                    let _ = bound_tx.send(Err(e));
                    return;
                }
            };
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::bind(&address).await {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = bound_tx.send(Err(format!(
                            "--metrics-port: cannot listen on {address}: {e}"
                        )));
                        return;
                    }
                };
                let _ = bound_tx.send(listener.local_addr().map_err(|e| e.to_string()));
                let _ = axum::serve(listener, routes::metrics_router()).await;
            });
        })
        .map_err(|e| format!("--metrics-port: cannot start its thread: {e}"))?;
    bound_rx
        .recv()
        .map_err(|_| "--metrics-port: the metrics thread ended".to_string())?
}

/// The id a model loaded from `path` is served under: its file or directory name, or its
/// parent's for the `model` directory a run saves (`runs/quickstart-…/model` → `quickstart-…`).
pub fn model_id_for(path: &Path) -> String {
    let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().to_string());
    match name(path) {
        Some(n) if n == "model" => path
            .canonicalize()
            .ok()
            .and_then(|p| p.parent().and_then(name))
            .unwrap_or(n),
        Some(n) => n,
        None => "llmlab".into(),
    }
}

/// The tokenizer saved beside a model: `tokenizer.json` in the model's directory (or the GGUF's
/// directory), else in its parent (a run directory keeps it next to `model/`).
pub fn tokenizer_beside(model: &Path) -> Option<std::path::PathBuf> {
    let dir = if model.is_dir() {
        model.to_path_buf()
    } else {
        model.parent()?.to_path_buf()
    };
    [
        dir.join("tokenizer.json"),
        dir.parent()?.join("tokenizer.json"),
    ]
    .into_iter()
    .find(|p| p.is_file())
}

/// A served model and its tokenizer.
pub type ServedModel = (Arc<dyn Model>, Arc<dyn Tokenizer>);

/// The model at `model` (a saved directory or a GGUF file) and its tokenizer (`tokenizer`, or
/// the one saved beside the model), loaded by whichever plugins accept them.
pub fn load(
    host: &crate::script::Host,
    model: &Path,
    tokenizer: Option<&Path>,
) -> Result<ServedModel, String> {
    use llmlab_plugin_api::{Instance, Kind};
    if !model.exists() {
        return Err(format!(
            "--model {}: no such file or directory (give a saved model directory or a .gguf file)",
            model.display()
        ));
    }
    let tokenizer_path = match tokenizer {
        Some(path) => path.to_path_buf(),
        None => tokenizer_beside(model).ok_or_else(|| {
            format!(
                "no tokenizer.json beside {} (nor in its parent directory): give --tokenizer FILE",
                model.display()
            )
        })?,
    };
    let model: Arc<dyn Model> = match host.load(Kind::Model, &model.to_string_lossy()) {
        Ok(Instance::Model(m)) => Arc::from(m),
        Ok(_) => return Err(format!("{}: not a model", model.display())),
        Err(e) => return Err(e.to_string()),
    };
    let tokenizer: Arc<dyn Tokenizer> =
        match host.load(Kind::Tokenizer, &tokenizer_path.to_string_lossy()) {
            Ok(Instance::Tokenizer(t)) => Arc::from(t),
            Ok(_) => return Err(format!("{}: not a tokenizer", tokenizer_path.display())),
            Err(e) => return Err(e.to_string()),
        };
    check_vocab(model.as_ref(), tokenizer.as_ref())?;
    Ok((model, tokenizer))
}

/// A tokenizer whose ids run past the model's vocabulary would index out of its embedding.
pub fn check_vocab(model: &dyn Model, tokenizer: &dyn Tokenizer) -> Result<(), String> {
    if tokenizer.vocab_size() > model.vocab_size() {
        return Err(format!(
            "the tokenizer has {} tokens but the model's vocab_size is {}: they do not belong together",
            tokenizer.vocab_size(),
            model.vocab_size()
        ));
    }
    Ok(())
}

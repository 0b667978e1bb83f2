//! Serving from a script or the REPL: `let s = serve(m, tok, #{ port: 8080 })` starts the
//! OpenAI-compatible server (crate::serve) in the background and returns at once, so the REPL
//! stays usable; `s.url()`, and `s.stop()` (or `stop(s)`) finishes the requests in flight and
//! stops it. Options: `port` (8080; 0 = any free port), `host` ("127.0.0.1"), `api_key`,
//! `max_batch` (16), `queue` (256), `max_body_bytes` (1 MiB), `model_name` (the model's name).

use std::sync::{Arc, Mutex};

use rhai::{Engine, Map, INT};

use super::model::ModelHandle;
use super::tokenizer::TokenizerHandle;
use super::{script_error, ScriptResult};
use crate::serve::{check_vocab, Limits, ServeOptions, Server};

/// A running (or stopped) server in scripts; clones refer to the same server.
#[derive(Clone)]
pub struct ServerHandle {
    server: Arc<Mutex<Option<Server>>>,
    url: String,
}

const KEYS: &[&str] = &[
    "port",
    "host",
    "api_key",
    "max_batch",
    "queue",
    "max_body_bytes",
    "model_name",
];

fn int_option(options: &Map, key: &str, default: usize, max: usize) -> ScriptResult<usize> {
    match options.get(key) {
        None => Ok(default),
        Some(value) => value
            .as_int()
            .ok()
            .and_then(|i| usize::try_from(i).ok())
            .filter(|&i| i <= max)
            .ok_or_else(|| {
                script_error(format!(
                    "serve: `{key}` must be a whole number from 0 to {max}, got {value}"
                ))
            }),
    }
}

fn string_option(options: &Map, key: &str) -> ScriptResult<Option<String>> {
    match options.get(key) {
        None => Ok(None),
        Some(value) => value
            .clone()
            .into_string()
            .map(Some)
            .map_err(|_| script_error(format!("serve: `{key}` must be a string, got {value}"))),
    }
}

fn start(
    model: &ModelHandle,
    tokenizer: &TokenizerHandle,
    options: Map,
) -> ScriptResult<ServerHandle> {
    if let Some(key) = options.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(script_error(format!(
            "serve: unknown option `{key}`; accepted: {}",
            KEYS.join(", ")
        )));
    }
    let defaults = Limits::default();
    let limits = Limits {
        max_batch: int_option(&options, "max_batch", defaults.max_batch, 4096)?,
        queue_capacity: int_option(&options, "queue", defaults.queue_capacity, 1 << 20)?,
        max_body_bytes: int_option(&options, "max_body_bytes", defaults.max_body_bytes, 1 << 30)?,
        ..defaults
    };
    let tokenizer: Arc<dyn llmlab_plugin_api::Tokenizer> = Arc::from(tokenizer.read().clone_box());
    check_vocab(model.0.as_ref(), tokenizer.as_ref()).map_err(script_error)?;
    let server = Server::start(
        model.0.clone(),
        tokenizer,
        ServeOptions {
            host: string_option(&options, "host")?.unwrap_or_else(|| "127.0.0.1".into()),
            port: int_option(&options, "port", 8080, u16::MAX as usize)? as u16,
            api_key: string_option(&options, "api_key")?,
            model_id: string_option(&options, "model_name")?
                .unwrap_or_else(|| model.0.name().to_string()),
            limits,
            on_signals: false,
        },
    )
    .map_err(script_error)?;
    let url = server.url();
    println!("serving at {url} (playground {url}/); s.stop() stops it");
    Ok(ServerHandle {
        server: Arc::new(Mutex::new(Some(server))),
        url,
    })
}

fn stop(handle: &mut ServerHandle) -> ScriptResult<()> {
    let server = handle
        .server
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    match server {
        Some(mut server) => server.stop().map_err(script_error),
        None => Ok(()),
    }
}

fn running(handle: &ServerHandle) -> bool {
    handle
        .server
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .is_some_and(Server::is_running)
}

pub fn register(engine: &mut Engine) {
    engine.register_type_with_name::<ServerHandle>("Server");
    engine.register_fn(
        "serve",
        |m: ModelHandle, tok: TokenizerHandle, options: Map| start(&m, &tok, options),
    );
    engine.register_fn("serve", |m: ModelHandle, tok: TokenizerHandle| {
        start(&m, &tok, Map::new())
    });
    engine.register_fn("stop", stop);
    engine.register_fn("url", |s: &mut ServerHandle| s.url.clone());
    engine.register_fn("port", |s: &mut ServerHandle| {
        s.url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse::<INT>().ok())
            .unwrap_or(0)
    });
    engine.register_fn("is_running", |s: &mut ServerHandle| running(s));
    engine.register_fn("to_string", |s: &mut ServerHandle| {
        let state = if running(s) { "running" } else { "stopped" };
        format!("server at {} ({state})", s.url)
    });
}

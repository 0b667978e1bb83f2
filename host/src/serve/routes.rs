//! The HTTP routes: `POST /v1/completions`, `POST /v1/chat/completions` (JSON, or server-sent
//! events with `stream: true`), `GET /v1/models`, `GET /health`, `GET /metrics`, the playground
//! at `/`; and the layers around them: the API key (all routes but `/`, `/health` and
//! `/metrics`), the request counter by route and status, the body size limit.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use llmlab_plugin_api::serde::de::DeserializeOwned;
use llmlab_plugin_api::serde_json::{self, json, Value};
use llmlab_plugin_api::{Model, Tokenizer};

use super::chat_prompt::ChatPrompt;
use super::errors::ApiError;
use super::generation::{Endpoint, Generation, Update};
use super::limits::{Decoding, Limits, RawDecoding};
use super::metrics;
use super::openai::{
    chat_logprobs, completion_logprobs, models_list, ChatRequest, CompletionRequest, StreamOptions,
};
use super::playground::PLAYGROUND_HTML;
use super::scheduler::Queue;

/// What every handler shares.
pub struct App {
    pub model: Arc<dyn Model>,
    pub tokenizer: Arc<dyn Tokenizer>,
    /// The id `/v1/models` lists and responses carry.
    pub model_id: String,
    pub created: u64,
    pub queue: Arc<Queue>,
    pub limits: Limits,
    pub api_key: Option<String>,
    pub chat: ChatPrompt,
}

pub fn router(app: Arc<App>) -> Router {
    let body_limit = app.limits.max_body_bytes;
    Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/", get(playground))
        .route_layer(middleware::from_fn_with_state(app.clone(), require_key))
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn(count_requests))
        .with_state(app)
}

/// A server with only `GET /metrics` (training runs' `--metrics-port`).
pub fn metrics_router() -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/health", get(health))
        .layer(middleware::from_fn(count_requests))
}

async fn count_requests(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let response = next.run(request).await;
    metrics::request(&route, response.status().as_u16());
    response
}

async fn require_key(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let Some(key) = &app.api_key else {
        return next.run(request).await;
    };
    // The playground page itself is public; it sends the key the user types with each call.
    if request.uri().path() == "/" {
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given.is_some_and(|g| constant_time_eq(g.trim().as_bytes(), key.as_bytes())) {
        next.run(request).await
    } else {
        ApiError::unauthorized().into_response()
    }
}

/// Comparison whose time does not depend on where the first difference is.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found(uri.path())
}

async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

async fn metrics_text() -> Response {
    match metrics::render() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(message) => ApiError::model_failed(message).into_response(),
    }
}

async fn playground() -> Html<&'static str> {
    Html(PLAYGROUND_HTML)
}

async fn models(State(app): State<Arc<App>>) -> Json<Value> {
    Json(models_list(&app.model_id, app.created))
}

/// The body as `T`: 413 over the size limit; 400 naming the field for unknown fields, wrong
/// types and bad JSON.
fn parse_body<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<T, ApiError> {
    let bytes = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::body_too_large(limit)
        } else {
            ApiError::bad_body(format!("cannot read the request body: {rejection}"))
        }
    })?;
    let mut de = serde_json::Deserializer::from_slice(&bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        let mut message = inner.to_string();
        if message.contains("untagged enum OneOrMany") {
            message = "must be a string or an array of strings".into();
        }
        if path == "." || inner.is_syntax() || inner.is_eof() {
            ApiError::bad_body(format!(
                "the request body is not valid JSON for this route: {message}"
            ))
        } else {
            ApiError::invalid(path.clone(), format!("{path}: {message}"))
        }
    })?;
    de.end()
        .map_err(|e| ApiError::bad_body(format!("trailing characters after the JSON: {e}")))?;
    Ok(value)
}

/// Prompt ids: the text encoded, an empty one started from end-of-text; checked to fit the
/// context with `max_tokens`.
fn encode_prompts(
    app: &App,
    texts: &[String],
    decoding: &Decoding,
    prompt_param: &str,
) -> Result<Vec<Vec<u32>>, ApiError> {
    let eot = app.tokenizer.end_of_text().ok();
    texts
        .iter()
        .map(|text| {
            let mut ids = app
                .tokenizer
                .encode(text)
                .map_err(|e| ApiError::invalid(prompt_param, format!("cannot tokenize: {e}")))?;
            if ids.is_empty() {
                ids = eot.into_iter().collect();
            }
            if ids.is_empty() {
                return Err(ApiError::invalid(
                    prompt_param,
                    "the prompt is empty and the tokenizer has no end-of-text token to start from",
                ));
            }
            app.limits.check_context(
                ids.len(),
                decoding.max_tokens,
                app.model.ctx_len(),
                prompt_param,
            )?;
            Ok(ids)
        })
        .collect()
}

fn stop_tokens(app: &App, endpoint: Endpoint) -> Vec<u32> {
    let mut tokens: Vec<u32> = app.tokenizer.end_of_text().ok().into_iter().collect();
    if endpoint == Endpoint::Chat {
        if let Some(marker) = app.chat.end_of_turn() {
            tokens.extend(app.tokenizer.token_to_id(marker));
        }
    }
    tokens
}

async fn completions(State(app): State<Arc<App>>, body: Result<Bytes, BytesRejection>) -> Response {
    let result = async {
        let request: CompletionRequest = parse_body(body, app.limits.max_body_bytes)?;
        if request.echo == Some(true) {
            return Err(ApiError::invalid(
                "echo",
                "echo is not supported by this server",
            ));
        }
        let prompts = request.prompt.into_vec();
        if prompts.is_empty() {
            return Err(ApiError::invalid(
                "prompt",
                "prompt must not be an empty list",
            ));
        }
        let decoding = app.limits.decoding(
            RawDecoding {
                max_tokens: request.max_tokens,
                temperature: request.temperature,
                top_p: request.top_p,
                top_k: request.top_k,
                stop: request.stop.map(|s| s.into_vec()),
                seed: request.seed,
                n: request.n,
                logprobs: request.logprobs,
                presence_penalty: request.presence_penalty,
                frequency_penalty: request.frequency_penalty,
            },
            prompts.len(),
        )?;
        let ids = encode_prompts(&app, &prompts, &decoding, "prompt")?;
        let stop = stop_tokens(&app, Endpoint::Completions);
        let delivery = Delivery::of(request.stream, request.stream_options);
        start_and_respond(&app, Endpoint::Completions, ids, &decoding, stop, delivery).await
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}

async fn chat_completions(
    State(app): State<Arc<App>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        let request: ChatRequest = parse_body(body, app.limits.max_body_bytes)?;
        let prompt = app.chat.render(&request.messages)?;
        let logprobs = match (request.logprobs, request.top_logprobs) {
            (Some(true), top) => Some(top.unwrap_or(0)),
            (_, Some(_)) => {
                return Err(ApiError::invalid(
                    "top_logprobs",
                    "top_logprobs needs logprobs: true",
                ))
            }
            _ => None,
        };
        let mut decoding = app.limits.decoding(
            RawDecoding {
                max_tokens: request.max_completion_tokens.or(request.max_tokens),
                temperature: request.temperature,
                top_p: request.top_p,
                top_k: request.top_k,
                stop: request.stop.map(|s| s.into_vec()),
                seed: request.seed,
                n: request.n,
                logprobs,
                presence_penalty: request.presence_penalty,
                frequency_penalty: request.frequency_penalty,
            },
            1,
        )?;
        if request.max_completion_tokens.is_none() && request.max_tokens.is_none() {
            // Chat has no small default: the reply runs to end-of-turn or the context's end.
            decoding.max_tokens = 0;
        }
        let stop = stop_tokens(&app, Endpoint::Chat);
        // An end-of-turn marker that is no single token ends the reply as text.
        if let Some(marker) = app.chat.end_of_turn() {
            if app.tokenizer.token_to_id(marker).is_none() {
                decoding.stop.push(marker.to_string());
            }
        }
        let ids = if decoding.max_tokens == 0 {
            let ids = encode_prompts(
                &app,
                &[prompt],
                &Decoding {
                    max_tokens: 1,
                    ..decoding.clone()
                },
                "messages",
            )?;
            decoding.max_tokens = app.model.ctx_len() - ids[0].len();
            ids
        } else {
            encode_prompts(&app, &[prompt], &decoding, "messages")?
        };
        let delivery = Delivery::of(request.stream, request.stream_options);
        start_and_respond(&app, Endpoint::Chat, ids, &decoding, stop, delivery).await
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}

/// How a generation's answer goes back: one JSON body, or a stream of chunks (with a usage
/// chunk last when asked).
struct Delivery {
    stream: bool,
    include_usage: bool,
}

impl Delivery {
    fn of(stream: Option<bool>, options: Option<StreamOptions>) -> Delivery {
        Delivery {
            stream: stream == Some(true),
            include_usage: options.is_some_and(|o| o.include_usage),
        }
    }
}

/// Both generation endpoints' tail: queues the request's sequences (429/503 when they cannot
/// be), then answers with the whole response as JSON or the stream of chunks.
async fn start_and_respond(
    app: &Arc<App>,
    endpoint: Endpoint,
    ids: Vec<Vec<u32>>,
    decoding: &Decoding,
    stop_tokens: Vec<u32>,
    delivery: Delivery,
) -> Result<Response, ApiError> {
    let generation = Generation::start(
        endpoint,
        ids,
        decoding,
        stop_tokens,
        &app.queue,
        app.tokenizer.clone(),
    )?;
    if delivery.stream {
        return Ok(stream_response(
            app.clone(),
            generation,
            delivery.include_usage,
        ));
    }
    Ok(match collect(app, generation).await {
        Ok(body) => Json(body).into_response(),
        Err(error) => error.into_response(),
    })
}

async fn collect(app: &App, mut generation: Generation) -> Result<Value, ApiError> {
    let n = generation.choice_count();
    let mut logprobs: Vec<Vec<_>> = vec![Vec::new(); n];
    let mut finish = vec![None; n];
    while let Some(update) = generation.next().await {
        let update = update?;
        logprobs[update.index].extend(update.logprobs);
        if update.finish.is_some() {
            finish[update.index] = update.finish;
        }
    }
    let choices: Vec<Value> = (0..n)
        .map(|i| {
            let text = generation.text(i);
            let reason = finish[i].map(|f| f.as_str());
            match generation.endpoint {
                Endpoint::Completions => json!({
                    "text": text,
                    "index": i,
                    "logprobs": generation.want_logprobs.then(|| completion_logprobs(&logprobs[i], 0)),
                    "finish_reason": reason,
                }),
                Endpoint::Chat => json!({
                    "index": i,
                    "message": { "role": "assistant", "content": text, "refusal": Value::Null },
                    "logprobs": generation.want_logprobs.then(|| chat_logprobs(&logprobs[i])),
                    "finish_reason": reason,
                }),
            }
        })
        .collect();
    let object = match generation.endpoint {
        Endpoint::Completions => "text_completion",
        Endpoint::Chat => "chat.completion",
    };
    Ok(json!({
        "id": generation.id,
        "object": object,
        "created": generation.created,
        "model": app.model_id,
        "system_fingerprint": Value::Null,
        "choices": choices,
        "usage": generation.usage(),
    }))
}

/// One streamed chunk in the endpoint's shape; `offset` is the choice's text offset (for
/// completions' logprobs).
fn chunk(app: &App, generation: &Generation, update: &Update, offset: usize) -> Value {
    let reason = update.finish.map(|f| f.as_str());
    let (object, choice) = match generation.endpoint {
        Endpoint::Completions => (
            "text_completion",
            json!({
                "text": update.text,
                "index": update.index,
                "logprobs": generation.want_logprobs.then(|| completion_logprobs(&update.logprobs, offset)),
                "finish_reason": reason,
            }),
        ),
        Endpoint::Chat => {
            let delta = if update.finish.is_some() && update.text.is_empty() {
                json!({})
            } else {
                json!({ "content": update.text })
            };
            (
                "chat.completion.chunk",
                json!({
                    "index": update.index,
                    "delta": delta,
                    "logprobs": generation.want_logprobs.then(|| chat_logprobs(&update.logprobs)),
                    "finish_reason": reason,
                }),
            )
        }
    };
    envelope(app, generation, object, vec![choice])
}

fn envelope(app: &App, generation: &Generation, object: &str, choices: Vec<Value>) -> Value {
    json!({
        "id": generation.id,
        "object": object,
        "created": generation.created,
        "model": app.model_id,
        "system_fingerprint": Value::Null,
        "choices": choices,
    })
}

fn sse_event(value: &Value) -> Event {
    Event::default().data(value.to_string())
}

/// Server-sent events: chat opens each choice with the assistant role; then one chunk per
/// update, a usage chunk when asked, `data: [DONE]`. The stream is fed by a task; when the client
/// goes away the stream is dropped, the task's sends fail, it drops the [`Generation`], and the
/// scheduler frees the slots.
fn stream_response(app: Arc<App>, mut generation: Generation, include_usage: bool) -> Response {
    let (sender, receiver) = tokio::sync::mpsc::channel::<Event>(64);
    tokio::spawn(async move {
        if generation.endpoint == Endpoint::Chat {
            for index in 0..generation.choice_count() {
                let choice = json!({
                    "index": index,
                    "delta": { "role": "assistant", "content": "" },
                    "logprobs": Value::Null,
                    "finish_reason": Value::Null,
                });
                let first = envelope(&app, &generation, "chat.completion.chunk", vec![choice]);
                if sender.send(sse_event(&first)).await.is_err() {
                    return;
                }
            }
        }
        let mut offsets = vec![0usize; generation.choice_count()];
        while let Some(update) = generation.next().await {
            let event = match update {
                Ok(update) => {
                    if update.text.is_empty()
                        && update.logprobs.is_empty()
                        && update.finish.is_none()
                    {
                        continue;
                    }
                    let value = chunk(&app, &generation, &update, offsets[update.index]);
                    offsets[update.index] += update.text.len();
                    sse_event(&value)
                }
                Err(error) => {
                    let _ = sender.send(sse_event(&error.body())).await;
                    return;
                }
            };
            if sender.send(event).await.is_err() {
                return;
            }
        }
        if include_usage {
            let object = match generation.endpoint {
                Endpoint::Completions => "text_completion",
                Endpoint::Chat => "chat.completion.chunk",
            };
            let mut last = envelope(&app, &generation, object, Vec::new());
            last["usage"] = json!(generation.usage());
            let _ = sender.send(sse_event(&last)).await;
        }
        let _ = sender.send(Event::default().data("[DONE]")).await;
    });
    let events = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver
            .recv()
            .await
            .map(|event| (Ok::<_, std::convert::Infallible>(event), receiver))
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

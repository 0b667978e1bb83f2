//! `llmlab serve` end to end: a real server process over a small untrained GPT and a trained BPE
//! tokenizer (made once per test binary by a script), driven over HTTP from Rust. The official
//! `openai` Python client's requests and our responses were recorded in tests/fixtures/openai/
//! (record.py beside them); here the recorded requests are replayed and the answers must keep
//! the recorded shape and SSE framing, without Python.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use llmlab_e2e::{llmlab_binary, llmlab_in, repo_root, stderr, stdout};
use llmlab_plugin_api::serde_json::{self, json, Value};

#[path = "../../host/src/serve/client.rs"]
#[allow(dead_code)]
mod client;

/// A tokenizer and an untrained 2-layer GPT with a 256-token context, saved once.
fn fixture_model() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("llmlab-serve-e2e-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("make.rhai");
        std::fs::write(
            &script,
            r#"
let tok = tokenizer("bpe", #{ vocab_size: 300 });
tok.train(corpus("stories", #{ bytes: 40000, seed: 3 }));
tok.save(setting("out", "") + "/tokenizer.json");
let m = model("gpt", #{ vocab_size: tok.vocab_size(), n_layer: 2, n_head: 4, d_model: 64, ctx: 256,
                        norm: "rms", pos: "rope", mlp: "swiglu", seed: 5 });
m.save(setting("out", "") + "/model");
"#,
        )
        .unwrap();
        let out_setting = format!("out={}", dir.display());
        let output = llmlab_in(
            &dir,
            &["run", script.to_str().unwrap(), "--set", &out_setting],
            b"",
        );
        assert!(
            output.status.success(),
            "making the model failed:\n{}{}",
            stdout(&output),
            stderr(&output)
        );
        dir
    })
}

/// A running `llmlab serve`, killed when dropped.
struct ServeProcess {
    child: Child,
    addr: SocketAddr,
    stderr: std::sync::Mutex<std::sync::mpsc::Receiver<String>>,
}

impl ServeProcess {
    fn start(extra: &[&str]) -> ServeProcess {
        ServeProcess::start_model(&fixture_model().join("model"), extra)
    }

    fn start_model(model: &Path, extra: &[&str]) -> ServeProcess {
        let dir = fixture_model();
        let mut child = Command::new(llmlab_binary())
            .args(["serve", "--model", model.to_str().unwrap(), "--port", "0"])
            .args(extra)
            .current_dir(dir)
            .env_remove("LLMLAB_PLUGIN_PATH")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn llmlab serve");
        let (lines_tx, lines_rx) = std::sync::mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let addr = loop {
            let line = lines_rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("llmlab serve did not say where it listens"));
            if let Some(rest) = line.split(" at http://").nth(1) {
                let addr = rest.split_whitespace().next().unwrap();
                break addr.parse().unwrap();
            }
        };
        ServeProcess {
            child,
            addr,
            stderr: std::sync::Mutex::new(lines_rx),
        }
    }

    fn post(&self, path: &str, body: &Value) -> (u16, Value, client::Response) {
        let response = client::request(self.addr, "POST", path, &body.to_string()).unwrap();
        let value = serde_json::from_str(&response.body).unwrap_or(Value::Null);
        (response.status, value, response)
    }

    fn get(&self, path: &str) -> client::Response {
        client::request(self.addr, "GET", path, "").unwrap()
    }

    /// A streamed request's raw body (de-chunked), the SSE text as the client receives it.
    fn stream_raw(&self, path: &str, body: &Value) -> String {
        let response = client::request(self.addr, "POST", path, &body.to_string()).unwrap();
        assert_eq!(response.status, 200, "{}", response.body);
        assert!(response
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/event-stream")));
        response.body
    }

    fn metrics(&self) -> prometheus_parse::Scrape {
        let text = self.get("/metrics").body;
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
            .unwrap_or_else(|e| panic!("/metrics does not parse as Prometheus text: {e}\n{text}"))
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `data:` payloads of an SSE body; asserts the framing (every event one `data:` line and a
/// blank line; keep-alive comments allowed).
fn sse_events(raw: &str) -> Vec<String> {
    assert!(
        raw.ends_with("\n\n"),
        "an SSE body ends with a blank line: {raw:?}"
    );
    raw.split("\n\n")
        .filter(|e| !e.is_empty() && !e.starts_with(':'))
        .map(|event| {
            let data = event
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("event without `data: `: {event:?}"));
            assert!(!data.contains('\n'), "one data line per event: {event:?}");
            data.to_string()
        })
        .collect()
}

/// The shape of a JSON value: objects' keys with their values' shapes, arrays by their first
/// element, scalars by type (numbers as one type).
fn shape(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (k.clone(), shape(v))).collect())
        }
        Value::Array(items) => Value::Array(items.first().map(shape).into_iter().collect()),
        Value::String(_) => json!("string"),
        Value::Number(_) => json!("number"),
        Value::Bool(_) => json!("bool"),
        Value::Null => json!("null"),
    }
}

fn fixture(name: &str) -> String {
    let path = repo_root().join("tests/fixtures/openai").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn fixture_json(name: &str) -> Value {
    serde_json::from_str(&fixture(name)).unwrap()
}

/// Every recorded request of the official client is answered in the recorded shape.
#[test]
fn openai_client_requests_get_the_recorded_response_shapes() {
    let server = ServeProcess::start(&[]);
    for (request, response) in [
        ("completion_request.json", "completion_response.json"),
        ("chat_request.json", "chat_response.json"),
        (
            "completion_logprobs_request.json",
            "completion_logprobs_response.json",
        ),
    ] {
        let recorded_request = fixture_json(request);
        let path = if recorded_request.get("messages").is_some() {
            "/v1/chat/completions"
        } else {
            "/v1/completions"
        };
        let (status, body, _) = server.post(path, &recorded_request);
        assert_eq!(status, 200, "{request}: {body}");
        assert_eq!(
            shape(&body),
            shape(&fixture_json(response)),
            "{request}: the response's shape differs from the recorded one"
        );
    }
    for (request, stream) in [
        ("completion_stream_request.json", "completion_stream.sse"),
        ("chat_stream_request.json", "chat_stream.sse"),
    ] {
        let recorded_request = fixture_json(request);
        let path = if recorded_request.get("messages").is_some() {
            "/v1/chat/completions"
        } else {
            "/v1/completions"
        };
        let recorded = sse_events(&fixture(stream));
        let ours = sse_events(&server.stream_raw(path, &recorded_request));
        assert_eq!(ours.last().map(String::as_str), Some("[DONE]"));
        // Each chunk's keys, and its first choice's keys (which vary only with what the chunk
        // carries: the role, text, a finish reason, usage), must be ones the client was recorded
        // reading.
        let keys = |event: &String| -> Value {
            let chunk: Value = serde_json::from_str(event).unwrap();
            let names = |v: &Value| -> Vec<String> {
                v.as_object()
                    .map_or_else(Vec::new, |o| o.keys().cloned().collect())
            };
            json!({ "chunk": names(&chunk), "choice": names(&chunk["choices"][0]) })
        };
        let recorded_keys: Vec<Value> = recorded[..recorded.len() - 1].iter().map(keys).collect();
        for event in &ours[..ours.len() - 1] {
            assert!(
                recorded_keys.contains(&keys(event)),
                "{stream}: a chunk the client was not recorded reading: {event}"
            );
        }
        assert_eq!(
            shape(&serde_json::from_str(&ours[0]).unwrap()),
            shape(&serde_json::from_str(&recorded[0]).unwrap()),
            "{stream}: the first chunk"
        );
    }
}

/// The text of a non-streamed completion.
fn complete(server: &ServeProcess, prompt: &str, max_tokens: usize) -> String {
    let (status, body, _) = server.post(
        "/v1/completions",
        &json!({ "model": "m", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0 }),
    );
    assert_eq!(status, 200, "{body}");
    body["choices"][0]["text"].as_str().unwrap().to_string()
}

/// A streamed completion's text, from its chunks.
fn stream_text(addr: SocketAddr, prompt: &str, max_tokens: usize, seed: u64) -> String {
    let body = json!({ "model": "m", "prompt": prompt, "max_tokens": max_tokens,
                       "temperature": 0.9, "seed": seed, "stream": true });
    let mut text = String::new();
    let status = client::post_events(addr, "/v1/completions", &body.to_string(), |data| {
        if data != "[DONE]" {
            let chunk: Value = serde_json::from_str(data).unwrap();
            text.push_str(chunk["choices"][0]["text"].as_str().unwrap_or(""));
        }
    })
    .unwrap();
    assert_eq!(status, 200);
    text
}

#[test]
fn concurrent_streams_do_not_mix_tokens() {
    let server = ServeProcess::start(&["--max-batch", "8"]);
    let prompts = [
        "Once upon a time",
        "The dog",
        "Lily and Tom went",
        "A big red ball",
    ];
    // Alone, one at a time: each prompt's text with its seed.
    let alone: Vec<String> = (0..8)
        .map(|i| stream_text(server.addr, prompts[i % 4], 40, i as u64))
        .collect();
    // All eight at once share the decoding batch; each must get exactly its own text.
    let together: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let addr = server.addr;
                scope.spawn(move || stream_text(addr, prompts[i % 4], 40, i as u64))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(together, alone);
    // Different seeds gave different texts for the same prompt (the check above can fail).
    assert_ne!(alone[0], alone[4]);
}

fn counter(scrape: &prometheus_parse::Scrape, name: &str) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

#[test]
fn a_client_disconnect_frees_its_batch_slot() {
    // One slot: a request can only run once the one before it is gone.
    let server = ServeProcess::start(&["--max-batch", "1"]);
    // An untrained model may end a sequence by end-of-text before the client goes away; a few
    // seeds make sure one sequence is really cut off.
    for seed in 1..=4 {
        let body = json!({ "model": "m", "prompt": "Once", "max_tokens": 250, "temperature": 1.0,
                           "seed": seed, "stream": true })
        .to_string();
        let mut stream = TcpStream::connect(server.addr).unwrap();
        write!(
            stream,
            "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut first = [0u8; 64];
        let n = stream.read(&mut first).unwrap();
        assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
        drop(stream);
        // The slot is free again: the next request runs and finishes.
        complete(&server, "The cat", 5);
        if counter(&server.metrics(), "llmlab_sequences_cancelled_total") >= 1.0 {
            break;
        }
    }
    let metrics = server.metrics();
    assert!(
        counter(&metrics, "llmlab_sequences_cancelled_total") >= 1.0,
        "a disconnected sequence is counted as cancelled"
    );
    assert_eq!(counter(&metrics, "llmlab_running_batch_size"), 0.0);
    assert_eq!(counter(&metrics, "llmlab_kv_cache_bytes"), 0.0);
}

/// Waits until gauge `name` reads `value` (the server's own report of its batch and queue).
fn wait_for_gauge(server: &ServeProcess, name: &str, value: f64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while counter(&server.metrics(), name) != value {
        assert!(Instant::now() < deadline, "{name} never reached {value}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// One slot and two queue places, filled on purpose: a request is running (each decoding step
/// held 50 ms by the hidden `--step-delay-ms`, so it surely still runs), two wait. Then every
/// further request is refused with 429 + Retry-After and nothing of it runs, and the accepted
/// three finish whole.
#[test]
fn overload_gets_429_with_retry_after_and_accepted_requests_finish() {
    let server =
        ServeProcess::start(&["--max-batch", "1", "--queue", "2", "--step-delay-ms", "50"]);
    let request = |max_tokens: u64, n: u64| {
        json!({ "model": "m", "prompt": "Once upon a time", "max_tokens": max_tokens,
                "temperature": 0, "n": n })
    };
    let (accepted, refused) = std::thread::scope(|scope| {
        let server = &server;
        let running = scope.spawn(move || server.post("/v1/completions", &request(40, 1)));
        wait_for_gauge(server, "llmlab_running_batch_size", 1.0);
        let queued: Vec<_> = (0..2)
            .map(|_| scope.spawn(move || server.post("/v1/completions", &request(6, 1))))
            .collect();
        wait_for_gauge(server, "llmlab_queue_length", 2.0);
        // The slot is taken for at least 40 × 50 ms from here, and the queue is full.
        let refused: Vec<_> = [1, 1, 3]
            .into_iter()
            .map(|n| server.post("/v1/completions", &request(6, n)))
            .collect();
        let accepted: Vec<_> = std::iter::once(running)
            .chain(queued)
            .map(|h| h.join().unwrap())
            .collect();
        (accepted, refused)
    });
    for (status, body, raw) in &refused {
        assert_eq!(*status, 429, "{body}");
        assert_eq!(raw.header("retry-after"), Some("1"));
        assert_eq!(body["error"]["type"], "rate_limit_error");
        assert_eq!(body["error"]["code"], "rate_limit_exceeded");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("queue is full"),
            "{body}"
        );
    }
    for ((status, body, _), max_tokens) in accepted.iter().zip([40, 6, 6]) {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(body["choices"][0]["finish_reason"], "length", "{body}");
        assert_eq!(body["usage"]["completion_tokens"], max_tokens, "{body}");
    }
    // Nothing of the refused requests ran: only the accepted ones' tokens were generated.
    let metrics = server.metrics();
    assert_eq!(counter(&metrics, "llmlab_generated_tokens_total"), 52.0);
    assert_eq!(counter(&metrics, "llmlab_queue_length"), 0.0);
}

/// The prompts admitted in one scheduler step are prefilled together, in one padded batch (one
/// model call), and each still gets exactly the text it gets alone. Made deterministic like the
/// overload test: a four-choice request fills all four slots (each step held 50 ms) while four
/// prompts of different lengths queue; when it ends, the next step admits all four at once.
#[test]
fn prompts_admitted_together_are_prefilled_in_one_batch_with_their_own_text() {
    let server = ServeProcess::start(&["--max-batch", "4", "--step-delay-ms", "50"]);
    let prompts = [
        "Once upon a time there was a little dog",
        "The dog",
        "Lily and Tom went to the park",
        "A",
    ];
    let alone: Vec<String> = (0..4)
        .map(|i| stream_text(server.addr, prompts[i], 12, 10 + i as u64))
        .collect();
    // 100 steps of 50 ms: time enough, even on a loaded machine, for the four to queue.
    let holder = json!({ "model": "m", "prompt": "Once upon a time", "max_tokens": 100,
                         "temperature": 0, "n": 4 });
    let (before, together) = std::thread::scope(|scope| {
        let server = &server;
        let holding = scope.spawn(move || server.post("/v1/completions", &holder));
        wait_for_gauge(server, "llmlab_running_batch_size", 4.0);
        let waiting: Vec<_> = (0..4)
            .map(|i| {
                let addr = server.addr;
                scope.spawn(move || stream_text(addr, prompts[i], 12, 10 + i as u64))
            })
            .collect();
        wait_for_gauge(server, "llmlab_queue_length", 4.0);
        let before = server.metrics();
        let (status, body, _) = holding.join().unwrap();
        assert_eq!(status, 200, "{body}");
        let together: Vec<String> = waiting.into_iter().map(|h| h.join().unwrap()).collect();
        (before, together)
    });
    assert_eq!(together, alone);
    let after = server.metrics();
    let added = |name: &str| counter(&after, name) - counter(&before, name);
    assert_eq!(added("llmlab_prefill_sequences_total"), 4.0);
    assert_eq!(
        added("llmlab_prefill_batches_total"),
        1.0,
        "the four queued prompts were admitted in one step and prefilled in one model call"
    );
}

#[test]
fn sigterm_finishes_requests_in_flight_then_exits() {
    let mut server = ServeProcess::start(&["--max-batch", "4"]);
    let addr = server.addr;
    let results = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..3)
            .map(|i| {
                scope.spawn(move || {
                    let body = json!({ "model": "m", "prompt": "Once", "max_tokens": 200,
                                       "temperature": 1.0, "seed": i, "stream": true });
                    let mut events = Vec::new();
                    let status =
                        client::post_events(addr, "/v1/completions", &body.to_string(), |d| {
                            events.push(d.to_string())
                        })
                        .unwrap();
                    (status, events)
                })
            })
            .collect();
        // Once the requests are running, SIGTERM.
        let deadline = Instant::now() + Duration::from_secs(30);
        while counter(&server.metrics(), "llmlab_running_batch_size") < 3.0 {
            assert!(
                Instant::now() < deadline,
                "the three requests never ran together"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) };
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    for (status, events) in results {
        assert_eq!(status, 200);
        assert_eq!(
            events.last().map(String::as_str),
            Some("[DONE]"),
            "{events:?}"
        );
        let last: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
        assert!(last["choices"][0]["finish_reason"].is_string(), "{last}");
    }
    let status = server.child.wait().unwrap();
    assert!(
        status.success(),
        "serve exits cleanly after draining: {status:?}"
    );
    let said: Vec<String> = server.stderr.lock().unwrap().try_iter().collect();
    assert!(said.iter().any(|l| l.contains("SIGTERM")), "{said:?}");
    assert!(TcpStream::connect(addr).is_err(), "no longer listening");
}

#[test]
fn metrics_parse_as_prometheus_text() {
    let server = ServeProcess::start(&[]);
    complete(&server, "Once upon a time", 8);
    let scrape = server.metrics();
    let requests = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == "llmlab_http_requests_total"
                && s.labels.get("route") == Some("/v1/completions")
                && s.labels.get("status") == Some("200")
        })
        .expect("requests by route and status");
    assert!(matches!(requests.value, prometheus_parse::Value::Counter(v) if v >= 1.0));
    for histogram in [
        "llmlab_request_duration_seconds",
        "llmlab_time_to_first_token_seconds",
    ] {
        let sample = scrape
            .samples
            .iter()
            .find(|s| s.metric == histogram)
            .unwrap_or_else(|| panic!("{histogram} missing"));
        match &sample.value {
            prometheus_parse::Value::Histogram(buckets) => {
                assert!(
                    buckets.iter().any(|b| b.count >= 1.0),
                    "{histogram}: {buckets:?}"
                )
            }
            other => panic!("{histogram} is not a histogram: {other:?}"),
        }
    }
    assert!(counter(&scrape, "llmlab_generated_tokens_total") >= 1.0);
    for gauge in [
        "llmlab_tokens_per_second",
        "llmlab_queue_length",
        "llmlab_running_batch_size",
        "llmlab_kv_cache_bytes",
    ] {
        assert!(
            scrape
                .samples
                .iter()
                .any(|s| s.metric == gauge && matches!(s.value, prometheus_parse::Value::Gauge(_))),
            "gauge {gauge} missing"
        );
    }
}

#[test]
fn limits_and_bad_requests_get_openai_errors() {
    let server = ServeProcess::start(&["--max-body-bytes", "2000", "--api-key", "sekrit"]);
    let key = |body: &Value, path: &str| -> (u16, Value) {
        let mut s = TcpStream::connect(server.addr).unwrap();
        let body = body.to_string();
        write!(s, "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sekrit\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).unwrap();
        let status = raw[9..12].parse().unwrap();
        let json_start = raw.find("\r\n\r\n").unwrap() + 4;
        (
            status,
            serde_json::from_str(&raw[json_start..]).unwrap_or(Value::Null),
        )
    };
    // No key: 401 on the API, but /health and /metrics stay open.
    let (status, body, _) = server.post("/v1/completions", &json!({ "prompt": "a" }));
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "invalid_api_key");
    assert_eq!(server.get("/health").status, 200);
    assert_eq!(server.get("/metrics").status, 200);
    assert_eq!(server.get("/v1/models").status, 401);

    let (status, body) = key(
        &json!({ "prompt": "Once", "max_tokens": 3 }),
        "/v1/completions",
    );
    assert_eq!(status, 200, "{body}");

    let (status, body) = key(&json!({ "prompt": "x".repeat(3000) }), "/v1/completions");
    assert_eq!(status, 413, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("2000 bytes"));

    let (status, body) = key(
        &json!({ "prompt": "Once", "max_tokens": 400 }),
        "/v1/completions",
    );
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "context_length_exceeded");
    assert_eq!(body["error"]["param"], "max_tokens");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("256"),
        "{body}"
    );

    let (status, body) = key(
        &json!({ "prompt": "Once", "tempreature": 0.5 }),
        "/v1/completions",
    );
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown field `tempreature`"),
        "{body}"
    );

    let (status, body) = key(
        &json!({ "prompt": "Once", "temperature": "hot" }),
        "/v1/completions",
    );
    assert_eq!(status, 400);
    assert_eq!(body["error"]["param"], "temperature", "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error");

    let (status, body) = key(
        &json!({ "prompt": "Once", "temperature": 7 }),
        "/v1/completions",
    );
    assert_eq!(status, 400);
    assert_eq!(body["error"]["param"], "temperature");

    let (status, body) = key(
        &json!({ "messages": [{ "role": "robot", "content": "hi" }] }),
        "/v1/chat/completions",
    );
    assert_eq!(status, 400);
    assert_eq!(body["error"]["param"], "messages[0].role", "{body}");

    let (status, body) = key(&json!({ "prompt": "Once" }), "/v1/nothing");
    assert_eq!(status, 404);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("/v1/nothing"));
}

#[test]
fn chat_models_health_and_stop_strings() {
    let server = ServeProcess::start(&["--model-name", "tiny"]);
    let models: Value = serde_json::from_str(&server.get("/v1/models").body).unwrap();
    assert_eq!(models["data"][0]["id"], "tiny");
    assert_eq!(server.get("/health").status, 200);
    let (status, body, _) = server.post(
        "/v1/chat/completions",
        &json!({ "model": "tiny", "messages": [{ "role": "user", "content": "Hi" }],
                 "max_tokens": 12, "temperature": 0, "n": 2 }),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"].as_array().unwrap().len(), 2);
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    // Greedy: both choices are the same text.
    assert_eq!(body["choices"][0]["message"], body["choices"][1]["message"]);
    // A stop string cuts the text before it, and the reason is "stop".
    let text = complete(&server, "Once upon a time", 30);
    // Two ASCII letters from inside the text as the stop string (an untrained model's text has
    // replacement characters too; they make no good stop strings).
    let chars: Vec<char> = text.chars().collect();
    let stop: Option<String> = (3..chars.len().saturating_sub(1))
        .find(|&i| chars[i].is_ascii_alphabetic() && chars[i + 1].is_ascii_alphabetic())
        .map(|i| chars[i..i + 2].iter().collect());
    if let Some(stop) = stop.as_deref() {
        let (_, body, _) = server.post(
            "/v1/completions",
            &json!({ "prompt": "Once upon a time", "max_tokens": 30, "temperature": 0, "stop": stop }),
        );
        let cut_text = body["choices"][0]["text"].as_str().unwrap();
        assert_eq!(cut_text, &text[..text.find(stop).unwrap()]);
        assert_eq!(body["choices"][0]["finish_reason"], "stop");
    }
}

#[test]
fn serve_from_the_repl_runs_in_the_background_and_stops() {
    let dir = fixture_model();
    let mut child = Command::new(llmlab_binary())
        .current_dir(dir)
        .env("LLMLAB_HISTORY", dir.join(".history"))
        .env_remove("LLMLAB_PLUGIN_PATH")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    writeln!(
        stdin,
        "let s = serve(model_load(\"model\"), tokenizer_load(\"tokenizer.json\"), #{{ port: 0, max_batch: 2 }});"
    )
    .unwrap();
    writeln!(stdin, "print(\"URL \" + s.url());").unwrap();
    stdin.flush().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let addr: SocketAddr = loop {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "the REPL ended early"
        );
        if let Some(url) = line.trim().strip_prefix("URL http://") {
            break url.parse().unwrap();
        }
    };
    // The REPL is free while the server answers.
    let response = client::request(
        addr,
        "POST",
        "/v1/completions",
        &json!({ "prompt": "Once", "max_tokens": 4 }).to_string(),
    )
    .unwrap();
    assert_eq!(response.status, 200, "{}", response.body);
    writeln!(stdin, "print(\"SUM \" + (40 + 2));").unwrap();
    writeln!(stdin, "s.stop(); print(\"STOPPED \" + s.is_running());").unwrap();
    stdin.flush().unwrap();
    let mut seen = String::new();
    while !seen.contains("STOPPED false") {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "REPL output so far: {seen}"
        );
        seen.push_str(&line);
    }
    assert!(seen.contains("SUM 42"), "{seen}");
    assert!(
        TcpStream::connect(addr).is_err(),
        "stopped servers do not listen"
    );
    drop(stdin);
    assert!(child.wait().unwrap().success());
}

#[test]
fn training_runs_expose_metrics_with_metrics_port() {
    let dir = fixture_model();
    let mut child = Command::new(llmlab_binary())
        .args(["--metrics-port", "0"])
        .current_dir(dir)
        .env("LLMLAB_HISTORY", dir.join(".history-train"))
        .env_remove("LLMLAB_PLUGIN_PATH")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let addr: SocketAddr = loop {
        line.clear();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "no metrics address printed"
        );
        if let Some(rest) = line.trim().strip_prefix("metrics: http://") {
            break rest.trim_end_matches("/metrics").parse().unwrap();
        }
    };
    let mut stdin = child.stdin.take().unwrap();
    writeln!(
        stdin,
        "let tok = tokenizer_load(\"tokenizer.json\"); let ds = tok.encode(corpus(\"stories\", #{{ bytes: 20000, seed: 3 }}), #{{ val_fraction: 0.1, out: \"train-data\" }}); let m = model_load(\"model\"); let r = trainer(\"lm\", #{{ steps: 4, batch_size: 4, lr: 1e-3, eval_every: 4, eval_batches: 1 }}).fit(m, ds); print(\"TRAINED\");"
    )
    .unwrap();
    stdin.flush().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    while !seen.contains("TRAINED") {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "training did not finish: {seen}"
        );
        seen.push_str(&line);
    }
    let text = client::request(addr, "GET", "/metrics", "").unwrap().body;
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    assert_eq!(counter(&scrape, "llmlab_train_step"), 4.0, "{text}");
    for gauge in [
        "llmlab_train_loss",
        "llmlab_train_lr",
        "llmlab_train_tokens_per_second",
    ] {
        assert!(counter(&scrape, gauge) > 0.0, "{gauge} in\n{text}");
    }
    drop(stdin);
    let _ = child.wait();
}

/// Chromium from the distribution's packages, if installed.
fn chromium() -> Option<PathBuf> {
    [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ]
    .iter()
    .flat_map(|name| {
        std::env::var_os("PATH")
            .map(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join(name))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    })
    .find(|p| p.is_file())
}

/// The smallest WebSocket client the Chrome DevTools Protocol needs: text frames, masked sends,
/// one JSON command at a time.
struct DevTools {
    socket: TcpStream,
    next_id: u64,
}

impl DevTools {
    fn connect(ws_url: &str) -> DevTools {
        let rest = ws_url.strip_prefix("ws://").unwrap();
        let (hostport, path) = rest.split_once('/').unwrap();
        let addr: SocketAddr = hostport.parse().unwrap();
        let mut socket = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("DevTools at {addr}: {e}"));
        socket
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        socket
            .set_write_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        write!(
            socket,
            "GET /{path} HTTP/1.1\r\nHost: {hostport}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            socket
                .read_exact(&mut byte)
                .unwrap_or_else(|e| panic!("DevTools handshake: {e}"));
            head.push(byte[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        DevTools { socket, next_id: 0 }
    }

    fn send_frame(&mut self, text: &str) {
        let payload = text.as_bytes();
        let mut frame = vec![0x81u8];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n < 65536 => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mask = [0x12u8, 0x34, 0x56, 0x78];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.socket
            .write_all(&frame)
            .unwrap_or_else(|e| panic!("DevTools connection: {e}"));
    }

    fn read_frame(&mut self) -> String {
        let mut message = Vec::new();
        loop {
            let mut head = [0u8; 2];
            self.socket.read_exact(&mut head).unwrap_or_else(|e| {
                panic!("DevTools connection: {e} (chromium gone, or silent for 30 s)")
            });
            let len = match head[1] & 0x7f {
                126 => {
                    let mut b = [0u8; 2];
                    self.socket.read_exact(&mut b).unwrap();
                    u16::from_be_bytes(b) as usize
                }
                127 => {
                    let mut b = [0u8; 8];
                    self.socket.read_exact(&mut b).unwrap();
                    u64::from_be_bytes(b) as usize
                }
                n => n as usize,
            };
            let mut payload = vec![0u8; len];
            self.socket.read_exact(&mut payload).unwrap();
            message.extend_from_slice(&payload);
            if head[0] & 0x80 != 0 {
                return String::from_utf8(message).unwrap();
            }
        }
    }

    /// Sends a command and returns its result (events in between are skipped).
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        self.send_frame(&json!({ "id": id, "method": method, "params": params }).to_string());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(Instant::now() < deadline, "{method}: no answer in 60 s");
            let reply: Value = serde_json::from_str(&self.read_frame()).unwrap();
            if reply["id"] == id {
                assert!(reply.get("error").is_none(), "{method}: {reply}");
                return reply["result"].clone();
            }
        }
    }

    fn eval(&mut self, expression: &str) -> Value {
        self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true }),
        )["result"]["value"]
            .clone()
    }
}

/// The playground in a real headless Chromium: the browser loads the page, a prompt is typed
/// key by key, Generate is clicked, and streamed text appears in several chunks. The screenshot
/// goes to $LLMLAB_SCREENSHOT when set (docs/serving/playground.png was made so, with
/// $LLMLAB_PLAYGROUND_MODEL naming a trained model). Skips, saying so, without Chromium.
#[test]
fn playground_streams_tokens_in_headless_chromium() {
    let Some(browser) = chromium() else {
        eprintln!(
            "SKIPPED playground_streams_tokens_in_headless_chromium: no chromium on PATH \
             (Debian: apt-get install chromium)"
        );
        return;
    };
    let server = match std::env::var("LLMLAB_PLAYGROUND_MODEL") {
        Ok(model) => ServeProcess::start_model(
            &std::path::absolute(&model).unwrap(),
            &["--model-name", "quickstart"],
        ),
        Err(_) => ServeProcess::start(&[]),
    };
    let profile = tempfile::tempdir().unwrap();
    let chrome = match HeadlessChromium::launch(&browser, profile.path()) {
        Ok(chrome) => chrome,
        Err(why) => {
            eprintln!("SKIPPED playground_streams_tokens_in_headless_chromium: {why}");
            return;
        }
    };
    let targets: Value = serde_json::from_str(
        &client::request(chrome.devtools, "GET", "/json/list", "")
            .unwrap()
            .body,
    )
    .unwrap();
    let page = targets
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["type"] == "page")
        .expect("a page target");
    let mut tab = DevTools::connect(page["webSocketDebuggerUrl"].as_str().unwrap());
    tab.call(
        "Page.navigate",
        json!({ "url": format!("http://{}/", server.addr) }),
    );
    let wait_for = |tab: &mut DevTools, expression: &str, what: &str| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while tab.eval(expression) != json!(true) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_for(
        &mut tab,
        "document.readyState === 'complete' && !!document.getElementById('send')",
        "the page",
    );
    tab.eval("const p = document.getElementById('prompt'); p.value = ''; p.focus(); true");
    for c in "Once upon a time, Lily".chars() {
        let text = c.to_string();
        tab.call(
            "Input.dispatchKeyEvent",
            json!({ "type": "keyDown", "text": text, "key": text }),
        );
        tab.call(
            "Input.dispatchKeyEvent",
            json!({ "type": "keyUp", "key": text }),
        );
    }
    assert_eq!(
        tab.eval("document.getElementById('prompt').value"),
        json!("Once upon a time, Lily")
    );
    tab.eval("document.getElementById('max_tokens').value = '40'; document.getElementById('seed').value = '4'; true");
    let rect = tab.eval(
        "(() => { const r = document.getElementById('send').getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()",
    );
    let (x, y) = (rect[0].as_f64().unwrap(), rect[1].as_f64().unwrap());
    for kind in ["mousePressed", "mouseReleased"] {
        tab.call(
            "Input.dispatchMouseEvent",
            json!({ "type": kind, "x": x, "y": y, "button": "left", "clickCount": 1 }),
        );
    }
    wait_for(
        &mut tab,
        "document.getElementById('status').textContent.startsWith('done')",
        "the generation to finish",
    );
    let generated = tab.eval("document.getElementById('generated').textContent");
    let chunks = tab.eval("window.chunksReceived").as_u64().unwrap();
    assert!(!generated.as_str().unwrap().is_empty(), "no text appeared");
    assert!(
        chunks > 1,
        "the text arrived in {chunks} chunk(s): not streamed"
    );
    // Let the live metrics refresh once more, then keep a picture.
    std::thread::sleep(Duration::from_millis(1200));
    let shot = tab.call("Page.captureScreenshot", json!({ "format": "png" }));
    let png = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        shot["data"].as_str().unwrap(),
    )
    .unwrap();
    assert!(png.starts_with(b"\x89PNG"));
    if let Ok(path) = std::env::var("LLMLAB_SCREENSHOT") {
        std::fs::write(&path, &png).unwrap();
    }
    drop(chrome);
}

/// Chromium in headless mode with its DevTools endpoint on a free port, killed when dropped,
/// and by a watchdog after 3 minutes whatever happens: a stuck browser then fails the test
/// (every DevTools read errors out) instead of hanging it.
struct HeadlessChromium {
    child: Child,
    devtools: SocketAddr,
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl HeadlessChromium {
    /// `Err`: the browser did not come up (the reason and its last words), a machine problem
    /// rather than the playground's.
    fn launch(browser: &Path, profile: &Path) -> Result<HeadlessChromium, String> {
        let mut child = Command::new(browser)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                // Containers often have a tiny /dev/shm, where Chromium's renderers crash.
                "--disable-dev-shm-usage",
                "--disable-extensions",
                "--no-first-run",
                "--no-default-browser-check",
                "--remote-debugging-port=0",
                "--window-size=1100,720",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", browser.display()))?;
        let (lines_tx, lines) = std::sync::mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = lines_tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut said = Vec::new();
        let ws = loop {
            match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => match line.trim().strip_prefix("DevTools listening on ") {
                    Some(url) => break url.to_string(),
                    None => said.push(line),
                },
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let tail = said[said.len().saturating_sub(5)..].join("\n");
                    return Err(format!(
                        "chromium printed no DevTools address within 60 s; its last lines:\n{tail}"
                    ));
                }
            }
        };
        let devtools = ws["ws://".len()..]
            .split('/')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (pid, watching) = (child.id() as i32, done.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(180);
            while !watching.load(std::sync::atomic::Ordering::SeqCst) {
                if Instant::now() > deadline {
                    eprintln!("watchdog: chromium still running after 180 s, killed");
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Ok(HeadlessChromium {
            child,
            devtools,
            done,
        })
    }
}

impl Drop for HeadlessChromium {
    fn drop(&mut self) {
        self.done.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

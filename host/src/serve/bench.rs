//! `llmlab bench serve`: a bounded load test against a server on this machine. For each
//! concurrency level, that many client threads send streaming completions until `requests` are
//! done; the line printed (JSON) has throughput (generated tokens/s over the wall time),
//! p50/p99 request latency and time to first token. Concurrency 1 is one request at a time, the
//! baseline continuous batching is measured against.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use llmlab_plugin_api::serde_json::{self, json, Value};

use super::client::post_events;

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub requests: usize,
    pub max_tokens: usize,
    pub prompt: String,
    pub temperature: f64,
}

struct Sample {
    latency: Duration,
    ttft: Option<Duration>,
    tokens: usize,
}

/// One streaming completion; its latency, time to first token and generated tokens (from the
/// usage chunk).
fn one_request(addr: SocketAddr, options: &LoadOptions, seed: usize) -> Result<Sample, String> {
    let body = json!({
        "model": "bench",
        "prompt": options.prompt,
        "max_tokens": options.max_tokens,
        "temperature": options.temperature,
        "seed": seed,
        "stream": true,
        "stream_options": { "include_usage": true },
    })
    .to_string();
    let start = Instant::now();
    let mut ttft = None;
    let mut tokens = None;
    let mut error = None;
    let status = post_events(addr, "/v1/completions", &body, |data| {
        if data == "[DONE]" {
            return;
        }
        let Ok(value) = serde_json::from_str::<Value>(data) else {
            error = Some(format!("not JSON: {data}"));
            return;
        };
        if let Some(e) = value.get("error") {
            error = Some(e.to_string());
        }
        if ttft.is_none() && value["choices"].as_array().is_some_and(|c| !c.is_empty()) {
            ttft = Some(start.elapsed());
        }
        if let Some(n) = value["usage"]["completion_tokens"].as_u64() {
            tokens = Some(n as usize);
        }
    })
    .map_err(|e| e.to_string())?;
    if status != 200 {
        return Err(format!("HTTP {status}: {}", error.unwrap_or_default()));
    }
    if let Some(e) = error {
        return Err(e);
    }
    Ok(Sample {
        latency: start.elapsed(),
        ttft,
        tokens: tokens.ok_or("no usage chunk in the stream")?,
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Runs `options.requests` requests from `concurrency` threads; the JSON line's fields.
pub fn run_level(addr: SocketAddr, concurrency: usize, options: &LoadOptions) -> Value {
    let next = AtomicUsize::new(0);
    let samples = Mutex::new(Vec::new());
    let errors = Mutex::new(Vec::<String>::new());
    let start = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..concurrency.max(1) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= options.requests {
                    break;
                }
                match one_request(addr, options, i) {
                    Ok(s) => samples.lock().unwrap_or_else(|p| p.into_inner()).push(s),
                    Err(e) => errors.lock().unwrap_or_else(|p| p.into_inner()).push(e),
                }
            });
        }
    });
    let wall = start.elapsed().as_secs_f64();
    let samples = samples.into_inner().unwrap_or_else(|p| p.into_inner());
    let errors = errors.into_inner().unwrap_or_else(|p| p.into_inner());
    let tokens: usize = samples.iter().map(|s| s.tokens).sum();
    let mut latency: Vec<f64> = samples.iter().map(|s| s.latency.as_secs_f64()).collect();
    let mut ttft: Vec<f64> = samples
        .iter()
        .filter_map(|s| s.ttft.map(|t| t.as_secs_f64()))
        .collect();
    latency.sort_by(f64::total_cmp);
    ttft.sort_by(f64::total_cmp);
    let round = |x: f64| (x * 10_000.0).round() / 10_000.0;
    json!({
        "bench": "serve",
        "concurrency": concurrency,
        "requests": samples.len(),
        "errors": errors.len(),
        "first_error": errors.first(),
        "max_tokens": options.max_tokens,
        "completion_tokens": tokens,
        "wall_s": round(wall),
        "tokens_per_s": round(tokens as f64 / wall.max(1e-9)),
        "requests_per_s": round(samples.len() as f64 / wall.max(1e-9)),
        "latency_p50_s": round(percentile(&latency, 50.0)),
        "latency_p99_s": round(percentile(&latency, 99.0)),
        "ttft_p50_s": round(percentile(&ttft, 50.0)),
        "ttft_p99_s": round(percentile(&ttft, 99.0)),
    })
}

/// `1,4,16,64` → levels, each at least 1.
pub fn parse_levels(text: &str) -> Result<Vec<usize>, String> {
    text.split(',')
        .map(|s| match s.trim().parse::<usize>() {
            Ok(n) if (1..=1024).contains(&n) => Ok(n),
            _ => Err(format!(
                "--concurrency: `{s}` is not a whole number from 1 to 1024 (e.g. 1,4,16,64)"
            )),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_take_the_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[3.0], 99.0), 3.0);
    }

    #[test]
    fn levels_parse_and_refuse_zero() {
        assert_eq!(parse_levels("1, 4,16").unwrap(), vec![1, 4, 16]);
        assert!(parse_levels("0").unwrap_err().contains("--concurrency"));
    }
}

//! Prometheus metrics: the process-wide recorder (metrics-exporter-prometheus, installed once,
//! rendered by `GET /metrics`), the names serving and training report, and the sink that turns a
//! training run's step metrics into gauges (`llmlab run --metrics-port`).
//!
//! Latencies are true Prometheus histograms (fixed buckets) so Grafana can aggregate them
//! across servers; without a recorder installed every update is a no-op.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use llmlab_plugin_api::MetricsSink;
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const REQUESTS: &str = "llmlab_http_requests_total";
pub const REQUEST_SECONDS: &str = "llmlab_request_duration_seconds";
pub const TTFT_SECONDS: &str = "llmlab_time_to_first_token_seconds";
pub const GENERATED_TOKENS: &str = "llmlab_generated_tokens_total";
pub const PROMPT_TOKENS: &str = "llmlab_prompt_tokens_total";
pub const PREFILL_BATCHES: &str = "llmlab_prefill_batches_total";
pub const PREFILL_SEQUENCES: &str = "llmlab_prefill_sequences_total";
pub const CANCELLED: &str = "llmlab_sequences_cancelled_total";
pub const TOKENS_PER_SECOND: &str = "llmlab_tokens_per_second";
pub const QUEUE_LENGTH: &str = "llmlab_queue_length";
pub const RUNNING_BATCH: &str = "llmlab_running_batch_size";
pub const KV_CACHE_BYTES: &str = "llmlab_kv_cache_bytes";

/// Seconds: 5 ms to 2 minutes.
const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

static RECORDER: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();

/// The recorder's handle, installing it on first use.
pub fn handle() -> Result<PrometheusHandle, String> {
    RECORDER.get_or_init(install).clone()
}

fn install() -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
        .and_then(|b| b.install_recorder())
        .map_err(|e| format!("cannot install the Prometheus recorder: {e}"))?;
    describe_counter!(REQUESTS, "HTTP requests by route and status code");
    describe_histogram!(
        REQUEST_SECONDS,
        "time from a generation request's arrival to its last token"
    );
    describe_histogram!(
        TTFT_SECONDS,
        "time from a generation request's arrival to its first token"
    );
    describe_counter!(GENERATED_TOKENS, "tokens generated");
    describe_counter!(PROMPT_TOKENS, "prompt tokens prefilled");
    describe_counter!(
        PREFILL_BATCHES,
        "model calls that prefilled the prompts admitted in one scheduler step together"
    );
    describe_counter!(
        PREFILL_SEQUENCES,
        "sequences prefilled (admitted to the batch)"
    );
    describe_counter!(
        CANCELLED,
        "sequences dropped before their end (client gone, stop string)"
    );
    describe_gauge!(
        TOKENS_PER_SECOND,
        "generated tokens per second over the last second"
    );
    describe_gauge!(QUEUE_LENGTH, "sequences waiting for a batch slot");
    describe_gauge!(RUNNING_BATCH, "sequences in the decoding batch");
    describe_gauge!(KV_CACHE_BYTES, "bytes of the running sequences' KV caches");
    Ok(handle)
}

/// Every serving counter and gauge at its starting value, so a scrape lists them all from the
/// start (a gauge that is set only after its first timed window would otherwise be missing
/// from short runs; a dashboard wants 0, not "no data").
pub fn register_serving() {
    for name in [
        GENERATED_TOKENS,
        PROMPT_TOKENS,
        PREFILL_BATCHES,
        PREFILL_SEQUENCES,
        CANCELLED,
    ] {
        counter!(name).increment(0);
    }
    for name in [
        TOKENS_PER_SECOND,
        QUEUE_LENGTH,
        RUNNING_BATCH,
        KV_CACHE_BYTES,
    ] {
        gauge!(name).set(0.0);
    }
}

/// The text exposition of every metric.
pub fn render() -> Result<String, String> {
    let handle = handle()?;
    handle.run_upkeep();
    Ok(handle.render())
}

pub fn request(route: &str, status: u16) {
    counter!(REQUESTS, "route" => route.to_string(), "status" => status.to_string()).increment(1);
}

pub fn request_seconds(route: &'static str, seconds: f64) {
    histogram!(REQUEST_SECONDS, "route" => route).record(seconds);
}

pub fn time_to_first_token(route: &'static str, seconds: f64) {
    histogram!(TTFT_SECONDS, "route" => route).record(seconds);
}

pub fn generated_tokens(n: usize) {
    counter!(GENERATED_TOKENS).increment(n as u64);
}

pub fn prompt_tokens(n: usize) {
    counter!(PROMPT_TOKENS).increment(n as u64);
}

/// One batched prefill of `sequences` admitted sequences.
pub fn prefill_batch(sequences: usize) {
    counter!(PREFILL_BATCHES).increment(1);
    counter!(PREFILL_SEQUENCES).increment(sequences as u64);
}

pub fn cancelled() {
    counter!(CANCELLED).increment(1);
}

pub fn tokens_per_second(rate: f64) {
    gauge!(TOKENS_PER_SECOND).set(rate);
}

pub fn queue_length(n: usize) {
    gauge!(QUEUE_LENGTH).set(n as f64);
}

pub fn running_batch_size(n: usize) {
    gauge!(RUNNING_BATCH).set(n as f64);
}

pub fn kv_cache_bytes(n: usize) {
    gauge!(KV_CACHE_BYTES).set(n as f64);
}

/// A Prometheus metric name for a training metric (`val_loss` → `llmlab_train_val_loss`).
pub fn training_metric_name(key: &str) -> String {
    let clean: String = key
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    match clean.as_str() {
        "tokens_per_s" => "llmlab_train_tokens_per_second".into(),
        _ => format!("llmlab_train_{clean}"),
    }
}

/// Passes a training run's step metrics on to `inner` (metrics.jsonl) and sets them as gauges:
/// `llmlab_train_step`, `llmlab_train_loss`, `llmlab_train_lr`,
/// `llmlab_train_tokens_per_second`, and one gauge per other value the trainer records.
pub struct TrainingGauges {
    pub inner: Arc<dyn MetricsSink>,
}

impl MetricsSink for TrainingGauges {
    fn record(&self, step: u64, values: &BTreeMap<String, f64>) {
        self.inner.record(step, values);
        gauge!("llmlab_train_step").set(step as f64);
        for (key, value) in values {
            if value.is_finite() {
                gauge!(training_metric_name(key)).set(*value);
            }
        }
    }

    fn rewind(&self, step: u64) {
        self.inner.rewind(step);
    }
}

/// Whether a recorder is installed (a server or `--metrics-port` is up): only then do training
/// runs wrap their metrics sink.
pub fn enabled() -> bool {
    RECORDER.get().is_some_and(|r| r.is_ok())
}

/// A training run's metrics sink: `inner`, plus gauges when a recorder is installed.
pub fn training_sink(inner: Arc<dyn MetricsSink>) -> Arc<dyn MetricsSink> {
    if enabled() {
        Arc::new(TrainingGauges { inner })
    } else {
        inner
    }
}

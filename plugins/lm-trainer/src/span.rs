//! The `span` trainer: T5's span-corruption pretraining (Raffel et al. 2020, §3.1.4) on a
//! token stream. Each row is a random window of the train split in which `noise_density`
//! (0.15) of the tokens, in spans of mean length `mean_span_length` (3), are corrupted: the
//! window is cut into alternating kept and noise spans (kept first, lengths drawn by random
//! segmentation as in T5's `random_spans_noise_mask`); the **input** keeps the kept spans and
//! puts one sentinel (`<extra_id_0>`, `<extra_id_1>`, ...) where each noise span was, the
//! **target** is each sentinel followed by the span it hides; both end with end-of-text:
//!
//! ```text
//! window:  Thank you for inviting me to your party last week .
//! input:   Thank you <extra_id_0> me to your party <extra_id_1> week . </s>
//! target:  <extra_id_0> for inviting <extra_id_1> last </s>
//! ```
//!
//! Rows are packed `input </s> target </s>` (the text-to-text packing `t5` reads, loss on the
//! target only), so the window length is the largest whose input fits `ctx`. The windows and
//! the noise come from the trainer's seeded generator, which checkpoints keep: a resumed run
//! reads exactly what an uninterrupted one would. Evaluation corrupts fixed windows of the val
//! split with a fixed seed. The sentinels come from the tokenizer (`tr.fit(m, data, tok)`);
//! a tokenizer without enough of them is refused naming the first missing one.

use llmlab_plugin_api::candle::Device;
use llmlab_plugin_api::config::TypedConfig;
use llmlab_plugin_api::prelude::*;
use llmlab_plugin_api::serde_json::Map;

use crate::batches::{Batch, DataCursor};
use crate::config::TrainConfig;
use crate::rng::SplitMix64;
use crate::sft::batch;
use crate::sft::Encoded;
use crate::train_loop::{Objective, Setup, TrainLoop};

/// The span-corruption keys of the trainer config (the rest is the `lm` trainer's).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpanConfig {
    pub noise_density: f64,
    pub mean_span_length: f64,
}

pub const SPAN_KEYS: [(&str, &str); 2] = [
    (
        "noise_density",
        "fraction of each window's tokens that are corrupted (T5: 0.15)",
    ),
    (
        "mean_span_length",
        "mean length of a corrupted span (T5: 3)",
    ),
];

impl SpanConfig {
    /// Takes the span keys out of `fields`.
    pub fn take(fields: &mut Map<String, Value>) -> Result<SpanConfig> {
        let mut number = |key: &str, default: f64| -> Result<f64> {
            match fields.remove(key) {
                None | Some(Value::Null) => Ok(default),
                Some(v) => v.as_f64().filter(|x| x.is_finite()).ok_or_else(|| {
                    Error::invalid_config("span", format!("`{key}` must be a number, got {v}"))
                }),
            }
        };
        let noise_density = number("noise_density", 0.15)?;
        let mean_span_length = number("mean_span_length", 3.0)?;
        if !(noise_density > 0.0 && noise_density < 1.0) {
            return Err(Error::invalid_config(
                "span",
                format!("`noise_density` must be in (0, 1), got {noise_density}"),
            ));
        }
        if mean_span_length < 1.0 {
            return Err(Error::invalid_config(
                "span",
                format!("`mean_span_length` must be at least 1, got {mean_span_length}"),
            ));
        }
        Ok(SpanConfig {
            noise_density,
            mean_span_length,
        })
    }

    /// `(noise tokens, spans)` of a window of `len` tokens.
    pub fn counts(&self, len: usize) -> (usize, usize) {
        let noise = ((len as f64 * self.noise_density).round() as usize).clamp(1, len - 1);
        let spans = ((noise as f64 / self.mean_span_length).round() as usize)
            .clamp(1, noise.min(len - noise));
        (noise, spans)
    }

    /// Tokens of a window of `len` once corrupted: its input with `</s>`.
    fn input_len(&self, len: usize) -> usize {
        let (noise, spans) = self.counts(len);
        len - noise + spans + 1
    }

    /// The longest window whose input (with `</s>`) fits `ctx` tokens.
    pub fn window_len(&self, ctx: usize) -> Result<usize> {
        (2..=2 * ctx + 2)
            .rev()
            .find(|&len| self.input_len(len) <= ctx)
            .ok_or_else(|| {
                Error::invalid_config(
                    "span",
                    format!("ctx = {ctx} is too short for a corrupted window"),
                )
            })
    }
}

/// `n` items cut into `parts` non-empty runs at random (T5's `_random_segmentation`).
fn segment(n: usize, parts: usize, rng: &mut SplitMix64) -> Vec<usize> {
    let mut cuts: Vec<usize> = rng.permutation(n - 1)[..parts - 1]
        .iter()
        .map(|c| c + 1)
        .collect();
    cuts.sort_unstable();
    let mut lengths = Vec::with_capacity(parts);
    let mut last = 0;
    for c in cuts.into_iter().chain(std::iter::once(n)) {
        lengths.push(c - last);
        last = c;
    }
    lengths
}

/// Corrupts `window`: `(input, target)`, each ending with `eos`. `sentinels[i]` marks span `i`.
pub fn corrupt(
    window: &[u32],
    config: &SpanConfig,
    sentinels: &[u32],
    eos: u32,
    rng: &mut SplitMix64,
) -> (Vec<u32>, Vec<u32>) {
    let (noise, spans) = config.counts(window.len());
    let noise_lengths = segment(noise, spans, rng);
    let kept_lengths = segment(window.len() - noise, spans, rng);
    let (mut input, mut target) = (Vec::new(), Vec::new());
    let mut at = 0;
    for (i, (&kept, &hidden)) in kept_lengths.iter().zip(&noise_lengths).enumerate() {
        input.extend_from_slice(&window[at..at + kept]);
        at += kept;
        input.push(sentinels[i]);
        target.push(sentinels[i]);
        target.extend_from_slice(&window[at..at + hidden]);
        at += hidden;
    }
    input.push(eos);
    target.push(eos);
    (input, target)
}

/// The ids of `<extra_id_0>` .. `<extra_id_{n-1}>`, or an error naming the first missing one.
pub fn sentinel_ids(tokenizer: &dyn Tokenizer, n: usize) -> Result<Vec<u32>> {
    (0..n)
        .map(|i| {
            let name = format!("<extra_id_{i}>");
            tokenizer.token_to_id(&name).ok_or_else(|| {
                Error::Data(format!(
                    "span: the tokenizer `{}` has no sentinel token `{name}`; span corruption of these windows needs \
                     <extra_id_0> .. <extra_id_{}> (add them to its special_tokens, or lower ctx / noise_density)",
                    tokenizer.name(),
                    n - 1
                ))
            })
        })
        .collect()
}

/// Corrupted random windows of a token stream.
pub struct SpanCorruption {
    config: SpanConfig,
    setup: Option<Setup>,
    window: usize,
    sentinels: Vec<u32>,
    eos: u32,
    pad: u32,
}

impl SpanCorruption {
    pub fn new(config: SpanConfig) -> Self {
        SpanCorruption {
            config,
            setup: None,
            window: 0,
            sentinels: Vec::new(),
            eos: 0,
            pad: 0,
        }
    }

    fn row(
        &self,
        data: &dyn TokenData,
        split: Split,
        start: usize,
        rng: &mut SplitMix64,
    ) -> Result<Encoded> {
        let mut window = vec![0u32; self.window];
        data.read(split, start, &mut window)?;
        let (input, target) = corrupt(&window, &self.config, &self.sentinels, self.eos, rng);
        let answer_start = input.len();
        Ok(Encoded {
            ids: input.into_iter().chain(target).collect(),
            answer_start,
            trainable: None,
        })
    }
}

fn job_parts<'a>(job: &TrainJob<'a>) -> Result<(&'a dyn TokenData, &'a dyn Tokenizer)> {
    match (job.tokens, job.tokenizer) {
        (Some(tokens), Some(tokenizer)) => Ok((tokens, tokenizer)),
        (Some(_), None) => Err(Error::Data(
            "span: span corruption needs the tokenizer for its sentinel tokens <extra_id_N>: call tr.fit(model, data, tok)".into(),
        )),
        (None, _) => Err(Error::Data(format!(
            "span: the span trainer corrupts a token dataset (tok.encode(corpus)), the job has {}",
            job.describe()
        ))),
    }
}

impl Objective for SpanCorruption {
    fn prepare(&mut self, data: &TrainJob<'_>, setup: &Setup) -> Result<()> {
        let (tokens, tokenizer) = job_parts(data)?;
        if tokens.vocab_size() > setup.model_vocab_size {
            return Err(Error::Data(format!(
                "the dataset's vocabulary ({} tokens) is larger than the model's vocab_size ({})",
                tokens.vocab_size(),
                setup.model_vocab_size
            )));
        }
        self.window = self.config.window_len(setup.ctx)?;
        let (_, spans) = self.config.counts(self.window);
        self.sentinels = sentinel_ids(tokenizer, spans)?;
        self.eos = tokenizer.end_of_text()?;
        self.pad = tokenizer
            .special_token(SpecialToken::Pad)
            .unwrap_or(self.eos);
        let len = tokens.len(Split::Train);
        if len < self.window {
            return Err(Error::Data(format!(
                "span: the train split has {len} tokens but a window needs {} (ctx = {})",
                self.window, setup.ctx
            )));
        }
        self.setup = Some(*setup);
        Ok(())
    }

    fn next_batch(
        &mut self,
        data: &TrainJob<'_>,
        rng: &mut SplitMix64,
        cursor: &mut DataCursor,
        device: &Device,
    ) -> Result<Batch> {
        let (tokens, _) = job_parts(data)?;
        let setup = self.setup.ok_or_else(|| Error::msg("span: not prepared"))?;
        let starts = tokens.len(Split::Train) - self.window + 1;
        let rows = (0..setup.batch_size)
            .map(|_| {
                cursor.drawn += 1;
                let start = rng.below(starts);
                self.row(tokens, Split::Train, start, rng)
            })
            .collect::<Result<Vec<_>>>()?;
        batch(&rows, self.pad, device)
    }

    fn eval_batches(&mut self, data: &TrainJob<'_>, device: &Device) -> Result<Vec<Batch>> {
        let (tokens, _) = job_parts(data)?;
        let setup = self.setup.ok_or_else(|| Error::msg("span: not prepared"))?;
        let len = tokens.len(Split::Val);
        if len < self.window {
            tracing::warn!("span: the val split is shorter than one window; no evaluation");
            return Ok(Vec::new());
        }
        let rows = setup.eval_batches * setup.batch_size;
        let stride = ((len - self.window) / rows.max(1)).max(1);
        let mut rng = SplitMix64::new(setup.seed ^ 0x5350_414e_5f45_5641);
        let rows = (0..rows)
            .map(|i| {
                self.row(
                    tokens,
                    Split::Val,
                    (i * stride).min(len - self.window),
                    &mut rng,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        rows.chunks(setup.batch_size)
            .map(|chunk| batch(chunk, self.pad, device))
            .collect()
    }
}

pub type SpanTrainer = TrainLoop<SpanCorruption>;

/// The `span` trainer from a JSON config: the `lm` keys plus [`SPAN_KEYS`].
pub fn new_span_trainer(config: &Value) -> Result<SpanTrainer> {
    let mut fields = match config {
        Value::Object(map) => map.clone(),
        Value::Null => Map::new(),
        other => {
            return Err(Error::invalid_config(
                "span",
                format!("expected a map of options, got {other}"),
            ))
        }
    };
    let span = SpanConfig::take(&mut fields)?;
    let config = TrainConfig::from_json("span", &Value::Object(fields))?;
    Ok(TrainLoop::new("span", config, SpanCorruption::new(span)))
}

pub struct SpanFactory;

impl Factory for SpanFactory {
    fn name(&self) -> &'static str {
        "span"
    }
    fn kind(&self) -> Kind {
        Kind::Trainer
    }
    fn about(&self) -> &'static str {
        "T5 span-corruption pretraining: sentinel-masked spans (density 0.15, mean length 3) predicted by an encoder-decoder"
    }
    fn config_keys(&self) -> Vec<ConfigKey> {
        let mut keys = TrainConfig::keys();
        let defaults = [0.15, 3.0];
        keys.extend(
            SPAN_KEYS
                .iter()
                .zip(defaults)
                .map(|((name, doc), default)| ConfigKey {
                    name: (*name).into(),
                    default: Value::from(default),
                    doc: (*doc).into(),
                }),
        );
        keys
    }
    fn create(&self, config: &Value, _: &Context) -> Result<Instance> {
        Ok(Instance::Trainer(Box::new(new_span_trainer(config)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T5: SpanConfig = SpanConfig {
        noise_density: 0.15,
        mean_span_length: 3.0,
    };

    #[test]
    fn corruption_hides_spans_behind_sentinels_and_the_target_restores_them() {
        let window: Vec<u32> = (100..200).collect();
        let sentinels: Vec<u32> = (0..10).map(|i| 999 - i).collect();
        let mut rng = SplitMix64::new(3);
        let (input, target) = corrupt(&window, &T5, &sentinels, 1, &mut rng);
        let (noise, spans) = T5.counts(100);
        assert_eq!((noise, spans), (15, 5));
        assert_eq!(input.len(), 100 - 15 + 5 + 1);
        assert_eq!(target.len(), 15 + 5 + 1);
        assert_eq!((*input.last().unwrap(), *target.last().unwrap()), (1, 1));
        // Filling each sentinel of the input with its span from the target gives the window.
        let mut restored = Vec::new();
        for &t in &input[..input.len() - 1] {
            match sentinels.iter().position(|&s| s == t) {
                Some(i) => {
                    let at = target.iter().position(|&x| x == sentinels[i]).unwrap();
                    restored.extend(
                        target[at + 1..]
                            .iter()
                            .take_while(|x| !sentinels.contains(x) && **x != 1),
                    );
                }
                None => restored.push(t),
            }
        }
        assert_eq!(restored, window);
        // Sentinels are used in order, each once, in both.
        let used: Vec<u32> = input.iter().filter(|t| **t >= 990).copied().collect();
        assert_eq!(used, sentinels[..5].to_vec());
    }

    #[test]
    fn the_noise_averages_the_density_and_span_length_over_seeds() {
        let window: Vec<u32> = (100..600).collect();
        let sentinels: Vec<u32> = (0..100).map(|i| 9999 - i).collect();
        let (mut noise, mut spans) = (0, 0);
        for seed in 0..20 {
            let (_, target) = corrupt(&window, &T5, &sentinels, 1, &mut SplitMix64::new(seed));
            let s = target.iter().filter(|t| **t > 9000).count();
            spans += s;
            noise += target.len() - s - 1;
        }
        let density = noise as f64 / (20.0 * 500.0);
        let mean = noise as f64 / spans as f64;
        assert!((density - 0.15).abs() < 0.01, "density {density}");
        assert!((mean - 3.0).abs() < 0.2, "mean span {mean}");
    }

    #[test]
    fn the_window_is_the_longest_whose_input_fits_ctx() {
        for ctx in [8, 32, 100] {
            let len = T5.window_len(ctx).unwrap();
            assert!(T5.input_len(len) <= ctx);
            assert!(T5.input_len(len + 1) > ctx || T5.input_len(len + 2) > ctx);
        }
    }

    #[test]
    fn bad_keys_are_named() {
        let err = new_span_trainer(&llmlab_plugin_api::serde_json::json!({ "noise_density": 1.5 }))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("noise_density"), "{err}");
        let err = new_span_trainer(&llmlab_plugin_api::serde_json::json!({ "noise": 0.1 }))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("noise"), "{err}");
    }
}

//! `trainer("mlm", #{ next_sentence })`: the pair head is given to the model and learns to tell
//! a continuation from a span drawn elsewhere, MLM-only runs get neither head nor pair metrics,
//! the alternating run resumes bit-exactly, and bad settings are named.

use std::path::Path;
use std::sync::{Arc, RwLock};

use llmlab_encoder_trainer::new_mlm_trainer;
use llmlab_plugin_api::candle::backprop::GradStore;
use llmlab_plugin_api::candle::{DType, Device, Tensor, Var};
use llmlab_plugin_api::prelude::*;
use llmlab_plugin_api::rng::SplitMix64;
use llmlab_plugin_api::TextSource;
use llmlab_test_support::{context, snapshot, Bigram, Recorder};

/// 0 `[PAD]`, 1 `[CLS]`, 2 `[SEP]`, 3 `[MASK]`; words 4.. in [`TOPICS`] topics of 4 words.
#[derive(Clone)]
struct Words;

const TOPICS: u32 = 6;
const VOCAB: usize = 4 + 4 * TOPICS as usize;

impl Tokenizer for Words {
    fn name(&self) -> &str {
        "words"
    }
    fn config(&self) -> Value {
        Value::Null
    }
    fn train(&mut self, _: &dyn TextSource, _: &Context) -> Result<()> {
        Ok(())
    }
    fn encode(&self, _: &str) -> Result<Vec<u32>> {
        Err(Error::unsupported("words", "encoding text"))
    }
    fn decode(&self, ids: &[u32]) -> Result<String> {
        Ok(format!("{ids:?}"))
    }
    fn vocab_size(&self) -> usize {
        VOCAB
    }
    fn token_to_id(&self, _: &str) -> Option<u32> {
        None
    }
    fn id_to_token(&self, id: u32) -> Option<String> {
        Some(id.to_string())
    }
    fn special_token(&self, role: SpecialToken) -> Option<u32> {
        match role {
            SpecialToken::Pad => Some(0),
            SpecialToken::Cls => Some(1),
            SpecialToken::Sep => Some(2),
            SpecialToken::Mask => Some(3),
            _ => None,
        }
    }
    fn to_json(&self) -> Result<String> {
        Err(Error::unsupported("words", "saving"))
    }
    fn clone_box(&self) -> Box<dyn Tokenizer> {
        Box::new(self.clone())
    }
}

/// Documents of 80 words, each from one topic: a continuation mostly shares A's topic, a span
/// drawn elsewhere mostly does not, so the pair head can learn it (by comparing segments).
struct Topics {
    train: Vec<u32>,
    val: Vec<u32>,
}

impl Topics {
    fn new() -> Topics {
        let make = |docs: usize, seed: u64| {
            let mut rng = SplitMix64::new(seed);
            (0..docs)
                .flat_map(|_| {
                    let topic = rng.below(TOPICS as usize) as u32;
                    (0..80)
                        .map(|_| 4 + 4 * topic + rng.below(4) as u32)
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        Topics {
            train: make(100, 1),
            val: make(20, 2),
        }
    }
}

impl TokenData for Topics {
    fn vocab_size(&self) -> usize {
        VOCAB
    }
    fn len(&self, split: Split) -> usize {
        match split {
            Split::Train => self.train.len(),
            Split::Val => self.val.len(),
        }
    }
    fn read(&self, split: Split, start: usize, out: &mut [u32]) -> Result<()> {
        let src = match split {
            Split::Train => &self.train,
            Split::Val => &self.val,
        };
        out.copy_from_slice(&src[start..start + out.len()]);
        Ok(())
    }
}

/// The smallest model with a task head: `h = wte[id] + segment[type]`; MLM logits `h · Wᵀ`
/// per position; the head `tanh(max over the real positions of h) · Hᵀ + b`, which can tell one
/// topic from two (a pair's segments agreeing or not). (`bert` itself is a plugin dylib this
/// crate cannot link beside its own copy of `llmlab-nn`; the e2e tests run it.)
struct BagPair {
    wte: Var,
    segment: Var,
    lm: Var,
    head_weight: Var,
    head_bias: Var,
    head: RwLock<Option<Value>>,
}

const DIM: usize = 24;

fn bag_pair(seed: u64) -> BagPair {
    let mut rng = SplitMix64::new(seed);
    let mut init = |shape: (usize, usize)| {
        let values: Vec<f32> = (0..shape.0 * shape.1)
            .map(|_| (rng.next_unit() as f32 - 0.5) * 0.4)
            .collect();
        Var::from_tensor(&Tensor::from_vec(values, shape, &Device::Cpu).unwrap()).unwrap()
    };
    BagPair {
        wte: init((VOCAB, DIM)),
        segment: init((2, DIM)),
        lm: init((VOCAB, DIM)),
        head_weight: init((2, DIM)),
        head_bias: init((1, 2)),
        head: RwLock::new(None),
    }
}

impl BagPair {
    fn pass(&self, ids: &Tensor, inputs: &ForwardInputs) -> Result<ForwardOutput> {
        let (b, s) = ids.dims2()?;
        let types = match &inputs.token_type_ids {
            Some(t) => t.clone(),
            None => ids.zeros_like()?,
        };
        let h = (self.wte.as_tensor().index_select(&ids.flatten_all()?, 0)?
            + self
                .segment
                .as_tensor()
                .index_select(&types.flatten_all()?, 0)?)?
        .reshape((b, s, DIM))?;
        let logits = if inputs.head {
            if self.head.read().unwrap().is_none() {
                return Err(Error::msg("bag-pair: no task head"));
            }
            let real = match &inputs.attention_mask {
                Some(m) => m.to_dtype(DType::F32)?,
                None => Tensor::ones((b, s), DType::F32, &Device::Cpu)?,
            };
            let fill = ((real - 1.0)? * 1e9)?.unsqueeze(2)?;
            let pooled = h.broadcast_add(&fill)?.max(1)?.tanh()?;
            pooled
                .matmul(&self.head_weight.as_tensor().t()?)?
                .broadcast_add(self.head_bias.as_tensor())?
        } else {
            h.reshape((b * s, DIM))?
                .matmul(&self.lm.as_tensor().t()?)?
                .reshape((b, s, VOCAB))?
        };
        Ok(ForwardOutput {
            logits,
            aux_loss: None,
            hidden: None,
        })
    }
}

impl Model for BagPair {
    fn name(&self) -> &str {
        "bag-pair"
    }
    fn config(&self) -> Value {
        json!({ "vocab_size": VOCAB, "ctx": 16 })
    }
    fn vocab_size(&self) -> usize {
        VOCAB
    }
    fn ctx_len(&self) -> usize {
        16
    }
    fn device(&self) -> &Device {
        &Device::Cpu
    }
    fn forward(&self, ids: &Tensor, _: &ForwardOptions) -> Result<ForwardOutput> {
        self.pass(ids, &ForwardInputs::default())
    }
    fn forward_with(
        &self,
        ids: &Tensor,
        inputs: &ForwardInputs,
        _: &ForwardOptions,
    ) -> Result<ForwardOutput> {
        self.pass(ids, inputs)
    }
    fn forward_backward(
        &self,
        ids: &Tensor,
        options: &ForwardOptions,
        compute: DType,
        loss: &mut dyn FnMut(&ForwardOutput) -> Result<Tensor>,
    ) -> Result<GradStore> {
        self.forward_backward_with(ids, &ForwardInputs::default(), options, compute, loss)
    }
    fn forward_backward_with(
        &self,
        ids: &Tensor,
        inputs: &ForwardInputs,
        _: &ForwardOptions,
        _: DType,
        loss: &mut dyn FnMut(&ForwardOutput) -> Result<Tensor>,
    ) -> Result<GradStore> {
        Ok(loss(&self.pass(ids, inputs)?)?.backward()?)
    }
    fn set_head(&self, config: Option<&Value>) -> Result<Value> {
        *self.head.write().unwrap() = config.cloned();
        Ok(config.cloned().unwrap_or(Value::Null))
    }
    fn head(&self) -> Option<Value> {
        self.head.read().unwrap().clone()
    }
    fn new_cache(&self, _: usize) -> Result<Box<dyn KvCache>> {
        Err(Error::unsupported("bag-pair", "kv cache"))
    }
    fn forward_cached(&self, _: &Tensor, _: &mut dyn KvCache) -> Result<ForwardOutput> {
        Err(Error::unsupported("bag-pair", "kv cache"))
    }
    fn generate(
        &self,
        _: &[Vec<u32>],
        _: &GenerateOptions,
        _: &mut dyn FnMut(usize, u32) -> bool,
    ) -> Result<Vec<Vec<u32>>> {
        Err(Error::unsupported("bag-pair", "generate"))
    }
    fn parameters(&self) -> Vec<(String, Var)> {
        vec![
            ("head.bias".into(), self.head_bias.clone()),
            ("head.weight".into(), self.head_weight.clone()),
            ("lm.weight".into(), self.lm.clone()),
            ("segment.weight".into(), self.segment.clone()),
            ("wte.weight".into(), self.wte.clone()),
        ]
    }
    fn save(&self, _: &Path) -> Result<()> {
        Err(Error::unsupported("bag-pair", "save"))
    }
    fn frozen_copy(&self) -> Result<Box<dyn Model>> {
        Err(Error::unsupported("bag-pair", "frozen_copy"))
    }
}

fn train_config(steps: u64, next_sentence: f64) -> Value {
    json!({ "steps": steps, "batch_size": 16, "lr": 1e-2, "min_lr": 1e-3, "warmup": 10,
            "eval_every": steps, "eval_batches": 4, "log_every": 1, "seed": 5,
            "next_sentence": next_sentence, "pooling": "max" })
}

#[test]
fn the_pair_head_is_given_and_learns_to_tell_a_continuation() {
    let data = Topics::new();
    let job = TrainJob::tokens(&data).with_tokenizer(&Words);
    let model = bag_pair(1);
    let run = Arc::new(Recorder::default());
    let last = new_mlm_trainer(&train_config(600, 0.5))
        .unwrap()
        .fit(&model, &job, &context(run.clone(), None))
        .unwrap();
    let head = model.head().expect("the model got the pair head");
    assert_eq!(head["labels"], json!(["not_next", "is_next"]), "{head}");
    assert_eq!(head["pooling"], "max", "{head}");
    // Chance is 0.5; a continuation shares A's topic 5 times in 6 more often than a span drawn
    // elsewhere does, so a head that compares the segments gets well above it.
    let accuracy = last["val_next_sentence_accuracy"];
    assert!(accuracy > 0.7, "next-sentence accuracy {accuracy}");
    assert!(last["val_next_sentence_loss"] < 0.6, "{last:?}");
    assert!(
        last.contains_key("val_masked_accuracy"),
        "MLM is still evaluated: {last:?}"
    );

    // MLM only: no head, no pair metrics.
    let plain = bag_pair(1);
    let last = new_mlm_trainer(&train_config(4, 0.0))
        .unwrap()
        .fit(&plain, &job, &context(Arc::new(Recorder::default()), None))
        .unwrap();
    assert!(plain.head().is_none());
    assert!(!last.contains_key("val_next_sentence_accuracy"), "{last:?}");
}

#[test]
fn alternating_steps_resume_bit_exactly() {
    let data = Topics::new();
    let job = || TrainJob::tokens(&data).with_tokenizer(&Words);
    let config = || {
        let mut c = train_config(12, 0.5);
        c["eval_every"] = json!(3);
        c["checkpoint_every"] = json!(6);
        c
    };
    let straight_model = bag_pair(1);
    let straight = Arc::new(Recorder::default());
    new_mlm_trainer(&config())
        .unwrap()
        .fit(&straight_model, &job(), &context(straight.clone(), None))
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let first_model = bag_pair(1);
    let ctx = context(Arc::new(Recorder::default()), Some(dir.path()));
    let mut first = new_mlm_trainer(&config()).unwrap();
    let mut losses = Vec::new();
    for _ in 0..6 {
        losses.push(first.step(&first_model, &job(), &ctx).unwrap()["loss"]);
    }
    // Other initial weights (its own pair head too) and a fresh trainer.
    let resumed_model = bag_pair(9);
    let resumed = Arc::new(Recorder::default());
    let mut c = config();
    c["resume"] = json!(dir.path().to_str().unwrap());
    new_mlm_trainer(&c)
        .unwrap()
        .fit(
            &resumed_model,
            &job(),
            &context(resumed.clone(), Some(dir.path())),
        )
        .unwrap();
    losses.extend(resumed.losses().iter().map(|(_, l)| *l));
    let expected: Vec<f64> = straight.losses().iter().map(|(_, l)| *l).collect();
    assert_eq!(losses, expected);
    assert_eq!(snapshot(&resumed_model), snapshot(&straight_model));
    // Both kinds of step ran: a pair step's loss is a 2-way cross-entropy (near ln 2 at the
    // start), an MLM step's one over the vocabulary (near ln 28).
    assert!(expected.iter().any(|l| *l < 1.2), "{expected:?}");
    assert!(expected.iter().any(|l| *l > 2.5), "{expected:?}");
}

#[test]
fn bad_settings_and_models_without_heads_are_named() {
    for (key, value, named) in [
        ("next_sentence", json!(1.5), "`next_sentence`"),
        ("next_sentence", json!("yes"), "`next_sentence`"),
        ("pooling", json!("avg"), "cls, mean, max"),
    ] {
        let mut c = train_config(1, 0.5);
        c[key] = value;
        let err = new_mlm_trainer(&c).err().unwrap().to_string();
        assert!(err.contains(named), "{err}");
    }
    let data = Topics::new();
    let err = new_mlm_trainer(&train_config(1, 0.5))
        .unwrap()
        .fit(
            &Bigram::new(VOCAB, 8, 0),
            &TrainJob::tokens(&data).with_tokenizer(&Words),
            &context(Arc::new(Recorder::default()), None),
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("next_sentence") && err.contains("task head"),
        "{err}"
    );
}

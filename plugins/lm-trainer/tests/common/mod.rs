//! Test fixtures: a bigram language model (embedding + linear head with a bias) implementing
//! `Model` (mixed precision too), an in-memory token stream with a learnable pattern, a character tokenizer and
//! prompt/answer examples, and sinks that record metrics or cancel the run.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use llmlab_plugin_api::candle::backprop::GradStore;
use llmlab_plugin_api::candle::{DType, Device, Tensor, Var};
use llmlab_plugin_api::prelude::*;
use llmlab_plugin_api::{CancelFlag, MetricsSink, TextSource};

pub const VOCAB: usize = 12;

/// `logits[t] = W · wte[ids[t]] + b`: the smallest model that learns a bigram pattern.
pub struct Bigram {
    wte: Var,
    head_weight: Var,
    head_bias: Var,
    ctx_len: usize,
    device: Device,
}

impl Bigram {
    /// Deterministic weights; `variant` changes them (a "different" fresh model).
    pub fn new(dim: usize, ctx_len: usize, variant: u32) -> Bigram {
        let device = Device::Cpu;
        let init = |rows: usize, cols: usize, salt: f32| {
            let values: Vec<f32> = (0..rows * cols)
                .map(|i| ((i as f32 + 1.0) * (0.618 + salt + variant as f32 * 0.37)).sin() * 0.3)
                .collect();
            Var::from_tensor(&Tensor::from_vec(values, (rows, cols), &device).unwrap()).unwrap()
        };
        let bias = init(1, VOCAB, 0.2).as_tensor().reshape(VOCAB).unwrap();
        Bigram {
            wte: init(VOCAB, dim, 0.0),
            head_weight: init(VOCAB, dim, 0.1),
            head_bias: Var::from_tensor(&bias).unwrap(),
            ctx_len,
            device,
        }
    }

    /// The forward pass computing in `dtype` over casts of the (f32) weights.
    fn forward_in(&self, ids: &Tensor, dtype: DType) -> Result<ForwardOutput> {
        let (b, s) = ids.dims2()?;
        let cast = |v: &Var| v.as_tensor().to_dtype(dtype);
        let h = cast(&self.wte)?.index_select(&ids.flatten_all()?, 0)?;
        let logits = h
            .matmul(&cast(&self.head_weight)?.t()?)?
            .broadcast_add(&cast(&self.head_bias)?)?
            .reshape((b, s, VOCAB))?;
        Ok(ForwardOutput {
            logits,
            aux_loss: None,
            hidden: None,
        })
    }

    pub fn snapshot(&self) -> BTreeMap<String, Vec<f32>> {
        self.parameters()
            .into_iter()
            .map(|(n, v)| (n, v.flatten_all().unwrap().to_vec1().unwrap()))
            .collect()
    }
}

impl Model for Bigram {
    fn name(&self) -> &str {
        "bigram"
    }
    fn config(&self) -> Value {
        json!({ "vocab_size": VOCAB, "ctx": self.ctx_len })
    }
    fn vocab_size(&self) -> usize {
        VOCAB
    }
    fn ctx_len(&self) -> usize {
        self.ctx_len
    }
    fn device(&self) -> &Device {
        &self.device
    }
    fn forward(&self, ids: &Tensor, _: &ForwardOptions) -> Result<ForwardOutput> {
        self.forward_in(ids, DType::F32)
    }
    /// Mixed precision as the trait asks: weights cast for the pass, f32 logits, f32 gradients.
    fn forward_backward(
        &self,
        ids: &Tensor,
        _: &ForwardOptions,
        compute: DType,
        loss: &mut dyn FnMut(&ForwardOutput) -> Result<Tensor>,
    ) -> Result<GradStore> {
        let mut out = self.forward_in(ids, compute)?;
        out.logits = out.logits.to_dtype(DType::F32)?;
        Ok(loss(&out)?.backward()?)
    }
    fn new_cache(&self, _: usize) -> Result<Box<dyn KvCache>> {
        Err(Error::unsupported("bigram", "kv cache"))
    }
    fn forward_cached(&self, _: &Tensor, _: &mut dyn KvCache) -> Result<ForwardOutput> {
        Err(Error::unsupported("bigram", "kv cache"))
    }
    fn generate(
        &self,
        _: &[Vec<u32>],
        _: &GenerateOptions,
        _: &mut dyn FnMut(usize, u32) -> bool,
    ) -> Result<Vec<Vec<u32>>> {
        Err(Error::unsupported("bigram", "generate"))
    }
    fn parameters(&self) -> Vec<(String, Var)> {
        vec![
            ("lm_head.bias".into(), self.head_bias.clone()),
            ("lm_head.weight".into(), self.head_weight.clone()),
            ("wte.weight".into(), self.wte.clone()),
        ]
    }
    fn save(&self, _: &Path) -> Result<()> {
        Err(Error::unsupported("bigram", "save"))
    }
    fn frozen_copy(&self) -> Result<Box<dyn Model>> {
        Err(Error::unsupported("bigram", "frozen_copy"))
    }
}

/// A token stream following `0 1 2 .. 7` with a `9` after every `3` on even cycles: mostly
/// deterministic bigrams, so loss falls well below ln(VOCAB).
pub struct Pattern {
    pub train: Vec<u32>,
    pub val: Vec<u32>,
}

impl Pattern {
    pub fn new(train_len: usize, val_len: usize) -> Pattern {
        let make = |len: usize| {
            let mut out = Vec::with_capacity(len);
            let mut cycle = 0;
            while out.len() < len {
                for t in 0..8u32 {
                    out.push(t);
                    if t == 3 && cycle % 2 == 0 {
                        out.push(9);
                    }
                }
                cycle += 1;
            }
            out.truncate(len);
            out
        };
        Pattern {
            train: make(train_len),
            val: make(val_len),
        }
    }
}

impl TokenData for Pattern {
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
        let end = start + out.len();
        if end > src.len() {
            return Err(Error::Data(format!(
                "read {start}..{end} past {}",
                src.len()
            )));
        }
        out.copy_from_slice(&src[start..end]);
        Ok(())
    }
    fn vocab_size(&self) -> usize {
        VOCAB
    }
}

/// Characters `0-9`, `+`: ids 0..=10; end-of-text is 11.
#[derive(Clone)]
pub struct Chars;

pub const EOT: u32 = 11;

impl Tokenizer for Chars {
    fn name(&self) -> &str {
        "chars"
    }
    fn config(&self) -> Value {
        Value::Null
    }
    fn train(&mut self, _: &dyn TextSource, _: &Context) -> Result<()> {
        Ok(())
    }
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        text.chars()
            .map(|c| match c {
                '0'..='9' => Ok(c as u32 - '0' as u32),
                '+' => Ok(10),
                other => Err(Error::Data(format!("chars: no token for {other:?}"))),
            })
            .collect()
    }
    fn decode(&self, ids: &[u32]) -> Result<String> {
        Ok(ids
            .iter()
            .map(|&i| {
                if i < 10 {
                    char::from(b'0' + i as u8)
                } else {
                    '+'
                }
            })
            .collect())
    }
    fn vocab_size(&self) -> usize {
        VOCAB
    }
    fn token_to_id(&self, _: &str) -> Option<u32> {
        None
    }
    fn id_to_token(&self, _: u32) -> Option<String> {
        None
    }
    fn special_token(&self, role: SpecialToken) -> Option<u32> {
        (role == SpecialToken::EndOfText).then_some(EOT)
    }
    fn to_json(&self) -> Result<String> {
        Err(Error::unsupported("chars", "saving"))
    }
    fn clone_box(&self) -> Box<dyn Tokenizer> {
        Box::new(self.clone())
    }
}

/// "a+b" → the last digit of a + b, for single digits a, b.
pub struct Sums(pub Vec<Example>);

impl Sums {
    pub fn new(n: usize) -> Sums {
        Sums(
            (0..n)
                .map(|i| {
                    let (a, b) = (i % 10, (i * 7 + 3) % 10);
                    Example {
                        prompt: format!("{a}+{b}"),
                        answer: format!("{}", (a + b) % 10),
                        rejected: None,
                    }
                })
                .collect(),
        )
    }
}

impl ExampleSource for Sums {
    fn name(&self) -> String {
        "sums".into()
    }
    fn len(&self) -> usize {
        self.0.len()
    }
    fn get(&self, index: usize) -> Example {
        self.0[index].clone()
    }
}

/// Keeps every recorded metrics line; cancels `cancel` once `cancel_at` is recorded.
#[derive(Default)]
pub struct Recorder {
    pub lines: Mutex<Vec<(u64, BTreeMap<String, f64>)>>,
    pub cancel_at: Option<(u64, CancelFlag)>,
}

impl MetricsSink for Recorder {
    fn record(&self, step: u64, values: &BTreeMap<String, f64>) {
        self.lines.lock().unwrap().push((step, values.clone()));
        if let Some((at, flag)) = &self.cancel_at {
            if step == *at {
                flag.cancel();
            }
        }
    }
}

impl Recorder {
    pub fn losses(&self) -> Vec<(u64, f64)> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .map(|(s, m)| (*s, m["loss"]))
            .collect()
    }
}

pub fn context(recorder: Arc<Recorder>, run_dir: Option<&Path>) -> Context {
    let mut ctx = Context::cpu();
    ctx.metrics = recorder;
    ctx.run_dir = run_dir.map(Path::to_path_buf);
    ctx
}

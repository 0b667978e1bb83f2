//! What sits on the encoder's final states: the pooler (`bert.pooler.dense` + tanh on the
//! [CLS] position), the masked-LM head (`cls.predictions`: dense → GELU → LayerNorm → output
//! layer tied to the word embeddings, plus its own bias), and the task heads (`classifier`):
//! sequence classification and regression on the pooled state, token classification on every
//! position (Hugging Face's `BertFor*` layouts).

use llmlab_nn::dropout::Dropout;
use llmlab_nn::linear::{linear, Linear, INIT_STD};
use llmlab_nn::norm::{Norm, NormKind};
use llmlab_plugin_api::candle::{Module, Result, Tensor, D};
use llmlab_plugin_api::candle_nn::{Init, VarBuilder};

use crate::config::{Activation, BertConfig, HeadConfig, HeadKind};
use crate::layer::activate;

/// `tanh(dense(h[CLS]))`: the sequence summary sequence heads read.
#[derive(Debug, Clone)]
pub struct Pooler {
    dense: Linear,
}

impl Pooler {
    pub fn new(config: &BertConfig, vb: VarBuilder) -> Result<Pooler> {
        let d = config.d_model;
        Ok(Pooler {
            dense: linear(d, d, true, INIT_STD, vb.pp("dense"))?,
        })
    }

    /// `hidden` `(batch, seq, d)` → `(batch, d)`.
    pub fn forward(&self, hidden: &Tensor) -> Result<Tensor> {
        let first = hidden.narrow(1, 0, 1)?.squeeze(1)?;
        self.dense.forward(&first)?.tanh()
    }
}

/// The masked-LM head; its output layer is the word embedding matrix (tied).
#[derive(Debug, Clone)]
pub struct MlmHead {
    dense: Linear,
    norm: Norm,
    bias: Tensor,
    activation: Activation,
}

impl MlmHead {
    /// `vb` is `cls.predictions`.
    pub fn new(config: &BertConfig, vb: VarBuilder) -> Result<MlmHead> {
        let d = config.d_model;
        let t = vb.pp("transform");
        Ok(MlmHead {
            dense: linear(d, d, true, INIT_STD, t.pp("dense"))?,
            norm: Norm::new(NormKind::Layer, d, true, config.norm_eps, t.pp("LayerNorm"))?,
            bias: vb.get_with_hints(config.vocab_size, "bias", Init::Const(0.0))?,
            activation: config.activation,
        })
    }

    /// `hidden` `(batch, seq, d)` → logits `(batch, seq, vocab)`.
    pub fn forward(&self, hidden: &Tensor, word_embeddings: &Tensor) -> Result<Tensor> {
        let (b, t, d) = hidden.dims3()?;
        let h = self
            .norm
            .forward(&activate(self.activation, &self.dense.forward(hidden)?)?)?;
        h.reshape((b * t, d))?
            .matmul(&word_embeddings.t()?)?
            .broadcast_add(&self.bias)?
            .reshape((b, t, ()))
    }
}

/// A task head: dropout and one linear layer (`classifier`) on the pooled state (sequence,
/// regression) or on every final state (token).
#[derive(Debug, Clone)]
pub struct TaskHead {
    pub config: HeadConfig,
    classifier: Linear,
    dropout: Dropout,
}

impl TaskHead {
    /// `vb` is the model's root (the head's parameters are `classifier.{weight,bias}`).
    pub fn new(config: HeadConfig, model: &BertConfig, seed: u64, vb: VarBuilder) -> Result<Self> {
        let classifier = linear(
            model.d_model,
            config.num_labels,
            true,
            INIT_STD,
            vb.pp("classifier"),
        )?;
        Ok(TaskHead {
            config,
            classifier,
            dropout: Dropout::new(model.dropout, seed, "classifier"),
        })
    }

    /// `(batch, labels)` from `pooled` for sequence heads, `(batch, seq, labels)` from `hidden`
    /// for token heads.
    pub fn forward(&self, hidden: &Tensor, pooled: &Tensor, train: bool) -> Result<Tensor> {
        let x = match self.config.kind {
            HeadKind::Sequence | HeadKind::Regression => pooled,
            HeadKind::Token => hidden,
        };
        let x = if train && self.dropout.is_active() {
            self.dropout.forward(x)?
        } else {
            x.clone()
        };
        let y = self.classifier.forward(&x)?;
        debug_assert_eq!(y.dim(D::Minus1)?, self.config.num_labels);
        Ok(y)
    }
}

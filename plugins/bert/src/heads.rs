//! What sits on the encoder's final states: the pooler (`bert.pooler.dense` + tanh on the
//! [CLS] position, or on the mean or max over the real positions: `Pooling`), the masked-LM
//! head (`cls.predictions`: dense → GELU → LayerNorm → output layer tied to the word
//! embeddings, plus its own bias), and the task heads (`classifier`):
//! sequence classification and regression on the pooled state, token classification on every
//! position (Hugging Face's `BertFor*` layouts).

use llmlab_nn::dropout::Dropout;
use llmlab_nn::linear::{linear, Linear, INIT_STD};
use llmlab_nn::norm::{Norm, NormKind};
use llmlab_plugin_api::candle::{DType, Module, Result, Tensor, D};
use llmlab_plugin_api::candle_nn::{Init, VarBuilder};

use crate::config::{Activation, BertConfig, HeadConfig, HeadKind, Pooling};
use crate::layer::activate;

/// `tanh(dense(summary))`: what sequence heads read. The summary is `h[CLS]` (BERT), or the
/// mean or max of the real positions' states; the dense + tanh applies to all three, so the
/// head has the same parameters whatever the pooling and a pretrained pooler is still used.
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

    /// `hidden` `(batch, seq, d)` → `(batch, d)`, from [CLS].
    pub fn forward(&self, hidden: &Tensor) -> Result<Tensor> {
        self.forward_pooled(hidden, None, Pooling::Cls)
    }

    /// `hidden` `(batch, seq, d)` → `(batch, d)`; `mask` `(batch, seq)` marks the real
    /// positions (1) for mean and max pooling (unset: every position is real).
    pub fn forward_pooled(
        &self,
        hidden: &Tensor,
        mask: Option<&Tensor>,
        pooling: Pooling,
    ) -> Result<Tensor> {
        let summary = summarise(hidden, mask, pooling)?;
        self.dense.forward(&summary)?.tanh()
    }
}

/// The `(batch, d)` summary of `hidden` `(batch, seq, d)` that `pooling` names. Mean and max
/// leave padded positions out entirely (their states are meaningless and differ with the
/// batch's padding length), computed in f32 so the max's large negative fill cannot overflow
/// a half-precision dtype.
pub fn summarise(hidden: &Tensor, mask: Option<&Tensor>, pooling: Pooling) -> Result<Tensor> {
    let h = match pooling {
        Pooling::Cls => return hidden.narrow(1, 0, 1)?.squeeze(1),
        Pooling::Mean | Pooling::Max => hidden.to_dtype(DType::F32)?,
    };
    // (batch, seq, 1): 1 at real positions, 0 at padding.
    let real = match mask {
        Some(mask) => Some(mask.to_dtype(DType::F32)?.unsqueeze(2)?),
        None => None,
    };
    let out = match (pooling, real) {
        (Pooling::Mean, Some(real)) => {
            // A fully padded row (never made by the trainers) divides by 1, not 0.
            let count = real.sum(1)?.clamp(1f32, f32::MAX)?;
            h.broadcast_mul(&real)?.sum(1)?.broadcast_div(&count)?
        }
        (Pooling::Max, Some(real)) => {
            // Padding sits 1e9 below any real state, so it is never the maximum (and gets no
            // gradient); additive like the attention mask, so no NaN anywhere.
            let fill = ((real - 1.0)? * 1e9)?;
            h.broadcast_add(&fill)?.max(1)?
        }
        (Pooling::Max, None) => h.max(1)?,
        // Mean without a mask ([CLS] returned above).
        _ => h.mean(1)?,
    };
    out.to_dtype(hidden.dtype())
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

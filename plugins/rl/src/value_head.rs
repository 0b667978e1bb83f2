//! PPO's value head: a scalar linear map `V = w · h + b` of the policy's final hidden state at
//! each position (`ForwardOptions::hidden_states`), trained together with the policy (the body
//! is shared, as in InstructGPT and TRL's `ValueHead`). Starts at zero: `V = 0` everywhere.

use llmlab_plugin_api::candle::{DType, Tensor, Var};
use llmlab_plugin_api::prelude::*;

pub struct ValueHead {
    weight: Var,
    bias: Var,
}

pub fn no_hidden(model: &dyn Model) -> Error {
    Error::Data(format!(
        "the `{}` model returns no hidden states; a value head needs them (ForwardOptions::hidden_states)",
        model.name()
    ))
}

/// The width of `model`'s final hidden states, from a one-token no-grad pass; `missing` names
/// the head that needed them when the model returns none.
pub fn hidden_width(model: &dyn Model, missing: fn(&dyn Model) -> Error) -> Result<usize> {
    let probe = Tensor::zeros((1, 1), DType::U32, model.device())?;
    let out = model.forward(
        &probe,
        &ForwardOptions {
            hidden_states: true,
            ..ForwardOptions::inference()
        },
    )?;
    Ok(out.hidden.ok_or_else(|| missing(model))?.dim(2)?)
}

impl ValueHead {
    /// A zero head as wide as `model`'s hidden states.
    pub fn new(model: &dyn Model) -> Result<ValueHead> {
        let d_model = hidden_width(model, no_hidden)?;
        Ok(ValueHead {
            weight: Var::zeros(d_model, DType::F32, model.device())?,
            bias: Var::zeros(1, DType::F32, model.device())?,
        })
    }

    /// Values `(rows, seq)` of hidden states `(rows, seq, d)`.
    pub fn values(&self, hidden: &Tensor) -> Result<Tensor> {
        let (b, s, d) = hidden.dims3()?;
        let v = hidden
            .to_dtype(DType::F32)?
            .reshape((b * s, d))?
            .matmul(&self.weight.as_tensor().reshape((d, 1))?)?
            .reshape((b, s))?;
        Ok(v.broadcast_add(self.bias.as_tensor())?)
    }

    pub fn parameters(&self) -> Vec<(String, Var)> {
        vec![
            ("value_head.bias".into(), self.bias.clone()),
            ("value_head.weight".into(), self.weight.clone()),
        ]
    }

    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        self.parameters()
            .into_iter()
            .map(|(n, v)| (n, v.as_tensor().clone()))
            .collect()
    }
}

//! One MoE feed-forward layer: a router `(experts, d_model)`, the routed experts (each a
//! [`Mlp`] of width `expert_ffn_mult · d_model`), the shared experts every token passes through,
//! and the balancing state.
//!
//! Parameter names under the block's `mlp.`: `router.weight`, `experts.{e}.c_fc.weight`, ...,
//! `shared.{s}.c_fc.weight`, ...; state (no gradient, in checkpoints): `router.selection_bias`
//! and `router.pending_load`, and with `jitter` `router.jitter_draws`. The router runs in f32
//! whatever the compute dtype: its softmax decides the routing, and bf16 rounding would flip
//! near-ties between experts.

use llmlab_plugin_api::candle::{DType, Result, Tensor, Var, D};
use llmlab_plugin_api::candle_nn::{Init, VarBuilder};

use super::balance::{switch_balance, z_loss, SelectionBias};
use super::config::{Balance, MoeConfig, RouterKind};
use super::router::{route, Routing};
use super::stats::{LayerStats, StatsAccumulator};
use super::{experts, MoeAux, Pass};
use crate::config::GptConfig;
use crate::mlp::Mlp;
use llmlab_nn::linear::{Linear, INIT_STD};
use llmlab_nn::rng::Rng;

/// The state tensors' names end with these (relative to the block's `mlp.`).
pub const STATE_SUFFIXES: [&str; 3] = [
    "router.selection_bias",
    "router.pending_load",
    "router.jitter_draws",
];

/// Whether parameter-store entry `name` is MoE state rather than a trainable parameter.
pub fn is_state(name: &str) -> bool {
    STATE_SUFFIXES
        .iter()
        .any(|s| name.ends_with(&format!(".{s}")))
}

/// Expert choice is refused for incremental decoding: each expert picks its top tokens among
/// *all* tokens of the pass, so a token's routing depends on the tokens after it. A decoder
/// seeing one token at a time would route differently than the model was trained to.
pub fn refuse_incremental(config: &GptConfig) -> llmlab_plugin_api::Result<()> {
    match &config.moe {
        Some(moe) if moe.router == RouterKind::ExpertChoice => Err(llmlab_plugin_api::Error::msg(
            "gpt: a model with moe.router \"expert_choice\" cannot generate or decode with a KV \
             cache: each expert picks its top tokens among all tokens of the batch, so a token's \
             routing depends on the tokens after it (not causal), and decoding one token at a time \
             would route differently than training did. Use it to compare routers in training; \
             train with router \"topk\" or \"switch\" for a model that generates",
        )),
        _ => Ok(()),
    }
}

#[derive(Debug, Clone)]
pub struct Moe {
    config: MoeConfig,
    router: Tensor,
    experts: Vec<Mlp>,
    shared: Vec<Mlp>,
    bias: SelectionBias,
    jitter: Option<Jitter>,
    stats: StatsAccumulator,
}

/// The router noise's source. Pass `k` draws from its own stream (named by the layer and `k`),
/// and `k`, the training passes drawn so far, is state: a resumed run draws the noise the
/// uninterrupted run would have, and clones (the mixed-precision copy) share the count.
#[derive(Debug, Clone)]
struct Jitter {
    seed: u64,
    site: String,
    /// `(1,)` f64: exact for any count a run reaches.
    draws: Var,
}

impl Jitter {
    /// The next pass's noise, `n` values uniform in `[1 - amount, 1 + amount]`.
    fn draw(&self, n: usize, amount: f64) -> Result<Vec<f32>> {
        let k = self.draws.as_tensor().to_vec1::<f64>()?[0];
        let mut rng = Rng::for_name(self.seed, &format!("{}/{k}", self.site));
        self.draws
            .set(&Tensor::new(&[k + 1.0], self.draws.device())?)?;
        Ok((0..n)
            .map(|_| (1.0 - amount + 2.0 * amount * rng.uniform()) as f32)
            .collect())
    }
}

impl Moe {
    pub fn new(config: &GptConfig, moe: &MoeConfig, vb: VarBuilder) -> Result<Moe> {
        let expert_config = GptConfig {
            ffn_mult: moe.expert_ffn_mult.unwrap_or(config.ffn_mult),
            ..config.clone()
        };
        let e = moe.experts;
        let router_vb = vb.pp("router");
        let router = router_vb.get_with_hints(
            (e, config.d_model),
            "weight",
            Init::Randn {
                mean: 0.0,
                stdev: INIT_STD,
            },
        )?;
        let state =
            |name: &str| router_vb.get_with_hints_dtype(e, name, Init::Const(0.0), DType::F32);
        let bias = SelectionBias::new(
            &state("selection_bias")?,
            &state("pending_load")?,
            moe.bias_update_rate,
        )?;
        let experts = (0..e)
            .map(|i| Mlp::new(&expert_config, vb.pp("experts").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let shared = (0..moe.shared_experts)
            .map(|i| Mlp::new(&expert_config, vb.pp("shared").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let jitter = if moe.jitter > 0.0 {
            let draws =
                router_vb.get_with_hints_dtype(1, "jitter_draws", Init::Const(0.0), DType::F64)?;
            Some(Jitter {
                seed: config.seed.unwrap_or(0),
                site: format!("jitter/{}", vb.prefix()),
                draws: Var::from_tensor(&draws)?,
            })
        } else {
            None
        };
        Ok(Moe {
            config: moe.clone(),
            router,
            experts,
            shared,
            bias,
            jitter,
            stats: StatsAccumulator::default(),
        })
    }

    pub fn moe_config(&self) -> &MoeConfig {
        &self.config
    }

    /// Records statistics into `other`'s (a copy rebuilt per pass; the state is shared already).
    pub fn share_with(&mut self, other: &Moe) {
        for (mine, theirs) in self.experts.iter_mut().zip(&other.experts) {
            mine.share_dropout_with(theirs);
        }
        for (mine, theirs) in self.shared.iter_mut().zip(&other.shared) {
            mine.share_dropout_with(theirs);
        }
        self.stats.share(&other.stats);
    }

    /// The training statistics since the last call.
    pub fn take_stats(&self) -> Option<LayerStats> {
        self.stats.take_mean()
    }

    /// The expert linear layers by name relative to `mlp.` (`experts.3.c_fc`), for quantization.
    /// The router stays dense: it is small, and its rounding would move the routing.
    pub fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let mut layers = Vec::new();
        for (group, mlps) in [("experts", &mut self.experts), ("shared", &mut self.shared)] {
            for (i, mlp) in mlps.iter_mut().enumerate() {
                layers.extend(
                    mlp.linears_mut()
                        .into_iter()
                        .map(|(n, l)| (format!("{group}.{i}.{n}"), l)),
                );
            }
        }
        layers
    }

    /// The layer over `x` `(.., d_model)`, experts run grouped by expert.
    pub fn forward(&self, x: &Tensor, pass: Pass) -> Result<(Tensor, MoeAux)> {
        self.forward_with(x, pass, false)
    }

    /// The same function with every expert evaluated on every token and the weights zeroed off
    /// the chosen ones (the gradient checks' reference; total-parameter cost).
    pub fn forward_dense_reference(&self, x: &Tensor, pass: Pass) -> Result<(Tensor, MoeAux)> {
        self.forward_with(x, pass, true)
    }

    fn forward_with(&self, x: &Tensor, pass: Pass, dense: bool) -> Result<(Tensor, MoeAux)> {
        let dims = x.dims().to_vec();
        let d = *dims.last().unwrap_or(&1);
        let n = x.elem_count() / d.max(1);
        let e = self.config.experts;
        let flat = x.reshape((n, d))?;
        let router_in = match &self.jitter {
            Some(jitter) if pass.train() => {
                let noise = jitter.draw(n * d, self.config.jitter)?;
                let noise = Tensor::from_vec(noise, (n, d), x.device())?.to_dtype(x.dtype())?;
                (&flat * noise)?
            }
            _ => flat.clone(),
        };
        // f32 at least (an f64 model keeps f64: the gradient checks compare against it).
        let router_dtype = if x.dtype() == DType::F64 {
            DType::F64
        } else {
            DType::F32
        };
        let logits = router_in
            .matmul(&self.router.t()?)?
            .to_dtype(router_dtype)?;
        let probs = softmax(&logits)?;
        let mut scores: Vec<f32> = probs.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
        let entropy = scores
            .iter()
            .filter(|p| **p > 0.0)
            .map(|p| -(*p as f64) * (*p as f64).ln())
            .sum::<f64>()
            / n.max(1) as f64;
        if self.config.balance == Balance::AuxFree {
            if pass == Pass::Train {
                self.bias.apply_pending()?;
            }
            let bias = self.bias.values()?;
            for row in scores.chunks_mut(e) {
                for (s, b) in row.iter_mut().zip(&bias) {
                    *s += b;
                }
            }
        }
        let capacity = match self.config.router {
            RouterKind::Topk => None,
            RouterKind::Switch if pass.train() => Some(self.config.capacity(n)),
            RouterKind::Switch => None,
            RouterKind::ExpertChoice => Some(self.config.capacity(n)),
        };
        let routing = route(&scores, n, &self.config, capacity);
        if pass == Pass::Train && self.config.balance == Balance::AuxFree {
            self.bias.record(&routing.chosen)?;
        }
        let weights = self.weights(&probs, &routing)?;
        let mut y = if dense {
            experts::dense_reference(&self.experts, &flat, &weights, pass.train())?
        } else {
            experts::grouped(&self.experts, &flat, &weights, &routing, pass.train())?
        };
        for shared in &self.shared {
            y = (y + shared.forward(&flat, pass.train())?)?;
        }

        let mut loss: Option<Tensor> = None;
        let (mut aux_value, mut z_value) = (0.0, 0.0);
        if self.config.balance == Balance::AuxLoss && self.config.aux_loss_coef > 0.0 {
            let aux =
                switch_balance(&probs, &routing.chosen)?.affine(self.config.aux_loss_coef, 0.0)?;
            aux_value = aux.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            loss = Some(aux);
        }
        if self.config.z_loss_coef > 0.0 {
            let z = z_loss(&logits)?.affine(self.config.z_loss_coef, 0.0)?;
            z_value = z.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            loss = Some(match loss {
                Some(aux) => (aux + z)?,
                None => z,
            });
        }
        let total_chosen = routing.chosen.iter().sum::<usize>().max(1) as f64;
        let stats = LayerStats {
            load: routing
                .chosen
                .iter()
                .map(|&c| c as f64 / total_chosen)
                .collect(),
            dropped: routing.dropped as f64 / n.max(1) as f64,
            entropy,
            aux_loss: aux_value,
            z_loss: z_value,
        };
        if pass == Pass::Train {
            self.stats.add(&stats);
        }
        Ok((y.reshape(dims)?, MoeAux { loss, stats }))
    }

    /// The weight of each assignment, `(tokens, experts)` f32, zero elsewhere: the router
    /// probabilities, renormalised over the chosen experts for `topk` with `normalize_top_k`
    /// (not at `top_k` 1, where every weight would be 1 and the router would get no gradient).
    fn weights(&self, probs: &Tensor, routing: &Routing) -> Result<Tensor> {
        let mask = Tensor::from_vec(routing.mask.clone(), probs.dims2()?, probs.device())?
            .to_dtype(probs.dtype())?;
        let chosen = (probs * mask)?;
        let c = &self.config;
        if c.router == RouterKind::Topk && c.normalize_top_k && c.top_k > 1 {
            let sum = chosen.sum_keepdim(D::Minus1)?;
            chosen.broadcast_div(&sum)
        } else {
            Ok(chosen)
        }
    }
}

/// Softmax over the last dimension from differentiable ops, max-shifted.
fn softmax(logits: &Tensor) -> Result<Tensor> {
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let exp = logits.broadcast_sub(&max)?.exp()?;
    exp.broadcast_div(&exp.sum_keepdim(D::Minus1)?)
}

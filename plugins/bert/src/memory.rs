//! What a `bert` config costs: its parameter count, checked against the memory budget before
//! any weight is made.

use crate::config::BertConfig;

/// Parameters of `c` without a task head (embeddings, layers, pooler, MLM head).
pub fn parameter_count(c: &BertConfig) -> f64 {
    let (v, d, ff) = (c.vocab_size as f64, c.d_model as f64, c.d_ff() as f64);
    let embeddings = (v + c.ctx as f64 + c.type_vocab_size as f64) * d + 2.0 * d;
    let layer = 4.0 * (d * d + d) + 2.0 * d * ff + ff + d + 4.0 * d;
    let heads = (d * d + d) + (d * d + d) + 2.0 * d + v;
    embeddings + c.n_layer as f64 * layer + heads
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmlab_plugin_api::candle::{DType, Device};
    use llmlab_plugin_api::Model;

    #[test]
    fn count_matches_the_built_model() {
        let config = BertConfig {
            vocab_size: 50,
            n_layer: 2,
            n_head: 2,
            d_model: 8,
            ctx: 16,
            ..BertConfig::default()
        };
        let model = crate::Bert::new(
            config.clone(),
            llmlab_nn::params::Source::Init { seed: 1 },
            &Device::Cpu,
            DType::F32,
        )
        .unwrap();
        assert_eq!(model.num_params() as f64, parameter_count(&config));
    }
}

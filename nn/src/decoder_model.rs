//! [`decoder_model_methods!`]: the `Model` methods that a model generating through the engine
//! ([`crate::generate`]) writes exactly alike: its vocabulary, context and device (the
//! `Decoder`'s answers), `generate` (the engine: every decoding option, beam search, the
//! streaming callback), and the per-sequence KV-cache methods it does not offer (the engine
//! keeps its own `Decoder::Cache`; what needs `new_cache`, serving's continuous batching, is
//! refused naming the model). A model with its own `KvCache` writes those two itself.

#[doc(hidden)]
pub use llmlab_plugin_api as __api;

/// Inside `impl Model for T` where `T: Decoder`: `vocab_size`, `ctx_len`, `device`,
/// `generate`, `new_cache` and `forward_cached`.
#[macro_export]
macro_rules! decoder_model_methods {
    () => {
        fn vocab_size(&self) -> usize {
            <Self as $crate::Decoder>::vocab_size(self)
        }
        fn ctx_len(&self) -> usize {
            <Self as $crate::Decoder>::ctx_len(self)
        }
        fn device(&self) -> &$crate::decoder_model::__api::candle::Device {
            <Self as $crate::Decoder>::device(self)
        }
        fn generate(
            &self,
            prompts: &[Vec<u32>],
            options: &$crate::decoder_model::__api::GenerateOptions,
            on_token: &mut dyn FnMut(usize, u32) -> bool,
        ) -> $crate::decoder_model::__api::Result<Vec<Vec<u32>>> {
            $crate::generate(self, prompts, options, on_token)
        }
        fn new_cache(
            &self,
            _batch: usize,
        ) -> $crate::decoder_model::__api::Result<Box<dyn $crate::decoder_model::__api::model::KvCache>>
        {
            Err($crate::decoder_model::__api::Error::unsupported(
                $crate::decoder_model::__api::Model::name(self),
                "per-sequence KV caches (it generates through llmlab_nn::generate)",
            ))
        }
        fn forward_cached(
            &self,
            _ids: &$crate::decoder_model::__api::candle::Tensor,
            _cache: &mut dyn $crate::decoder_model::__api::model::KvCache,
        ) -> $crate::decoder_model::__api::Result<$crate::decoder_model::__api::model::ForwardOutput>
        {
            Err($crate::decoder_model::__api::Error::unsupported(
                $crate::decoder_model::__api::Model::name(self),
                "per-sequence KV caches (it generates through llmlab_nn::generate)",
            ))
        }
    };
}

//! Linear layers: dense with GPT-2 initialisation (weight `(out, in)` from N(0, std), bias
//! zeros), or with a quantized weight after `Model::quantized` / a GGUF load.
//!
//! Stored as `torch.nn.Linear` stores them (nanoGPT); Hugging Face GPT-2 keeps its `Conv1D`
//! weights transposed, `(in, out)`, and `hf.rs` transposes them on import.
//!
//! A quantized weight may be wider than the layer's input: quantizers zero-pad rows to their
//! block size (`(out, in_padded)`), so the input is zero-padded to match before the product.
//! Quantized products run in f32 (candle's kernels; a q4_0 weight's products through
//! [`ops::quant_rows`], which returns the same bits) and are not differentiable.
//!
//! A dense layer can also be *fake-quantized* for quantization-aware training: its weight goes
//! through the quantizer's quantize-dequantize (straight-through gradient) on every forward pass.
//! The switch is a slot shared by the layer's clones, set through `Model::set_fake_quant`,
//! because models are shared (`Arc<dyn Model>`) and switched while others hold them.

use std::sync::{Arc, RwLock};

use llmlab_plugin_api::Quantizer;

use llmlab_plugin_api::candle::quantized::{GgmlDType, QMatMul, QTensor};
use llmlab_plugin_api::candle::{DType, Device, Module, Result, Storage, Tensor, D};
use llmlab_plugin_api::candle_nn::{self, Init, VarBuilder};

use crate::ops::{self, Kernels};
use crate::pruning::Pruning;

/// What stands in for a layer's product when set: a LoRA adapter (`gpt`'s `lora.rs`) holds the
/// layer's frozen weight and adds its trained low-rank update.
pub trait LinearAdapter: Send + Sync + std::fmt::Debug {
    fn forward(&self, x: &Tensor) -> Result<Tensor>;
}

/// GPT-2's init for every weight matrix and embedding.
pub const INIT_STD: f64 = 0.02;

/// A linear layer `y = x·Wᵀ + b`.
#[derive(Debug, Clone)]
pub enum Linear {
    Dense(DenseLinear),
    Quantized(QuantizedLinear),
}

/// The quantizer a dense layer's weight is fake-quantized with, if any.
pub type FakeQuantSlot = Arc<RwLock<Option<Arc<dyn Quantizer>>>>;

/// A dense linear layer, optionally fake-quantized (QAT).
#[derive(Clone)]
pub struct DenseLinear {
    inner: candle_nn::Linear,
    fake_quant: FakeQuantSlot,
    /// LoRA ([`LinearAdapter`]): when set, the layer is the adapter's frozen base plus its update.
    adapter: Option<Arc<dyn LinearAdapter>>,
    /// Pruning ([`crate::pruning`]): the weight's keep-mask and the calibration recorder, shared by the
    /// layer's clones.
    pruning: Arc<RwLock<Pruning>>,
    /// `Fused`: [`ops::linear`] (bias in the gemm, own backward); `Reference`: candle's `Linear`.
    kernels: Kernels,
}

impl std::fmt::Debug for DenseLinear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DenseLinear")
            .field("inner", &self.inner)
            .field(
                "fake_quant",
                &self.fake_quantizer().map(|q| q.name().to_string()),
            )
            .finish()
    }
}

impl DenseLinear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        DenseLinear {
            inner: candle_nn::Linear::new(weight, bias),
            fake_quant: FakeQuantSlot::default(),
            adapter: None,
            pruning: Arc::default(),
            kernels: Kernels::Fused,
        }
    }

    /// The same layer on the fused op or candle's composed `Linear` (`gpt`'s `kernels` key).
    pub fn with_kernels(self, kernels: Kernels) -> Self {
        DenseLinear { kernels, ..self }
    }

    fn product(&self, x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        match self.kernels {
            Kernels::Fused => ops::linear(x, weight, bias),
            Kernels::Reference => ops::linear::linear_reference(x, weight, bias),
        }
    }

    pub fn weight(&self) -> &Tensor {
        self.inner.weight()
    }

    /// Fake-quantize the weight with `quantizer` from the next forward pass on (`None`: off).
    pub fn set_fake_quant(&self, quantizer: Option<Arc<dyn Quantizer>>) {
        *self.fake_quant.write().unwrap_or_else(|p| p.into_inner()) = quantizer;
    }

    pub fn fake_quantizer(&self) -> Option<Arc<dyn Quantizer>> {
        self.fake_quant
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The pruning state: keep-mask and calibration statistics ([`crate::pruning`]).
    pub fn pruning(&self) -> &Arc<RwLock<Pruning>> {
        &self.pruning
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mask = {
            let pruning = self.pruning.read().unwrap_or_else(|p| p.into_inner());
            if let Some(record) = &pruning.recorder {
                record.add(x)?;
            }
            pruning.mask.clone()
        };
        let quantizer = self.fake_quantizer();
        if mask.is_none() && quantizer.is_none() {
            return self.product(x, self.inner.weight(), self.inner.bias());
        }
        // Masked, a pruned weight stays zero in the product and gets no gradient, so further
        // training keeps the sparsity.
        let mut weight = self.inner.weight().clone();
        if let Some(mask) = mask {
            weight = weight.mul(&mask.to_dtype(weight.dtype())?)?;
        }
        if let Some(quantizer) = quantizer {
            weight = quantizer
                .fake_quantize(&weight)
                .map_err(|e| llmlab_plugin_api::candle::Error::Msg(e.to_string()))?;
        }
        self.product(x, &weight, self.inner.bias())
    }
}

/// A linear layer whose weight is a GGML block tensor.
#[derive(Debug, Clone)]
pub struct QuantizedLinear {
    weight: Arc<QTensor>,
    matmul: QMatMul,
    bias: Option<Tensor>,
    /// The layer's input width (the weight's unpadded row length).
    in_dim: usize,
    /// QLoRA ([`LinearAdapter`]): the adapter over this frozen quantized weight.
    adapter: Option<Arc<dyn LinearAdapter>>,
}

impl QuantizedLinear {
    /// `weight` `(out, in_padded)` for a layer of input width `in_dim`.
    pub fn new(weight: Arc<QTensor>, bias: Option<Tensor>, in_dim: usize) -> Result<Self> {
        let (_, padded) = weight.shape().dims2()?;
        if padded < in_dim {
            llmlab_plugin_api::candle::bail!(
                "quantized weight of shape {:?} is narrower than the layer's input width {in_dim}",
                weight.shape().dims()
            );
        }
        Ok(QuantizedLinear {
            matmul: QMatMul::from_arc(weight.clone())?,
            weight,
            bias,
            in_dim,
            adapter: None,
        })
    }

    pub fn in_dim(&self) -> usize {
        self.in_dim
    }

    pub fn weight(&self) -> &Arc<QTensor> {
        &self.weight
    }

    /// The product through [`ops::quant_rows`] when it applies: a q4_0 weight, f32 input on the
    /// CPU, any number of rows (batched decoding and prefill alike). Its numbers are the bits
    /// `QMatMul` returns (on an AVX2 CPU), so which of the two runs never changes a sequence's
    /// output. `None`: `QMatMul`'s turn (other formats, other devices, the kernel switched off).
    fn quant_rows(&self, x: &Tensor) -> Result<Option<Tensor>> {
        // The portable path is a reference: slower than candle's own fallbacks (scalar
        // `mul_add` without FMA hardware), and off x86 candle sums differently anyway. So
        // `LLMLAB_QUANT_ROWS=portable` also switches the kernel off, an end-to-end A/B knob.
        if self.weight.dtype() != GgmlDType::Q4_0
            || ops::quant_rows::Path::detect() == ops::quant_rows::Path::Portable
            || !ops::fused_path(x)
            || !matches!(self.weight.device(), Device::Cpu)
        {
            return Ok(None);
        }
        let (out_dim, padded) = self.weight.shape().dims2()?;
        let rows = x.elem_count() / padded.max(1);
        if rows == 0 || x.dim(D::Minus1)? != padded {
            return Ok(None);
        }
        let w = self.weight.data()?;
        let (storage, layout) = x.storage_and_layout();
        let Storage::Cpu(storage) = &*storage else {
            return Ok(None);
        };
        let xs = ops::layout::f32_data(storage, layout, "quant_rows")?;
        let y = ops::quant_rows::forward_q4_0(&xs, &w, rows, padded, out_dim);
        let mut dims = x.dims().to_vec();
        *dims.last_mut().expect("a linear input has a last dim") = out_dim;
        Tensor::from_vec(y, dims, &Device::Cpu).map(Some)
    }
}

impl Linear {
    /// A dense layer on the fused op or candle's composed `Linear`; quantized layers keep
    /// candle's quantized kernels either way.
    pub fn set_kernels(&mut self, kernels: Kernels) {
        if let Linear::Dense(l) = self {
            l.kernels = kernels;
        }
    }

    /// The LoRA adapter wrapping this layer, if any.
    pub fn adapter(&self) -> Option<&Arc<dyn LinearAdapter>> {
        match self {
            Linear::Dense(l) => l.adapter.as_ref(),
            Linear::Quantized(q) => q.adapter.as_ref(),
        }
    }

    /// Wraps the layer with `adapter` (`None`: the plain layer again).
    pub fn set_adapter(&mut self, adapter: Option<Arc<dyn LinearAdapter>>) {
        match self {
            Linear::Dense(l) => l.adapter = adapter,
            Linear::Quantized(q) => q.adapter = adapter,
        }
    }

    /// The bias, dense in both forms.
    pub fn bias(&self) -> Option<&Tensor> {
        match self {
            Linear::Dense(l) => l.inner.bias(),
            Linear::Quantized(q) => q.bias.as_ref(),
        }
    }

    /// `(out, in)` of the layer (the unpadded shape for a quantized weight).
    pub fn dims(&self) -> Result<(usize, usize)> {
        match self {
            Linear::Dense(l) => l.weight().dims2(),
            Linear::Quantized(q) => Ok((q.weight.shape().dims2()?.0, q.in_dim)),
        }
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(adapter) = self.adapter() {
            return adapter.forward(x);
        }
        match self {
            Linear::Dense(l) => l.forward(x),
            Linear::Quantized(q) => {
                let dtype = x.dtype();
                let mut x = x.to_dtype(DType::F32)?;
                let padded = q.weight.shape().dims2()?.1;
                if padded > q.in_dim {
                    x = x.pad_with_zeros(D::Minus1, 0, padded - q.in_dim)?;
                }
                let x = x.contiguous()?;
                let y = match q.quant_rows(&x)? {
                    Some(y) => y,
                    None => q.matmul.forward(&x)?,
                };
                let y = match &q.bias {
                    Some(b) => y.broadcast_add(&b.to_dtype(DType::F32)?)?,
                    None => y,
                };
                y.to_dtype(dtype)
            }
        }
    }
}

/// `weight` `(out, in)` ~ N(0, std²) and, with `bias`, `bias` zeros, under `vb`.
pub fn linear(
    in_dim: usize,
    out_dim: usize,
    bias: bool,
    std: f64,
    vb: VarBuilder,
) -> Result<Linear> {
    let weight = vb.get_with_hints(
        (out_dim, in_dim),
        "weight",
        Init::Randn {
            mean: 0.0,
            stdev: std,
        },
    )?;
    let bias = if bias {
        Some(vb.get_with_hints(out_dim, "bias", Init::Const(0.0))?)
    } else {
        None
    };
    Ok(Linear::Dense(DenseLinear::new(weight, bias)))
}

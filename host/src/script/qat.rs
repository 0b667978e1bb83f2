//! Quantization-aware training from scripts. Two ways in:
//!
//! ```rhai
//! trainer("lm", #{ steps: 200, qat: "q4_0" }).fit(gpt, ds);        // QAT for this trainer's runs
//! trainer("lm", #{ qat: #{ scheme: "q4_0", skip: ["lm_head"] } });  // + skip, quantizer config
//! fake_quant(gpt, "q4_0", #{ skip: ["lm_head"] });  // by hand: every forward pass from now on
//! fake_quant(gpt, ());                              // off again
//! ```
//!
//! The `qat` key belongs to the host, not to the trainer plugin: a trainer cannot make a
//! quantizer (another plugin's component), so the host builds it, switches the model's dense
//! linear layers to fake-quantized weights for the duration of `fit`/`step`, and switches them
//! back afterwards, also when the run fails. `skip` means what it means to `quantize`, so a QAT
//! run trains exactly the layers `quantize(model, scheme, #{ skip })` will round.

use std::sync::Arc;

use llmlab_plugin_api::serde_json::Value;
use llmlab_plugin_api::Model;
use rhai::{Dynamic, Engine, Map};

use super::model::ModelHandle;
use super::quant::{quantizer, split_options};
use super::rhai_json::json_to_dynamic;
use super::{plugin_call, script_error, Host, QuantizerHandle, ScriptResult};

/// The host-owned trainer key.
pub const QAT_KEY: &str = "qat";

/// A trainer's QAT setting: the quantizer whose rounding the model trains under.
pub struct Qat {
    quantizer: QuantizerHandle,
    skip: Vec<String>,
    /// As given (after `--set` overrides), for the run's recorded config.
    spec: Value,
}

impl Qat {
    /// Parses `qat: "q4_0"` or `qat: #{ scheme, skip, <quantizer keys> }`.
    pub fn from_json(host: &Host, spec: Value) -> ScriptResult<Qat> {
        let (scheme, options) = match &spec {
            Value::String(scheme) => (scheme.clone(), Map::new()),
            Value::Object(fields) => {
                let mut options = json_to_dynamic(&Value::Object(fields.clone()))
                    .try_cast::<Map>()
                    .unwrap_or_default();
                let scheme = options
                    .remove("scheme")
                    .and_then(|s| s.into_string().ok())
                    .ok_or_else(|| {
                        script_error(
                            "qat: a map needs `scheme`, e.g. #{ scheme: \"q4_0\", skip: [\"lm_head\"] }",
                        )
                    })?;
                (scheme, options)
            }
            other => {
                return Err(script_error(format!(
                "qat: expected a scheme name (\"q4_0\") or a map #{{ scheme, skip }}, got {other}"
            )))
            }
        };
        let (skip, config) = split_options(options)?;
        let quantizer = quantizer(host, &scheme, config)?;
        Ok(Qat {
            quantizer,
            skip,
            spec,
        })
    }

    pub fn spec(&self) -> &Value {
        &self.spec
    }

    /// Runs `call` with `model` fake-quantized, and turns fake quantization off afterwards.
    pub fn around<T>(
        &self,
        model: &dyn Model,
        call: impl FnOnce() -> ScriptResult<T>,
    ) -> ScriptResult<T> {
        plugin_call(model.name(), || {
            model.set_fake_quant(Some(self.quantizer.0.clone()), &self.skip)
        })?;
        let result = call();
        let off = plugin_call(model.name(), || model.set_fake_quant(None, &[]));
        let value = result?;
        off?;
        Ok(value)
    }
}

/// Removes the host's `qat` key from a trainer config (after overrides) and parses it.
pub fn take_qat(host: &Host, config: &mut Value) -> ScriptResult<Option<Arc<Qat>>> {
    let spec = match config {
        Value::Object(fields) => fields.remove(QAT_KEY),
        _ => None,
    };
    match spec {
        None | Some(Value::Null) => Ok(None),
        Some(spec) => Ok(Some(Arc::new(Qat::from_json(host, spec)?))),
    }
}

/// Switches `model` to fake quantization with `scheme`; `options` as `quantize`'s.
fn switch_on(host: &Host, model: &ModelHandle, scheme: &str, options: Map) -> ScriptResult<()> {
    let (skip, config) = split_options(options)?;
    let q = quantizer(host, scheme, config)?;
    plugin_call(model.0.name(), || model.0.set_fake_quant(Some(q.0), &skip))
}

pub fn register(engine: &mut Engine, host: &Arc<Host>) {
    let h = host.clone();
    engine.register_fn(
        "fake_quant",
        move |model: ModelHandle, scheme: &str, options: Map| {
            switch_on(&h, &model, scheme, options)
        },
    );
    let h = host.clone();
    engine.register_fn("fake_quant", move |model: ModelHandle, scheme: &str| {
        switch_on(&h, &model, scheme, Map::new())
    });
    engine.register_fn("fake_quant", |model: ModelHandle, _off: ()| {
        plugin_call(model.0.name(), || model.0.set_fake_quant(None, &[]))
    });
    engine.register_fn("fake_quant", |model: &mut ModelHandle| -> Dynamic {
        model.0.fake_quant().map_or(Dynamic::UNIT, Dynamic::from)
    });
}

/// The recorded trainer config: the plugin's resolved config plus the host's `qat`.
pub fn with_qat(mut config: Value, qat: Option<&Qat>) -> Value {
    if let (Some(qat), Value::Object(fields)) = (qat, &mut config) {
        fields.insert(QAT_KEY.to_string(), qat.spec().clone());
    }
    config
}

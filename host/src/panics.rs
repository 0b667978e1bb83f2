//! Turning panics in plugin code into errors: the one place the host calls `catch_unwind`.
//! With the shared runtime (one panic runtime for host and plugins) unwinding across the
//! plugin boundary is caught like any other Rust panic.
//!
//! A panic is reported as the component's that raised it, not only the one the host called:
//! a model's `forward` panicking while the `lm` trainer runs reads "panic in model `charlstm`
//! (Model::forward_backward, called by lm): ...". The panic hook ([`install_hook`]) finds, in the
//! stack, the innermost call into a component trait implementation (`<charlstm::CharLstm as
//! llmlab_plugin_api::model::Model>::forward`), and the registry tells which component that
//! crate's type is ([`know_components`]).

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Mutex, RwLock};

use llmlab_plugin_api::Kind;

/// The text of a panic payload.
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.to_string()
    } else {
        "(panic payload is not a string)".to_string()
    }
}

/// Where a panic was raised: the innermost component trait method on the stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PanicOrigin {
    /// The implementing type's path, `charlstm::CharLstm`.
    pub type_path: String,
    /// The trait, `Model`.
    pub trait_name: String,
    pub method: String,
}

impl PanicOrigin {
    /// The crate of the implementing type (its path's first segment).
    pub fn crate_name(&self) -> &str {
        self.type_path.split("::").next().unwrap_or("")
    }

    /// The component kind a trait belongs to (the generation engine's `Decoder` is a model's).
    fn kind(&self) -> Option<Kind> {
        Some(match self.trait_name.as_str() {
            "Model" | "KvCache" | "Decoder" => Kind::Model,
            "Tokenizer" => Kind::Tokenizer,
            "Trainer" | "Objective" => Kind::Trainer,
            "Aligner" | "RewardFn" => Kind::Aligner,
            "Quantizer" => Kind::Quantizer,
            "Corpus" | "TextSource" | "ExampleSource" => Kind::Corpus,
            _ => return None,
        })
    }
}

/// The crates whose traits count as component traits in a stack frame.
const TRAIT_CRATES: [&str; 3] = ["llmlab_plugin_api::", "llmlab_nn::", "llmlab_train::"];

/// The innermost `<Type as llmlab_plugin_api::…::Trait>::method` frame of a rendered backtrace.
pub fn origin_in(backtrace: &str) -> Option<PanicOrigin> {
    backtrace.lines().find_map(|line| {
        let line = line.trim();
        let (before, after) = TRAIT_CRATES
            .iter()
            .find_map(|c| line.split_once(&format!(" as {c}")))?;
        let type_path = before.split_once('<').map_or(before, |(_, t)| t);
        let type_path = type_path.split(['<', ' ']).next()?.trim_start_matches('&');
        let (trait_path, rest) = after.split_once(">::")?;
        let trait_name = trait_path.rsplit("::").next()?.split('<').next()?;
        let method: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        (!type_path.is_empty() && !method.is_empty()).then(|| PanicOrigin {
            type_path: type_path.to_string(),
            trait_name: trait_name.to_string(),
            method,
        })
    })
}

/// The origin of the latest panic (the hook runs on the panicking thread, which for a rayon
/// task is not the thread that catches it, hence one slot for the process).
static LAST_ORIGIN: Mutex<Option<PanicOrigin>> = Mutex::new(None);

/// `(crate name, kind, component name)` of every registered component.
static COMPONENTS: RwLock<Vec<(String, Kind, String)>> = RwLock::new(Vec::new());

/// Tells the panic reports which crate provides which components.
pub fn know_components(components: impl IntoIterator<Item = (String, Kind, String)>) {
    let mut known = COMPONENTS.write().unwrap_or_else(|p| p.into_inner());
    known.extend(components);
}

/// Sets the process's panic hook: the location goes to the debug log (`-vv`), the origin to
/// [`guard`]'s report.
pub fn install_hook() {
    std::panic::set_hook(Box::new(|info| {
        llmlab_plugin_api::tracing::debug!("panic: {info}");
        let backtrace = std::backtrace::Backtrace::force_capture().to_string();
        *LAST_ORIGIN.lock().unwrap_or_else(|p| p.into_inner()) = origin_in(&backtrace);
    }));
}

/// "model `charlstm` (Model::forward)" for an origin in another component than `what`;
/// `None` when the panic came from `what` itself or from no component trait at all.
fn describe_origin(origin: &PanicOrigin, what: &str) -> Option<String> {
    let kind = origin.kind()?;
    let known = COMPONENTS.read().unwrap_or_else(|p| p.into_inner());
    let names: Vec<&str> = known
        .iter()
        .filter(|(krate, k, _)| krate == origin.crate_name() && *k == kind)
        .map(|(_, _, name)| name.as_str())
        .collect();
    if names.contains(&what) {
        return None;
    }
    let component = match names.as_slice() {
        [name] => format!("{kind} `{name}`"),
        _ => format!("{kind} {}", origin.type_path),
    };
    Some(format!(
        "{component} ({}::{}, called by {what})",
        origin.trait_name, origin.method
    ))
}

/// Runs `f`; a panic becomes `Err("panic in <what>: <message>")`, or, when the panic was raised
/// inside another component that `what` called, `Err("panic in model `x` (Model::forward,
/// called by <what>): <message>")`.
pub fn guard<T>(what: &str, f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        let message = panic_message(&*payload);
        let origin = LAST_ORIGIN.lock().unwrap_or_else(|p| p.into_inner()).take();
        match origin.and_then(|o| describe_origin(&o, what)) {
            Some(component) => format!("panic in {component}: {message}"),
            None => format!("panic in {what}: {message}"),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "   0: std::backtrace::Backtrace::force_capture
   1: llmlab::panics::install_hook::{{closure}}
   2: std::panicking::rust_panic_with_hook
  12: charlstm::lstm::step
  13: <charlstm::CharLstm as llmlab_plugin_api::model::Model>::forward_backward::{{closure}}
  14: <charlstm::CharLstm as llmlab_plugin_api::model::Model>::forward_backward
  15: <llmlab_lm_trainer::lm::Lm as llmlab_plugin_api::trainer::Trainer>::fit
  16: llmlab::panics::guard
";

    #[test]
    fn the_innermost_component_frame_is_the_origin() {
        let origin = origin_in(TRACE).unwrap();
        assert_eq!(
            origin,
            PanicOrigin {
                type_path: "charlstm::CharLstm".into(),
                trait_name: "Model".into(),
                method: "forward_backward".into(),
            }
        );
        assert_eq!(origin.crate_name(), "charlstm");
        assert_eq!(
            origin_in("   0: main\n   1: core::ops::function::FnOnce::call_once"),
            None
        );
        // Generic types and references.
        let origin =
            origin_in("  3: <&mymodel::Net<f32> as llmlab_nn::generate::Decoder>::step").unwrap();
        assert_eq!(
            (origin.type_path.as_str(), origin.trait_name.as_str()),
            ("mymodel::Net", "Decoder")
        );
    }

    #[test]
    fn a_panic_inside_a_called_component_names_it_and_the_caller() {
        know_components([
            ("charlstm".to_string(), Kind::Model, "charlstm".to_string()),
            (
                "llmlab_lm_trainer".to_string(),
                Kind::Trainer,
                "lm".to_string(),
            ),
        ]);
        let origin = origin_in(TRACE).unwrap();
        assert_eq!(
            describe_origin(&origin, "lm").as_deref(),
            Some("model `charlstm` (Model::forward_backward, called by lm)")
        );
        // A panic in the called component itself is just that component's.
        assert_eq!(describe_origin(&origin, "charlstm"), None);
        // End to end through the hook and guard.
        install_hook();
        let error = guard("lm", || {
            <Probe as llmlab_plugin_api::RewardFn>::score(&Probe, "", "").unwrap()
        })
        .unwrap_err();
        let _ = std::panic::take_hook();
        assert!(error.starts_with("panic in aligner"), "{error}");
        assert!(
            error.contains("RewardFn::score, called by lm") && error.contains("probe panicked"),
            "{error}"
        );
    }

    struct Probe;

    impl llmlab_plugin_api::RewardFn for Probe {
        #[inline(never)]
        fn score(&self, _: &str, _: &str) -> llmlab_plugin_api::Result<f64> {
            panic!("probe panicked")
        }
    }
}

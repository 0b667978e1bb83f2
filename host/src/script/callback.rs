//! Rhai closures where plugins expect callbacks: [`ClosureReward`] wraps `|prompt, completion|`
//! as a [`RewardFn`]; a script error or a non-number result becomes an error naming the sample.

use llmlab_plugin_api::{Error, RewardFn};
use rhai::{Dynamic, Engine, FnPtr, NativeCallContext, FLOAT};

use super::ScriptResult;

/// A script closure scoring completions; valid for the duration of the native call that made it.
pub struct ClosureReward<'a> {
    context: &'a NativeCallContext<'a>,
    closure: FnPtr,
}

impl<'a> ClosureReward<'a> {
    pub fn new(context: &'a NativeCallContext<'a>, closure: FnPtr) -> Self {
        ClosureReward { context, closure }
    }
}

impl RewardFn for ClosureReward<'_> {
    fn score(&self, prompt: &str, completion: &str) -> llmlab_plugin_api::Result<f64> {
        let sample = || format!("prompt {prompt:?}, completion {completion:?}");
        let value: Dynamic = self
            .closure
            .call_within_context(self.context, (prompt.to_string(), completion.to_string()))
            .map_err(|e| Error::msg(format!("reward function failed on {}: {e}", sample())))?;
        value
            .as_float()
            .or_else(|_| value.as_int().map(|i| i as FLOAT))
            .map_err(|t| {
                Error::msg(format!(
                    "reward function returned {t}, not a number, on {}",
                    sample()
                ))
            })
    }
}

/// `reward_check(f, prompt, completion)`: calls `f` exactly as a training loop would, for trying
/// a reward closure at the REPL before a long run.
pub fn register(engine: &mut Engine) {
    engine.register_fn(
        "reward_check",
        |context: NativeCallContext,
         f: FnPtr,
         prompt: &str,
         completion: &str|
         -> ScriptResult<FLOAT> {
            let reward = ClosureReward::new(&context, f);
            reward
                .score(prompt, completion)
                .map_err(super::script_error)
        },
    );
}

#[cfg(test)]
mod tests {
    use rhai::Engine;

    fn engine() -> Engine {
        let mut engine = Engine::new();
        super::register(&mut engine);
        engine
    }

    #[test]
    fn closure_scores_through_the_reward_trait() {
        let e = engine();
        let score: f64 = e
            .eval(r#"let target = "42"; reward_check(|p, c| if c == target { 1.0 } else { 0.1 }, "6*7=", "42")"#)
            .unwrap();
        assert_eq!(score, 1.0);
        let score: f64 = e
            .eval(r#"reward_check(|p, c| c.len(), "p", "abc")"#)
            .unwrap();
        assert_eq!(score, 3.0);
    }

    #[test]
    fn non_number_and_throwing_closures_name_the_sample() {
        let e = engine();
        let err = e
            .eval::<f64>(r#"reward_check(|p, c| "yes", "2+2=", "4")"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("not a number") && err.contains("\"2+2=\""),
            "{err}"
        );
        let err = e
            .eval::<f64>(r#"reward_check(|p, c| throw "bad", "2+2=", "5")"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("reward function failed") && err.contains("\"5\""),
            "{err}"
        );
    }
}

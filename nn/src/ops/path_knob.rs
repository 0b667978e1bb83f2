//! Picking a kernel's instruction-set path: the fastest this CPU runs, unless an environment
//! variable names another (an end-to-end A/B of the paths in one binary, as
//! `LLMLAB_STOCK_BACKPROP` is for the backward). Shared by the few-rows kernels
//! ([`super::few_rows`], [`super::quant_rows`]).

use std::fmt::Debug;

/// The first of `paths` (fastest first, the last one portable) that `available` accepts, or
/// the one `var` names by its entry in `paths` when this CPU runs it. A name that is unknown or
/// not runnable here is reported on stderr and ignored: a misspelt A/B knob must not stop a
/// server, and must not go unnoticed.
pub fn choose<P: Copy + Debug>(var: &str, paths: &[(&str, P)], available: impl Fn(P) -> bool) -> P {
    let fastest = paths
        .iter()
        .map(|&(_, p)| p)
        .find(|&p| available(p))
        .expect("the last path runs anywhere");
    let Some(chosen) = std::env::var_os(var) else {
        return fastest;
    };
    let named = chosen
        .to_str()
        .and_then(|c| paths.iter().find(|(name, _)| *name == c))
        .map(|&(_, p)| p);
    match named {
        Some(path) if available(path) => path,
        _ => {
            let names: Vec<&str> = paths.iter().map(|(n, _)| *n).collect();
            eprintln!(
                "{var}={chosen:?} is not a path this CPU runs ({}); using {fastest:?}",
                names.join(", ")
            );
            fastest
        }
    }
}

//! Turning panics in plugin code into errors: the one place the host calls `catch_unwind`.
//! With the shared runtime (one panic runtime for host and plugins) unwinding across the
//! plugin boundary is caught like any other Rust panic.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// The text of a panic payload.
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(panic payload is not a string)".to_string()
    }
}

/// Runs `f`; a panic becomes `Err("panic in <what>: <message>")`.
pub fn guard<T>(what: &str, f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f))
        .map_err(|payload| format!("panic in {what}: {}", panic_message(&*payload)))
}

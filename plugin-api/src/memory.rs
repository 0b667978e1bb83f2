//! Memory budgets: refusing, before allocating, what cannot fit.
//!
//! Rust aborts the process when an allocation fails ("memory allocation of N bytes failed",
//! exit 134), and a large enough request that the kernel overcommits grows until the machine
//! swaps or the OOM killer steps in. Neither tells the researcher which setting was too big. So
//! every place that sizes memory from a user's number (a model's parameters and activations from
//! its config, a tensor's shape, a corpus size, a vocabulary) estimates the bytes first and calls
//! [`ensure_fits`], which refuses an estimate over [`available_bytes`] with a message naming the
//! key, its value and the size.
//!
//! The budget is the smallest of `MemAvailable` in `/proc/meminfo` and what the process's cgroup
//! (v2 `memory.max`, v1 `memory.limit_in_bytes`) still allows. `LLMLAB_MEMORY_BYTES` replaces it
//! (a byte count), for a machine where swap or overcommit should be used on purpose. Where none
//! of these can be read (not Linux), nothing is refused.

use crate::{Error, Result};

/// The environment variable that sets the budget, in bytes.
pub const BUDGET_ENV: &str = "LLMLAB_MEMORY_BYTES";

/// The memory budget: its size and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    pub bytes: u64,
    pub source: String,
}

/// What this process may still allocate, or `None` where it cannot be known.
pub fn available_bytes() -> Option<Budget> {
    if let Ok(text) = std::env::var(BUDGET_ENV) {
        if let Ok(bytes) = text.trim().parse::<u64>() {
            return Some(Budget {
                bytes,
                source: BUDGET_ENV.into(),
            });
        }
    }
    let meminfo = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| mem_available(&text))
        .map(|bytes| Budget {
            bytes,
            source: "MemAvailable in /proc/meminfo".into(),
        });
    let cgroup = cgroup_headroom().map(|bytes| Budget {
        bytes,
        source: "the cgroup's memory limit".into(),
    });
    match (meminfo, cgroup) {
        (Some(m), Some(c)) => Some(if c.bytes < m.bytes { c } else { m }),
        (m, c) => m.or(c),
    }
}

/// `MemAvailable` from `/proc/meminfo`'s text, in bytes.
fn mem_available(meminfo: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let rest = line.strip_prefix("MemAvailable:")?;
        let kib: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kib.saturating_mul(1024))
    })
}

/// The cgroup's limit minus its usage, when this process is in a limited cgroup.
fn cgroup_headroom() -> Option<u64> {
    let membership = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    for line in membership.lines() {
        // v2: "0::/path"; v1: "N:memory:/path" (or "N:...,memory,...:/path").
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let path = path.trim_start_matches('/');
        let read = |dir: &str, file: &str| -> Option<u64> {
            let base = std::path::Path::new(dir);
            let candidates = [base.join(path).join(file), base.join(file)];
            candidates.iter().find_map(|p| {
                std::fs::read_to_string(p)
                    .ok()
                    .and_then(|t| t.trim().parse::<u64>().ok())
            })
        };
        if controllers.is_empty() {
            let limit = read("/sys/fs/cgroup", "memory.max")?;
            let used = read("/sys/fs/cgroup", "memory.current").unwrap_or(0);
            return Some(limit.saturating_sub(used));
        }
        if controllers.split(',').any(|c| c == "memory") {
            let limit = read("/sys/fs/cgroup/memory", "memory.limit_in_bytes")?;
            // v1 reports "no limit" as a huge page-rounded number.
            if limit >= 1 << 60 {
                return None;
            }
            let used = read("/sys/fs/cgroup/memory", "memory.usage_in_bytes").unwrap_or(0);
            return Some(limit.saturating_sub(used));
        }
    }
    None
}

/// `bytes` for people: `1.5 GiB`, `12.0 EiB`, `512 B`.
pub fn human_bytes(bytes: f64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut value = bytes;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value:.0} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// The refusal text when about `bytes` (an estimate; `f64` so that products of huge settings
/// cannot overflow) for `what` exceed `budget`; `None` when they fit or the budget is unknown.
/// `what` names the setting and its value (`` `d_model` = 1000000000 ``); `lower` says what to
/// change.
pub fn over_budget(budget: Option<&Budget>, what: &str, bytes: f64, lower: &str) -> Option<String> {
    let budget = budget?;
    if bytes.is_finite() && bytes <= budget.bytes as f64 {
        return None;
    }
    let size = if bytes.is_finite() {
        format!("about {}", human_bytes(bytes))
    } else {
        "more bytes than can be counted".to_string()
    };
    Some(format!(
        "{what} needs {size} of memory, more than the {} available ({}); {lower}",
        human_bytes(budget.bytes as f64),
        budget.source
    ))
}

/// [`over_budget`] as an error of `component`'s config.
pub fn ensure_fits_in(
    budget: Option<&Budget>,
    component: &str,
    what: &str,
    bytes: f64,
    lower: &str,
) -> Result<()> {
    match over_budget(budget, what, bytes, lower) {
        Some(message) => Err(Error::invalid_config(component, message)),
        None => Ok(()),
    }
}

/// [`ensure_fits_in`] against [`available_bytes`].
pub fn ensure_fits(component: &str, what: &str, bytes: f64, lower: &str) -> Result<()> {
    ensure_fits_in(available_bytes().as_ref(), component, what, bytes, lower)
}

/// [`over_budget`] against [`available_bytes`], for `TypedConfig::validate` (a `String` error).
pub fn check_fits(what: &str, bytes: f64, lower: &str) -> std::result::Result<(), String> {
    match over_budget(available_bytes().as_ref(), what, bytes, lower) {
        Some(message) => Err(message),
        None => Ok(()),
    }
}

/// Refuses a count (`n`, `vocab_size`, an array length) over `max`, naming it: for sizes bounded
/// by a format or by sense rather than by memory.
pub fn ensure_at_most(component: &str, key: &str, value: f64, max: f64, why: &str) -> Result<()> {
    if value.is_finite() && value <= max {
        return Ok(());
    }
    Err(Error::invalid_config(
        component,
        format!("`{key}` = {value} is more than {max} ({why})"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_is_read_in_bytes() {
        let text = "MemTotal:       16337436 kB\nMemFree:  1 kB\nMemAvailable:   12000000 kB\n";
        assert_eq!(mem_available(text), Some(12_000_000 * 1024));
        assert_eq!(mem_available("MemTotal: 3 kB\n"), None);
    }

    #[test]
    fn over_budget_is_refused_naming_the_key_and_the_size() {
        let budget = Budget {
            bytes: 8 << 30,
            source: "test".into(),
        };
        assert!(ensure_fits_in(Some(&budget), "gpt", "x", 1e9, "lower it").is_ok());
        let error = ensure_fits_in(
            Some(&budget),
            "gpt",
            "`d_model` = 1000000000",
            4e18,
            "lower `d_model`",
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("`d_model` = 1000000000")
                && error.contains("3.5 EiB")
                && error.contains("8.0 GiB available (test)")
                && error.contains("lower `d_model`"),
            "{error}"
        );
        let error = ensure_fits_in(Some(&budget), "t", "x", f64::INFINITY, "no")
            .unwrap_err()
            .to_string();
        assert!(error.contains("more bytes than can be counted"), "{error}");
        assert!(ensure_fits_in(None, "gpt", "x", 1e30, "").is_ok());
    }

    #[test]
    fn this_machine_has_a_budget() {
        let budget = available_bytes().expect("Linux has /proc/meminfo");
        assert!(budget.bytes > 0, "{budget:?}");
        assert_eq!(human_bytes(512.0), "512 B");
        assert_eq!(human_bytes(1536.0), "1.5 KiB");
    }
}

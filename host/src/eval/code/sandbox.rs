//! The Rhai sandbox that runs model-written code: a fresh, bare engine per sample (no host
//! functions, no `import`, no `eval`, `print` discarded) with limits on operations, call depth,
//! string/array/map sizes, expression depth and wall-clock time. Every way a program can fail is
//! a [`Failure`] with a name, so one bad sample is a failed sample and the run goes on.
//!
//! What it does not protect against (docs/eval.md): the limits are checked by the interpreter, so
//! they hold for Rhai code only (there is no native code to escape to: only Rhai's standard
//! packages are registered); memory is bounded per value, not in total (many arrays just under
//! the limit still add up, within the operation limit; a map grown key by key is bounded by the
//! operation limit only, as Rhai checks its map limit on literals and merges); it runs on the
//! caller's thread.

use std::fmt;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rhai::packages::{Package, StandardPackage};
use rhai::{Dynamic, Engine, EvalAltResult, Scope, Shared, AST};

/// The limits one sample runs under.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_operations: u64,
    pub max_call_depth: usize,
    pub max_string_bytes: usize,
    pub max_array_len: usize,
    pub max_map_len: usize,
    pub max_expr_depth: usize,
    pub wall_clock: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_operations: 200_000,
            max_call_depth: 32,
            max_string_bytes: 10_000,
            max_array_len: 10_000,
            max_map_len: 1_000,
            max_expr_depth: 64,
            // A backstop for the operation limit, generous so a loaded machine fails no sample.
            wall_clock: Duration::from_secs(2),
        }
    }
}

/// Why a sample failed.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    Syntax(String),
    /// The program defines no function with this name and number of parameters.
    MissingFunction {
        name: String,
        arity: usize,
    },
    OperationLimit(u64),
    CallDepthLimit(usize),
    /// A string, array or map grew past its limit (`what` says which).
    SizeLimit(String),
    TimeLimit(Duration),
    Runtime(String),
    WrongAnswer {
        call: String,
        expected: String,
        got: String,
    },
}

impl Failure {
    /// The short name reports count failures by.
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::Syntax(_) => "syntax error",
            Failure::MissingFunction { .. } => "missing function",
            Failure::OperationLimit(_) => "operation limit",
            Failure::CallDepthLimit(_) => "call depth limit",
            Failure::SizeLimit(_) => "size limit",
            Failure::TimeLimit(_) => "time limit",
            Failure::Runtime(_) => "runtime error",
            Failure::WrongAnswer { .. } => "wrong answer",
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Syntax(e) => write!(f, "syntax error: {e}"),
            Failure::MissingFunction { name, arity } => {
                write!(
                    f,
                    "missing function: no `fn {name}` with {arity} parameter(s)"
                )
            }
            Failure::OperationLimit(n) => write!(f, "operation limit: more than {n} operations"),
            Failure::CallDepthLimit(n) => write!(f, "call depth limit: calls nested past {n}"),
            Failure::SizeLimit(what) => write!(f, "size limit: {what}"),
            Failure::TimeLimit(t) => write!(f, "time limit: ran past {} ms", t.as_millis()),
            Failure::Runtime(e) => write!(f, "runtime error: {e}"),
            Failure::WrongAnswer {
                call,
                expected,
                got,
            } => write!(
                f,
                "wrong answer: {call} returned {got}, expected {expected}"
            ),
        }
    }
}

/// Rhai's standard packages, built once and shared by every sandbox engine (read only).
fn standard_package() -> Shared<rhai::Module> {
    static PACKAGE: OnceLock<Shared<rhai::Module>> = OnceLock::new();
    PACKAGE
        .get_or_init(|| StandardPackage::new().as_shared_module())
        .clone()
}

/// A fresh engine with only the standard packages and the limits, whose clock starts now.
fn engine(limits: &Limits) -> Engine {
    let mut engine = Engine::new_raw();
    engine.register_global_module(standard_package());
    engine.disable_symbol("eval");
    engine.disable_symbol("import");
    engine.on_print(|_| {});
    engine.on_debug(|_, _, _| {});
    engine.set_max_operations(limits.max_operations);
    engine.set_max_call_levels(limits.max_call_depth);
    engine.set_max_string_size(limits.max_string_bytes);
    engine.set_max_array_size(limits.max_array_len);
    engine.set_max_map_size(limits.max_map_len);
    engine.set_max_expr_depths(limits.max_expr_depth, limits.max_expr_depth);
    let deadline = Instant::now() + limits.wall_clock;
    engine.on_progress(move |_| (Instant::now() > deadline).then(|| Dynamic::from("time limit")));
    engine
}

/// A compiled program in its own engine.
pub struct Program {
    engine: Engine,
    ast: AST,
    limits: Limits,
}

impl Program {
    /// Compiles `code` in a fresh engine (its clock starts here).
    pub fn compile(code: &str, limits: &Limits) -> Result<Program, Failure> {
        let engine = engine(limits);
        let ast = engine
            .compile(code)
            .map_err(|e| Failure::Syntax(e.to_string()))?;
        Ok(Program {
            engine,
            ast,
            limits: *limits,
        })
    }

    /// Calls `name(args)`; the program's top-level statements run first, under the same limits.
    pub fn call(&self, name: &str, args: Vec<Dynamic>) -> Result<Dynamic, Failure> {
        let arity = args.len();
        if !self
            .ast
            .iter_functions()
            .any(|f| f.name == name && f.params.len() == arity)
        {
            return Err(Failure::MissingFunction {
                name: name.to_string(),
                arity,
            });
        }
        // A panic inside the interpreter must not take the evaluation run with it.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.engine
                .call_fn::<Dynamic>(&mut Scope::new(), &self.ast, name, args)
        }))
        .map_err(|_| Failure::Runtime("the interpreter panicked".into()))?;
        result.map_err(|e| self.failure(*e))
    }

    fn failure(&self, error: EvalAltResult) -> Failure {
        match error {
            EvalAltResult::ErrorTooManyOperations(_) => {
                Failure::OperationLimit(self.limits.max_operations)
            }
            EvalAltResult::ErrorStackOverflow(_) => {
                Failure::CallDepthLimit(self.limits.max_call_depth)
            }
            EvalAltResult::ErrorDataTooLarge(what, _) => Failure::SizeLimit(format!(
                "{what} (limits: strings {} bytes, arrays {} items, maps {} entries)",
                self.limits.max_string_bytes, self.limits.max_array_len, self.limits.max_map_len
            )),
            EvalAltResult::ErrorTerminated(..) => Failure::TimeLimit(self.limits.wall_clock),
            // Errors inside a called function arrive wrapped; the cause is what matters.
            EvalAltResult::ErrorInFunctionCall(_, _, inner, _)
            | EvalAltResult::ErrorInModule(_, inner, _) => self.failure(*inner),
            other => Failure::Runtime(other.to_string()),
        }
    }
}

/// Runs `code`'s `name` on each `(args, expected)` case; the first mismatch or failure is the
/// verdict. Each program gets a fresh engine.
pub fn run_tests(
    code: &str,
    name: &str,
    cases: &[(Vec<Dynamic>, Dynamic)],
    limits: &Limits,
) -> Result<(), Failure> {
    let program = Program::compile(code, limits)?;
    for (args, expected) in cases {
        let got = program.call(name, args.clone())?;
        if !same_value(&got, expected) {
            return Err(Failure::WrongAnswer {
                call: format!("{name}({})", show_args(args)),
                expected: show(expected),
                got: show(&got),
            });
        }
    }
    Ok(())
}

/// Equality of test values (integers, booleans, strings, arrays of them), by type and value.
fn same_value(a: &Dynamic, b: &Dynamic) -> bool {
    if let (Some(x), Some(y)) = (a.read_lock::<rhai::Array>(), b.read_lock::<rhai::Array>()) {
        return x.len() == y.len() && x.iter().zip(y.iter()).all(|(p, q)| same_value(p, q));
    }
    a.type_name() == b.type_name() && a.to_string() == b.to_string()
}

fn show(value: &Dynamic) -> String {
    if value.is_string() {
        format!("{:?}", value.to_string())
    } else if let Some(array) = value.read_lock::<rhai::Array>() {
        format!("[{}]", show_args(&array))
    } else {
        value.to_string()
    }
}

fn show_args(args: &[Dynamic]) -> String {
    args.iter().map(show).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cases(pairs: &[(i64, i64)]) -> Vec<(Vec<Dynamic>, Dynamic)> {
        pairs
            .iter()
            .map(|&(x, y)| (vec![Dynamic::from(x)], Dynamic::from(y)))
            .collect()
    }

    #[test]
    fn a_right_program_passes_and_a_wrong_one_names_the_call() {
        let tests = cases(&[(1, 2), (5, 10)]);
        let limits = Limits::default();
        assert_eq!(run_tests("fn f(x) { x * 2 }", "f", &tests, &limits), Ok(()));
        let err = run_tests("fn f(x) { x + 1 }", "f", &tests, &limits).unwrap_err();
        assert_eq!(
            err.to_string(),
            "wrong answer: f(5) returned 6, expected 10"
        );
        let err = run_tests("fn g(x) { x }", "f", &tests, &limits).unwrap_err();
        assert_eq!(err.kind(), "missing function");
        let err = run_tests("fn f(x) { x * }", "f", &tests, &limits).unwrap_err();
        assert_eq!(err.kind(), "syntax error");
    }

    /// The hostile programs of the issue: each fails its own sample with a named reason, and the
    /// next sample runs normally.
    #[test]
    fn infinite_loop_deep_recursion_and_huge_allocation_fail_by_name() {
        let tests = cases(&[(3, 3)]);
        // The clock is tested below; here each program must meet its own limit first.
        let limits = Limits {
            wall_clock: Duration::from_secs(60),
            ..Limits::default()
        };
        let hostile = [
            ("fn f(x) { loop { x += 1; } }", "operation limit"),
            ("fn f(x) { f(x + 1) }", "call depth limit"),
            (
                "fn f(x) { let a = []; a.pad(1_000_000_000, 0); a.len() }",
                "size limit",
            ),
            ("fn f(x) { let s = \"ab\"; loop { s += s; } }", "size limit"),
            ("fn f(x) { let a = [x]; loop { a += a; } }", "size limit"),
            // Rhai does not count keys added by index assignment against the map limit; the
            // operation limit bounds such a map instead.
            (
                "fn f(x) { let m = #{}; for i in 0..10000000 { m[`k${i}`] = i; } 0 }",
                "operation limit",
            ),
            ("fn f(x) { eval(\"1\") }", "syntax error"),
            ("fn f(x) { import \"os\" as os; 1 }", "syntax error"),
            ("fn f(x) { open_file(\"/etc/passwd\") }", "runtime error"),
        ];
        for (code, kind) in hostile {
            let err = run_tests(code, "f", &tests, &limits).unwrap_err();
            assert_eq!(err.kind(), kind, "{code}: {err}");
            // The run goes on: the next, well-behaved sample passes.
            assert_eq!(run_tests("fn f(x) { x }", "f", &tests, &limits), Ok(()));
        }
        // The wall clock catches what the operation count allows but the clock does not.
        let slow = Limits {
            max_operations: 0, // unlimited
            wall_clock: Duration::from_millis(50),
            ..Limits::default()
        };
        let started = Instant::now();
        let err = run_tests("fn f(x) { loop { x += 1; } }", "f", &tests, &slow).unwrap_err();
        assert_eq!(err.kind(), "time limit", "{err}");
        assert!(started.elapsed() < Duration::from_secs(30));
    }
}

//! The code tasks: a short spec in a comment, and the model writes a Rhai function `f` that meets
//! it (`// return x plus 3` → `fn f(x) { x + 3 }`). Problems come from a seeded generator in three
//! difficulty levels; the spec determines the problem, so a prompt alone is enough to check an
//! answer: the answer is compiled in a fresh sandbox ([`super::sandbox`]) and run on hidden tests
//! drawn from the prompt, and passes only if every result is exactly right.
//!
//! Levels: `easy`, one arithmetic expression; `medium`, two arguments or a condition; `hard`, a
//! loop over an array or a range, or recursion.

use std::fmt;

use llmlab_plugin_api::rng::SplitMix64;
use llmlab_plugin_api::{Error, Example, ExampleSource, Result, TextSource};
use rhai::{Array, Dynamic, INT};

use super::sandbox::{self, Failure, Limits};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Easy,
    Medium,
    Hard,
}

impl Level {
    pub const NAMES: [&'static str; 3] = ["easy", "medium", "hard"];

    pub fn from_name(name: &str) -> Result<Level> {
        match name {
            "easy" => Ok(Level::Easy),
            "medium" => Ok(Level::Medium),
            "hard" => Ok(Level::Hard),
            other => Err(Error::Data(format!(
                "code tasks: unknown level {other:?}; levels: easy, medium, hard"
            ))),
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Easy => "easy",
            Level::Medium => "medium",
            Level::Hard => "hard",
        })
    }
}

/// One problem: what `f` must compute. `k`/`m` are the constants in its spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Problem {
    Plus(INT),
    Minus(INT),
    Times(INT),
    Modulo(INT),
    Squared,
    Negated,
    Larger,
    Smaller,
    Absolute,
    IsEven,
    GreaterThan(INT),
    Linear(INT, INT),
    SumOfArray,
    CountGreater(INT),
    LargestItem,
    SumUpTo,
    Factorial,
    Reversed,
    EachTimes(INT),
}

/// The argument shape of a problem (what its hidden tests pass).
#[derive(Clone, Copy)]
enum Args {
    Int,
    SmallInt,
    TwoInts,
    IntArray,
}

impl Problem {
    fn level(self) -> Level {
        use Problem::*;
        match self {
            Plus(_) | Minus(_) | Times(_) | Modulo(_) | Squared | Negated => Level::Easy,
            Larger | Smaller | Absolute | IsEven | GreaterThan(_) | Linear(..) => Level::Medium,
            _ => Level::Hard,
        }
    }

    fn draw(level: Level, rng: &mut SplitMix64) -> Problem {
        use Problem::*;
        let k = 2 + rng.below(8) as INT;
        let m = 1 + rng.below(20) as INT;
        match level {
            Level::Easy => [Plus(m), Minus(m), Times(k), Modulo(k), Squared, Negated][rng.below(6)],
            Level::Medium => [
                Larger,
                Smaller,
                Absolute,
                IsEven,
                GreaterThan(m),
                Linear(k, m),
            ][rng.below(6)],
            Level::Hard => [
                SumOfArray,
                CountGreater(k),
                LargestItem,
                SumUpTo,
                Factorial,
                Reversed,
                EachTimes(k),
            ][rng.below(7)],
        }
    }

    /// The spec line (the prompt is `// <spec>\n`).
    fn spec(self) -> String {
        use Problem::*;
        match self {
            Plus(m) => format!("return x plus {m}"),
            Minus(m) => format!("return x minus {m}"),
            Times(k) => format!("return x times {k}"),
            Modulo(k) => format!("return x modulo {k}"),
            Squared => "return x squared".into(),
            Negated => "return x negated".into(),
            Larger => "return the larger of x and y".into(),
            Smaller => "return the smaller of x and y".into(),
            Absolute => "return the absolute value of x".into(),
            IsEven => "return whether x is even".into(),
            GreaterThan(m) => format!("return whether x is greater than {m}"),
            Linear(k, m) => format!("return x times {k} plus {m}"),
            SumOfArray => "return the sum of the array a".into(),
            CountGreater(k) => format!("return how many items of a are greater than {k}"),
            LargestItem => "return the largest item of a".into(),
            SumUpTo => "return the sum of 1 to x".into(),
            Factorial => "return the factorial of x".into(),
            Reversed => "return the array a reversed".into(),
            EachTimes(k) => format!("return each item of a times {k}"),
        }
    }

    /// Reads a spec back (the inverse of [`Problem::spec`]).
    fn parse(spec: &str) -> Option<Problem> {
        use Problem::*;
        let fixed = [
            Squared,
            Negated,
            Larger,
            Smaller,
            Absolute,
            IsEven,
            SumOfArray,
            LargestItem,
            SumUpTo,
            Factorial,
            Reversed,
        ];
        if let Some(p) = fixed.into_iter().find(|p| p.spec() == spec) {
            return Some(p);
        }
        let num = |s: &str| s.parse::<INT>().ok().filter(|n| (0..1000).contains(n));
        let body = spec.strip_prefix("return ")?;
        if let Some(rest) = body.strip_prefix("x times ") {
            return Some(match rest.split_once(" plus ") {
                Some((k, m)) => Linear(num(k)?, num(m)?),
                None => Times(num(rest)?),
            });
        }
        let with = |prefix: &str, make: fn(INT) -> Problem| {
            body.strip_prefix(prefix).and_then(num).map(make)
        };
        with("x plus ", Plus)
            .or_else(|| with("x minus ", Minus))
            .or_else(|| with("x modulo ", Modulo).filter(|p| *p != Modulo(0)))
            .or_else(|| with("whether x is greater than ", GreaterThan))
            .or_else(|| {
                body.strip_prefix("how many items of a are greater than ")
                    .and_then(num)
                    .map(CountGreater)
            })
            .or_else(|| with("each item of a times ", EachTimes))
    }

    /// The reference solution: what SFT teaches.
    fn solution(self) -> String {
        use Problem::*;
        match self {
            Plus(m) => format!("fn f(x) {{ x + {m} }}"),
            Minus(m) => format!("fn f(x) {{ x - {m} }}"),
            Times(k) => format!("fn f(x) {{ x * {k} }}"),
            Modulo(k) => format!("fn f(x) {{ x % {k} }}"),
            Squared => "fn f(x) { x * x }".into(),
            Negated => "fn f(x) { -x }".into(),
            Larger => "fn f(x, y) { if x > y { x } else { y } }".into(),
            Smaller => "fn f(x, y) { if x < y { x } else { y } }".into(),
            Absolute => "fn f(x) { if x < 0 { -x } else { x } }".into(),
            IsEven => "fn f(x) { x % 2 == 0 }".into(),
            GreaterThan(m) => format!("fn f(x) {{ x > {m} }}"),
            Linear(k, m) => format!("fn f(x) {{ x * {k} + {m} }}"),
            SumOfArray => "fn f(a) { let s = 0; for v in a { s += v; } s }".into(),
            CountGreater(k) => {
                format!("fn f(a) {{ let c = 0; for v in a {{ if v > {k} {{ c += 1; }} }} c }}")
            }
            LargestItem => "fn f(a) { let m = a[0]; for v in a { if v > m { m = v; } } m }".into(),
            SumUpTo => "fn f(x) { let s = 0; for i in 1..=x { s += i; } s }".into(),
            Factorial => "fn f(x) { if x < 2 { 1 } else { x * f(x - 1) } }".into(),
            Reversed => "fn f(a) { let r = []; for v in a { r.insert(0, v); } r }".into(),
            EachTimes(k) => {
                format!("fn f(a) {{ let r = []; for v in a {{ r.push(v * {k}); }} r }}")
            }
        }
    }

    fn args(self) -> Args {
        use Problem::*;
        match self {
            Larger | Smaller => Args::TwoInts,
            SumUpTo | Factorial => Args::SmallInt,
            SumOfArray | CountGreater(_) | LargestItem | Reversed | EachTimes(_) => Args::IntArray,
            _ => Args::Int,
        }
    }

    /// The right result for `args` (computed in Rust, independently of the Rhai solution).
    fn expected(self, args: &[Dynamic]) -> Dynamic {
        use Problem::*;
        let int = |i: usize| args[i].as_int().expect("generated int argument");
        let array = || -> Vec<INT> {
            args[0]
                .clone()
                .cast::<Array>()
                .iter()
                .map(|v| v.as_int().expect("generated int item"))
                .collect()
        };
        let ints = |v: Vec<INT>| Dynamic::from(v.into_iter().map(Dynamic::from).collect::<Array>());
        match self {
            Plus(m) => int(0).wrapping_add(m).into(),
            Minus(m) => int(0).wrapping_sub(m).into(),
            Times(k) => int(0).wrapping_mul(k).into(),
            Modulo(k) => (int(0) % k).into(),
            Squared => (int(0) * int(0)).into(),
            Negated => (-int(0)).into(),
            Larger => int(0).max(int(1)).into(),
            Smaller => int(0).min(int(1)).into(),
            Absolute => int(0).abs().into(),
            IsEven => (int(0) % 2 == 0).into(),
            GreaterThan(m) => (int(0) > m).into(),
            Linear(k, m) => (int(0) * k + m).into(),
            SumOfArray => array().iter().sum::<INT>().into(),
            CountGreater(k) => (array().iter().filter(|&&v| v > k).count() as INT).into(),
            LargestItem => array().into_iter().max().unwrap_or(0).into(),
            SumUpTo => (1..=int(0)).sum::<INT>().into(),
            Factorial => (1..=int(0)).product::<INT>().into(),
            Reversed => ints(array().into_iter().rev().collect()),
            EachTimes(k) => ints(array().into_iter().map(|v| v * k).collect()),
        }
    }

    /// The hidden tests: inputs drawn from a stream seeded by the spec, so one prompt always has
    /// the same tests, with the edge cases (0, negatives, one-item arrays) always included.
    fn hidden_tests(self) -> Vec<(Vec<Dynamic>, Dynamic)> {
        let mut rng = SplitMix64::new(fnv1a(self.spec().as_bytes()));
        let mut int = |lo: INT, hi: INT| lo + rng.below((hi - lo + 1) as usize) as INT;
        let inputs: Vec<Vec<Dynamic>> = match self.args() {
            Args::Int => [0, -7, 1]
                .into_iter()
                .chain((0..5).map(|_| int(-50, 50)))
                .map(|x| vec![Dynamic::from(x)])
                .collect(),
            Args::SmallInt => [0, 1, 2]
                .into_iter()
                .chain((0..3).map(|_| int(3, 10)))
                .map(|x| vec![Dynamic::from(x)])
                .collect(),
            Args::TwoInts => [(3, 3), (-2, 5), (9, -4)]
                .into_iter()
                .chain((0..5).map(|_| (int(-30, 30), int(-30, 30))))
                .map(|(x, y)| vec![Dynamic::from(x), Dynamic::from(y)])
                .collect(),
            Args::IntArray => {
                let mut arrays: Vec<Vec<INT>> = vec![vec![4], vec![-3, -8]];
                for _ in 0..5 {
                    let len = int(1, 6) as usize;
                    arrays.push((0..len).map(|_| int(-9, 9)).collect());
                }
                arrays
                    .into_iter()
                    .map(|a| {
                        vec![Dynamic::from(
                            a.into_iter().map(Dynamic::from).collect::<Array>(),
                        )]
                    })
                    .collect()
            }
        };
        inputs
            .into_iter()
            .map(|args| {
                let want = self.expected(&args);
                (args, want)
            })
            .collect()
    }

    fn arity(self) -> usize {
        match self.args() {
            Args::TwoInts => 2,
            _ => 1,
        }
    }
}

/// FNV-1a: a stable seed from text (std's hasher is not stable across releases).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

fn prompt_of(problem: Problem) -> String {
    format!("// {}\n", problem.spec())
}

/// The problem a prompt states, if it is a code task's prompt.
fn problem_of(prompt: &str) -> Option<Problem> {
    Problem::parse(prompt.strip_prefix("// ")?.strip_suffix('\n')?)
}

/// Runs `answer` against the hidden tests of `prompt`'s problem: `None` when the prompt is not a
/// code task's, else the verdict (`Err` names the failure).
pub fn verdict(prompt: &str, answer: &str, limits: &Limits) -> Option<Result<(), Failure>> {
    let problem = problem_of(prompt)?;
    Some(sandbox::run_tests(
        answer,
        "f",
        &problem.hidden_tests(),
        limits,
    ))
}

/// Whether `answer` is a well-formed attempt at `prompt`: it compiles and defines `f` with the
/// right number of parameters (the partial credit of the code reward).
pub fn well_formed(prompt: &str, answer: &str) -> Option<bool> {
    let problem = problem_of(prompt)?;
    let Ok(program) = sandbox::Program::compile(answer, &Limits::default()) else {
        return Some(false);
    };
    Some(!matches!(
        program.call("f", vec![Dynamic::UNIT; problem.arity()]),
        Err(Failure::MissingFunction { .. } | Failure::Syntax(_))
    ))
}

/// A generated set of code problems with their reference solutions.
#[derive(Debug, Clone)]
pub struct CodeTasks {
    pub level: Level,
    pub seed: u64,
    examples: Vec<Example>,
    limits: Limits,
}

impl CodeTasks {
    pub fn generate(level: Level, n: usize, seed: u64) -> Result<CodeTasks> {
        if n == 0 {
            return Err(Error::Data("code tasks: n must be at least 1".into()));
        }
        let mut rng = SplitMix64::new(seed ^ 0xC0DE);
        let examples = (0..n)
            .map(|_| {
                let p = Problem::draw(level, &mut rng);
                debug_assert_eq!(p.level(), level);
                Example {
                    prompt: prompt_of(p),
                    answer: p.solution(),
                    rejected: None,
                }
            })
            .collect();
        Ok(CodeTasks {
            level,
            seed,
            examples,
            limits: Limits::default(),
        })
    }

    /// The sandbox verdict on `answer` for `prompt`, with the failure's reason.
    pub fn verdict(&self, prompt: &str, answer: &str) -> Option<Result<(), Failure>> {
        verdict(prompt, answer, &self.limits)
    }
}

impl ExampleSource for CodeTasks {
    fn name(&self) -> String {
        format!(
            "code(level={}, seed={}, n={})",
            self.level,
            self.seed,
            self.examples.len()
        )
    }
    fn len(&self) -> usize {
        self.examples.len()
    }
    fn get(&self, index: usize) -> Example {
        self.examples[index % self.examples.len()].clone()
    }
    /// Executed: passes every hidden test in the sandbox.
    fn check(&self, prompt: &str, answer: &str) -> Option<bool> {
        self.verdict(prompt, answer).map(|v| v.is_ok())
    }
}

/// As text: each prompt followed by its solution (the prompt ends with a newline).
impl TextSource for CodeTasks {
    fn name(&self) -> String {
        ExampleSource::name(self)
    }
    fn documents(&self) -> Box<dyn Iterator<Item = Result<String>> + Send + '_> {
        Box::new(
            self.examples
                .iter()
                .map(|e| Ok(format!("{}{}", e.prompt, e.answer))),
        )
    }
    fn approx_bytes(&self) -> Option<u64> {
        Some(
            self.examples
                .iter()
                .map(|e| (e.prompt.len() + e.answer.len()) as u64)
                .sum(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reference_solution_passes_its_hidden_tests_in_the_sandbox() {
        for level in Level::NAMES {
            let tasks = CodeTasks::generate(Level::from_name(level).unwrap(), 300, 1).unwrap();
            for i in 0..tasks.len() {
                let e = tasks.get(i);
                assert_eq!(tasks.verdict(&e.prompt, &e.answer), Some(Ok(())), "{e:?}");
                assert_eq!(well_formed(&e.prompt, &e.answer), Some(true));
            }
        }
    }

    #[test]
    fn specs_round_trip_and_seeds_repeat() {
        let mut rng = SplitMix64::new(3);
        for level in [Level::Easy, Level::Medium, Level::Hard] {
            for _ in 0..200 {
                let p = Problem::draw(level, &mut rng);
                assert_eq!(problem_of(&prompt_of(p)), Some(p), "{}", p.spec());
                assert_eq!(p.level(), level);
            }
        }
        let a = CodeTasks::generate(Level::Hard, 20, 5).unwrap();
        let b = CodeTasks::generate(Level::Hard, 20, 5).unwrap();
        assert_eq!(a.examples, b.examples);
        assert_eq!(problem_of("12+3="), None);
        assert!(CodeTasks::generate(Level::Easy, 0, 1).is_err());
        assert!(Level::from_name("expert")
            .unwrap_err()
            .to_string()
            .contains("easy, medium, hard"));
    }

    #[test]
    fn the_checker_is_exact() {
        let prompt = "// return x plus 3\n";
        let tasks = CodeTasks::generate(Level::Easy, 1, 0).unwrap();
        assert_eq!(tasks.check(prompt, "fn f(x) { x + 3 }"), Some(true));
        assert_eq!(tasks.check(prompt, "fn f(x) { 3 + x }"), Some(true));
        // Right on x = 0 only.
        let wrong = tasks.verdict(prompt, "fn f(x) { 3 }").unwrap().unwrap_err();
        assert!(
            wrong
                .to_string()
                .starts_with("wrong answer: f(-7) returned 3, expected -4"),
            "{wrong}"
        );
        // A string "4" is not the integer 4.
        let typed = tasks
            .verdict(prompt, "fn f(x) { `${x + 3}` }")
            .unwrap()
            .unwrap_err();
        assert_eq!(typed.kind(), "wrong answer");
        assert_eq!(well_formed(prompt, "fn f(x) { 3 }"), Some(true));
        assert_eq!(well_formed(prompt, "fn g(x) { 3 }"), Some(false));
        assert_eq!(well_formed(prompt, "fn f(x) {"), Some(false));
        assert_eq!(tasks.check("sort 1 2 =", "1 2"), None);
    }
}

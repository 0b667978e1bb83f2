//! The Rhai side of llmlab: one [`Session`] owns the engine, the scope that survives between
//! REPL lines, and the [`Host`] state every registered function shares (registry, context,
//! `--set` overrides).
//!
//! Each component kind's script surface lives in its own file; this module wires them together
//! and owns the conversion of plugin errors and panics into script errors.

mod ai_feedback;
mod align;
mod callback;
mod chat;
mod compress;
mod corpus;
mod data;
mod eval;
mod evaluate;
mod examples;
mod help;
mod image;
mod interop;
mod labelled;
mod labelled_files;
mod model;
mod overrides;
mod qat;
mod quant;
mod results_table;
mod rhai_json;
mod run_dir;
mod serve;
mod sweep;
mod tensor;
mod tokenizer;
mod trainer;
mod world;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};

use llmlab_plugin_api::model::MODEL_MARKER_KEY;
use llmlab_plugin_api::{Aligner, Context, Instance, Kind, Quantizer, Trainer};
use rhai::{Dynamic, Engine, EvalAltResult, Map, Position, Scope, AST};

pub use callback::ClosureReward;
pub use eval::{load_model_and_tokenizer, run_evaluation, SessionCorpora};
pub use help::help_text;
pub use image::ImageHandle;
pub use model::ModelHandle;
pub use overrides::Overrides;
pub use qat::QAT_KEY;
pub use rhai_json::{dynamic_to_json, json_to_dynamic, positive_int_option};
pub use tensor::TensorHandle;
pub use tokenizer::TokenizerHandle;

use crate::panics::guard;
use crate::registry::Registry;
use crate::runs::{default_run_name, RunDir};

pub type ScriptResult<T> = Result<T, Box<EvalAltResult>>;

/// A script error with `message` at no particular position.
pub fn script_error(message: impl std::fmt::Display) -> Box<EvalAltResult> {
    EvalAltResult::ErrorRuntime(message.to_string().into(), Position::NONE).into()
}

/// Calls plugin code: its errors and panics become script errors naming `what` (unless the
/// message names it already: "charlstm does not support ...", not "charlstm: charlstm ...").
pub fn plugin_call<T>(
    what: &str,
    f: impl FnOnce() -> llmlab_plugin_api::Result<T>,
) -> ScriptResult<T> {
    match guard(what, f) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => {
            let message = error.to_string();
            if mentions(&message, what) {
                Err(script_error(message))
            } else {
                Err(script_error(format!("{what}: {message}")))
            }
        }
        Err(panic) => Err(script_error(panic)),
    }
}

/// Whether `message` contains `name` as a whole word (not inside `film` for `lm`).
fn mentions(message: &str, name: &str) -> bool {
    if name.is_empty() {
        return true;
    }
    let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '-');
    message.match_indices(name).any(|(at, _)| {
        !word(message[..at].chars().next_back()) && !word(message[at + name.len()..].chars().next())
    })
}

/// State shared by every function registered in the engine.
pub struct Host {
    registry: RwLock<Registry>,
    pub context: Context,
    pub overrides: Overrides,
    /// The script being run (`llmlab run FILE`), recorded in the run directory.
    script: Mutex<Option<PathBuf>>,
    /// This session's run directory, opened when something first writes to it.
    run: Mutex<Option<Arc<RunDir>>>,
}

impl Host {
    /// The session's run directory `runs/<name>`, opened on first use: the name is the `name`
    /// setting (`--set name=x`) or `<script>-<timestamp>`.
    pub fn run_dir(&self) -> llmlab_plugin_api::Result<Arc<RunDir>> {
        let mut run = self.run.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(run) = run.as_ref() {
            return Ok(run.clone());
        }
        let script = self
            .script
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let name = match self.overrides.setting("name") {
            Some(name) => name.to_string(),
            None => default_run_name(script.as_deref()),
        };
        let root = self
            .overrides
            .setting("runs_dir")
            .map_or_else(|| PathBuf::from("runs"), |d| PathBuf::from(d.to_string()));
        // A generated name never reuses a directory (two runs started in the same second get
        // `-2`, `-3`); an explicit `name` is reused on purpose, to resume into it.
        let name = match self.overrides.setting("name") {
            Some(_) => name,
            None => crate::runs::unused_name(&root, &name),
        };
        let plugins: Vec<(String, String)> = self
            .registry()
            .plugins
            .iter()
            .map(|p| (p.name().to_string(), format!("{:?}", p.fingerprint)))
            .collect();
        // Under mpirun: the ranks' plugins must agree; rank 0's name; ranks other than 0 write
        // beside it (docs/distributed.md).
        let (root, name) = crate::distributed::rank_run_dir(root, name, &plugins)?;
        let opened = Arc::new(RunDir::open(&root, &name, script.as_deref(), &plugins)?);
        crate::trust::record_library_hashes(&opened.path, &self.registry().plugins)?;
        *run = Some(opened.clone());
        Ok(opened)
    }

    /// The run directory if this session has opened one (nothing is created).
    pub fn current_run(&self) -> Option<Arc<RunDir>> {
        self.run.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn registry(&self) -> RwLockReadGuard<'_, Registry> {
        self.registry
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Makes component `name` of `kind` from a script config map, applying `--set` overrides.
    pub fn create(&self, kind: Kind, name: &str, config: Dynamic) -> ScriptResult<Instance> {
        self.create_with(kind, name, config, |_| Ok(()))
    }

    /// As [`Host::create`], letting `host_keys` take the keys the host owns out of the config
    /// (after overrides) before the plugin sees it.
    fn create_with(
        &self,
        kind: Kind,
        name: &str,
        config: Dynamic,
        host_keys: impl FnOnce(&mut llmlab_plugin_api::serde_json::Value) -> ScriptResult<()>,
    ) -> ScriptResult<Instance> {
        let registry = self.registry();
        let entry = registry.find(kind, name).map_err(script_error)?;
        let mut json = dynamic_to_json(config)?;
        self.overrides
            .apply(kind, name, &mut json)
            .map_err(script_error)?;
        host_keys(&mut json)?;
        plugin_call(name, || entry.factory.create(&json, &self.context))
    }

    /// A trainer, with the host's `qat` key (quantization-aware training, `qat.rs`) and `trial`
    /// key (a sweep's trial, `sweep.rs`) taken out.
    fn create_trainer(&self, name: &str, mut config: Dynamic) -> ScriptResult<Dynamic> {
        let trial = sweep::take_trial(&mut config)?;
        let teacher = compress::take_teacher(&mut config)?;
        let mut qat = None;
        let instance = self.create_with(Kind::Trainer, name, config, |json| {
            qat = qat::take_qat(self, json)?;
            Ok(())
        })?;
        match instance {
            Instance::Trainer(mut t) => {
                if let Some(teacher) = teacher {
                    plugin_call(name, || t.set_teacher(teacher.0.clone()))?;
                }
                Ok(Dynamic::from(TrainerHandle(
                    Arc::new(Mutex::new(t)),
                    qat,
                    trial,
                )))
            }
            other => Ok(instance_to_dynamic(other)),
        }
    }

    /// Loads a saved component. A model directory whose `config.json` names its component
    /// (`"llmlab_model": "gpt"`, [`MODEL_MARKER_KEY`]) goes to that component's factory, and
    /// only to it. Without a marker (a Hugging Face directory, a `.gguf` file, a tokenizer file)
    /// each factory of `kind` is asked in turn and the first that accepts `path` wins; every
    /// refusal is reported when none does.
    pub fn load(&self, kind: Kind, path: &str) -> ScriptResult<Instance> {
        let registry = self.registry();
        if kind == Kind::Model {
            if let Some(name) = model_marker(Path::new(path))? {
                let entry = registry.find(kind, &name).map_err(|e| {
                    script_error(format!(
                        "cannot load {path}: its config.json says \"{MODEL_MARKER_KEY}\": \"{name}\", \
                         but {e}"
                    ))
                })?;
                return plugin_call(&name, || entry.factory.load(Path::new(path), &self.context));
            }
        }
        let mut failures = Vec::new();
        for name in registry.names(kind) {
            let entry = registry.get(name).expect("listed names exist");
            match plugin_call(name, || entry.factory.load(Path::new(path), &self.context)) {
                Ok(instance) => return Ok(instance),
                Err(error) => failures.push(error.to_string()),
            }
        }
        if failures.is_empty() {
            return Err(script_error(format!(
                "cannot load {path}: no {kind} components are loaded{}",
                registry.why_missing()
            )));
        }
        Err(script_error(format!(
            "cannot load {kind} from {path}:\n  {}",
            failures.join("\n  ")
        )))
    }
}

/// The component a saved model directory names in its `config.json` ([`MODEL_MARKER_KEY`]);
/// `None` for anything else (a file, a directory without config.json or without the key). A
/// config.json that is not JSON is an error naming it.
fn model_marker(path: &Path) -> ScriptResult<Option<String>> {
    let config = path.join("config.json");
    if !path.is_dir() || !config.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&config)
        .map_err(|e| script_error(format!("cannot read {}: {e}", config.display())))?;
    let json: llmlab_plugin_api::serde_json::Value = llmlab_plugin_api::serde_json::from_str(&text)
        .map_err(|e| script_error(format!("{}: not JSON: {e}", config.display())))?;
    match json.get(MODEL_MARKER_KEY) {
        None => Ok(None),
        Some(llmlab_plugin_api::serde_json::Value::String(name)) => Ok(Some(name.clone())),
        Some(other) => Err(script_error(format!(
            "{}: \"{MODEL_MARKER_KEY}\" must be a component name (a string), not {other}",
            config.display()
        ))),
    }
}

/// A scripting session: engine, persistent scope, shared host state.
pub struct Session {
    engine: Engine,
    scope: Scope<'static>,
    /// Every function defined so far in this session.
    functions: AST,
    host: Arc<Host>,
}

impl Session {
    pub fn new(registry: Registry, context: Context, overrides: Overrides) -> Session {
        let host = Arc::new(Host {
            registry: RwLock::new(registry),
            context,
            overrides,
            script: Mutex::new(None),
            run: Mutex::new(None),
        });
        let mut engine = Engine::new();
        engine.set_max_expr_depths(256, 256);
        let cancel = host.context.cancel.clone();
        // Ctrl-C also stops pure-Rhai loops, not only plugin calls.
        engine.on_progress(move |_| cancel.is_cancelled().then(|| Dynamic::from("cancelled")));
        register_session_functions(&mut engine, &host);
        register_component_types(&mut engine);
        tensor::register(&mut engine);
        tokenizer::register(&mut engine, &host);
        model::register(&mut engine, &host);
        chat::register(&mut engine);
        ai_feedback::register(&mut engine);
        results_table::register(&mut engine);
        callback::register(&mut engine);
        data::register(&mut engine, &host);
        corpus::register(&mut engine);
        evaluate::register(&mut engine);
        eval::register(&mut engine, &host);
        examples::register(&mut engine);
        trainer::register(&mut engine, &host);
        align::register(&mut engine, &host);
        quant::register(&mut engine, &host);
        qat::register(&mut engine, &host);
        compress::register(&mut engine, &host);
        sweep::register(&mut engine, &host);
        image::register(&mut engine, &host);
        interop::register(&mut engine);
        world::register(&mut engine);
        serve::register(&mut engine);
        labelled::register(&mut engine, &host);
        let mut scope = Scope::new();
        scope.push_constant("SETTINGS", host.overrides.settings_map());
        Session {
            engine,
            scope,
            functions: AST::empty(),
            host,
        }
    }

    pub fn host(&self) -> &Arc<Host> {
        &self.host
    }

    /// Applies the script limits (`--max-operations`, ..., `trust.rs`) to the engine.
    pub fn set_limits(&mut self, limits: &crate::trust::ScriptLimits) {
        limits.apply(&mut self.engine);
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The variables that live between REPL lines (completion reads their types).
    pub fn scope(&self) -> &Scope<'static> {
        &self.scope
    }

    /// Evaluates `code` in the session scope; variables persist between calls.
    pub fn eval(&mut self, code: &str) -> ScriptResult<Dynamic> {
        self.host.context.cancel.reset();
        let ast = self.engine.compile_with_scope(&self.scope, code)?;
        // Functions (and closures) defined by earlier inputs stay callable.
        self.functions += ast;
        let result = self
            .engine
            .eval_ast_with_scope::<Dynamic>(&mut self.scope, &self.functions);
        self.functions.clear_statements();
        match result {
            Err(e) if matches!(*e, EvalAltResult::ErrorTerminated(..)) => {
                Err(script_error("cancelled (Ctrl-C)"))
            }
            other => other,
        }
    }

    /// Text for a REPL result: the value's own `to_string`, kept as `ans` for the next line.
    pub fn display(&mut self, value: Dynamic) -> String {
        self.scope.set_or_push("ans", value.clone());
        self.engine
            .eval_with_scope::<String>(&mut self.scope, "ans.to_string()")
            .unwrap_or_else(|_| value.to_string())
    }

    /// Runs a script file.
    pub fn run_file(&mut self, path: &Path) -> ScriptResult<Dynamic> {
        *self.host.script.lock().unwrap_or_else(|p| p.into_inner()) = Some(path.to_path_buf());
        let code = std::fs::read_to_string(path)
            .map_err(|e| script_error(format!("cannot read script {}: {e}", path.display())))?;
        // `--set` for a component that is not there fails now, not after an hour of training;
        // a script that loads plugins itself may add components, so it is checked at the end.
        if !code.contains("load_plugin") {
            let known = self.component_and_kind_names();
            self.host
                .overrides
                .check_components(&known)
                .map_err(script_error)?;
        }
        let value = self
            .eval(&code)
            .map_err(|e| script_error(format!("{}: {e}", path.display())))?;
        let unused = self.host.overrides.unused(&code);
        if !unused.is_empty() {
            return Err(script_error(format!(
                "{}: {}",
                path.display(),
                unused.join("\n  ")
            )));
        }
        Ok(value)
    }

    /// Names `--set` may address: every registered component and every kind.
    fn component_and_kind_names(&self) -> Vec<String> {
        let registry = self.host.registry();
        let mut names: Vec<String> = registry
            .entries()
            .map(|e| e.factory.name().to_string())
            .collect();
        for kind in Kind::ALL {
            names.push(kind.script_constructor().to_string());
            names.push(kind.to_string());
        }
        names
    }

    /// Whether `code` is an unfinished statement (the REPL keeps reading lines): the parser ran
    /// out of input, i.e. its error sits at or past the end of the text.
    pub fn is_incomplete(&self, code: &str) -> bool {
        let Err(error) = self.engine.compile_with_scope(&self.scope, code) else {
            return false;
        };
        let at_end = match error.position().line() {
            None => true,
            Some(line) => line > code.trim_end().lines().count(),
        };
        at_end
            && matches!(
                error.err_type(),
                rhai::ParseErrorType::UnexpectedEOF
                    | rhai::ParseErrorType::MissingToken(..)
                    | rhai::ParseErrorType::MissingSymbol(..)
            )
    }

    /// Names for tab completion: functions, components, and config keys.
    pub fn completion_words(&self) -> Vec<String> {
        let mut words: Vec<String> = self
            .engine
            .gen_fn_signatures(false)
            .into_iter()
            .filter_map(|sig| {
                sig.split('(')
                    .next()
                    .map(|n| n.trim_start_matches("fn ").to_string())
            })
            .collect();
        let registry = self.host.registry();
        for entry in registry.entries() {
            words.push(entry.factory.name().to_string());
            words.extend(entry.factory.config_keys().into_iter().map(|k| k.name));
        }
        words.extend(self.scope.iter_raw().map(|(name, ..)| name.to_string()));
        words.sort();
        words.dedup();
        words
    }
}

fn register_session_functions(engine: &mut Engine, host: &Arc<Host>) {
    // `corpus(name_or_path)` also opens files: `data.rs` registers it.
    for kind in Kind::ALL.into_iter().filter(|&k| k != Kind::Corpus) {
        let create = move |h: &Host, name: &str, config: Dynamic| match kind {
            Kind::Trainer => h.create_trainer(name, config),
            _ => h.create(kind, name, config).map(instance_to_dynamic),
        };
        let h = host.clone();
        engine.register_fn(kind.script_constructor(), move |name: &str, config: Map| {
            create(&h, name, config.into())
        });
        let h = host.clone();
        engine.register_fn(kind.script_constructor(), move |name: &str| {
            create(&h, name, Dynamic::UNIT)
        });
    }
    help::register(engine, host);
    let h = host.clone();
    engine.register_fn("plugins", move || -> rhai::Array {
        h.registry()
            .plugins
            .iter()
            .map(|p| {
                let mut m = Map::new();
                m.insert("name".into(), p.name().into());
                m.insert("version".into(), p.version().into());
                m.insert("path".into(), p.path.display().to_string().into());
                let components: rhai::Array = p
                    .registrations
                    .iter()
                    .map(|r| Dynamic::from(r.factory.name().to_string()))
                    .collect();
                m.insert("components".into(), components.into());
                m.into()
            })
            .collect()
    });
    let h = host.clone();
    engine.register_fn(
        "load_plugin",
        move |path: &str| -> ScriptResult<rhai::Array> {
            let mut registry = h.registry.write().unwrap_or_else(|p| p.into_inner());
            let names = registry
                .load_plugin(Path::new(path))
                .map_err(script_error)?;
            Ok(names.into_iter().map(Dynamic::from).collect())
        },
    );
    let h = host.clone();
    engine.register_fn("setting", move |key: &str, default: Dynamic| {
        h.overrides.setting(key).unwrap_or(default)
    });
}

/// Wraps a component in its script type.
pub fn instance_to_dynamic(instance: Instance) -> Dynamic {
    match instance {
        Instance::Tokenizer(t) => Dynamic::from(TokenizerHandle::new(t)),
        Instance::Model(m) => Dynamic::from(ModelHandle::new(m)),
        Instance::Trainer(t) => Dynamic::from(TrainerHandle(Arc::new(Mutex::new(t)), None, None)),
        Instance::Aligner(a) => Dynamic::from(AlignerHandle(Arc::new(Mutex::new(a)))),
        Instance::Quantizer(q) => Dynamic::from(QuantizerHandle(Arc::from(q))),
        Instance::Corpus(c) => Dynamic::from(data::CorpusHandle::of_component(Arc::from(c))),
    }
}

/// Trainers, aligners and quantizers as script values; their methods live with their
/// plugins' script surface.
#[derive(Clone)]
pub struct TrainerHandle(
    pub Arc<Mutex<Box<dyn Trainer>>>,
    /// Quantization-aware training for this trainer's runs (the host's `qat` key).
    pub Option<Arc<qat::Qat>>,
    /// The sweep trial this trainer reports to (the host's `trial` key).
    pub Option<sweep::TrialHandle>,
);
#[derive(Clone)]
pub struct AlignerHandle(pub Arc<Mutex<Box<dyn Aligner>>>);
#[derive(Clone)]
pub struct QuantizerHandle(pub Arc<dyn Quantizer>);

fn register_component_types(engine: &mut Engine) {
    engine.register_type_with_name::<TrainerHandle>("Trainer");
    engine.register_type_with_name::<AlignerHandle>("Aligner");
    engine.register_type_with_name::<QuantizerHandle>("Quantizer");
    engine.register_fn("to_string", |t: &mut TrainerHandle| {
        format!("trainer {}", lock(&t.0).name())
    });
    engine.register_fn("to_string", |a: &mut AlignerHandle| {
        format!("aligner {}", lock(&a.0).name())
    });
    engine.register_fn("to_string", |q: &mut QuantizerHandle| {
        format!("quantizer {}", q.0.name())
    });
    engine.register_fn("config", |t: &mut TrainerHandle| {
        json_to_dynamic(&qat::with_qat(lock(&t.0).config(), t.1.as_deref()))
    });
    engine.register_fn("config", |a: &mut AlignerHandle| {
        json_to_dynamic(&lock(&a.0).config())
    });
}

/// Locks a component; a panic in an earlier call (already reported) does not poison the session.
pub fn lock<T: ?Sized>(mutex: &Mutex<Box<T>>) -> MutexGuard<'_, Box<T>> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

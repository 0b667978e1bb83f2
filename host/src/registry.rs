//! Every component the session can make, from every loaded plugin plus the host's built-ins,
//! by name. A name registered twice is an error naming both providers; the first one stays.

use std::collections::BTreeMap;
use std::path::PathBuf;

use llmlab_plugin_api::component::register_crate;
use llmlab_plugin_api::{Factory, Kind, Registrar, Registration};

use crate::loader::{self, LoadError, LoadedPlugin};
use crate::trust::TrustedPlugins;

/// Who provided a component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Provider {
    BuiltIn,
    Plugin {
        name: String,
        version: String,
        path: PathBuf,
    },
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Provider::BuiltIn => f.write_str("llmlab (built-in)"),
            Provider::Plugin { name, path, .. } => write!(f, "plugin {name} ({})", path.display()),
        }
    }
}

pub struct Entry {
    pub factory: &'static dyn Factory,
    pub provider: Provider,
}

#[derive(Default)]
pub struct Registry {
    entries: BTreeMap<&'static str, Entry>,
    pub plugins: Vec<LoadedPlugin>,
    /// Libraries refused and components rejected, with why: what `llmlab plugins` reports.
    pub problems: Vec<String>,
    /// The libraries among `problems` refused whole (at start-up or by `load_plugin`): named
    /// when a script asks for a component nobody provides, since one of them may have.
    pub refused_libraries: Vec<String>,
    /// Set when the loaded runtime library is not the one the host was built against
    /// ([`loader::runtime_problem`]).
    pub runtime_problem: Option<String>,
    /// The allow-list (`--trusted-plugins`) every library must be on, `load_plugin` included.
    trusted: Option<TrustedPlugins>,
}

struct Built(Vec<&'static Registration>);

impl Registrar for Built {
    fn register(&mut self, registration: &'static Registration) {
        self.0.push(registration);
    }
}

impl Registry {
    /// The host's built-in components only.
    pub fn with_builtins() -> Registry {
        let mut registry = Registry::default();
        let mut built = Built(Vec::new());
        register_crate(env!("CARGO_CRATE_NAME"), &mut built);
        // Only the host's own: a plugin crate that happens to be named `llmlab` is not built in.
        let anchor = Registry::with_builtins as fn() -> Registry as *const u8;
        for registration in loader::own_registrations(anchor, built.0) {
            registry.add_registration(registration, Provider::BuiltIn);
        }
        registry
    }

    /// Built-ins plus every plugin found in `dirs`.
    pub fn discover(dirs: &[PathBuf]) -> Registry {
        Registry::discover_trusted(dirs, None)
    }

    /// Built-ins plus every plugin found in `dirs` whose SHA-256 is on `trusted` (all of them
    /// without a list); later `load_plugin` calls are held to the same list.
    pub fn discover_trusted(dirs: &[PathBuf], trusted: Option<TrustedPlugins>) -> Registry {
        let mut registry = Registry::with_builtins();
        registry.runtime_problem = loader::runtime_problem();
        let scan = loader::scan(dirs, trusted.as_ref());
        registry.trusted = trusted;
        for refusal in scan.refused {
            registry.refused_libraries.push(refusal.to_string());
            registry.problems.push(refusal.to_string());
        }
        for plugin in scan.loaded {
            registry.add_plugin(plugin);
        }
        registry
    }

    /// Loads one more plugin library (`load_plugin("path.so")` in scripts) and returns the
    /// names of its components. Refused, with the reason, and nothing registered: a library not
    /// on the allow-list or failing the checks, a plugin already loaded (the same file again, or
    /// the same crate in another file), a plugin one of whose component names is taken.
    pub fn load_plugin(&mut self, path: &std::path::Path) -> Result<Vec<String>, String> {
        let refuse = |registry: &mut Registry, error: String| {
            registry.problems.push(error.clone());
            registry.refused_libraries.push(error.clone());
            Err(error)
        };
        let checked = match loader::check_trusted(path, self.trusted.as_ref()) {
            Ok(checked) => checked,
            Err(error) => return refuse(self, error.to_string()),
        };
        if let Some(first) = self
            .plugins
            .iter()
            .find(|p| p.fingerprint.plugin == checked.fingerprint.plugin)
        {
            let error = LoadError::Duplicate {
                path: path.into(),
                plugin: first.name().to_string(),
                first: first.path.clone(),
            };
            return refuse(self, error.to_string());
        }
        let plugin = match loader::load_checked(path, checked) {
            Ok(plugin) => plugin,
            Err(error) => return refuse(self, error.to_string()),
        };
        let taken: Vec<String> = plugin
            .registrations
            .iter()
            .filter_map(|r| {
                let name = r.factory.name();
                self.entries
                    .get(name)
                    .map(|e| format!("`{name}` (provided by {})", e.provider))
            })
            .collect();
        if !taken.is_empty() {
            let error = format!(
                "refused {} (plugin `{}`): its components {} are already registered; nothing \
                 from it was added",
                path.display(),
                plugin.name(),
                taken.join(", ")
            );
            return refuse(self, error);
        }
        let names = plugin
            .registrations
            .iter()
            .map(|r| r.factory.name().to_string())
            .collect();
        self.add_plugin(plugin);
        Ok(names)
    }

    fn add_plugin(&mut self, plugin: LoadedPlugin) {
        let provider = Provider::Plugin {
            name: plugin.name().to_string(),
            version: plugin.version().to_string(),
            path: plugin.path.clone(),
        };
        for registration in &plugin.registrations {
            self.add_registration(registration, provider.clone());
        }
        self.plugins.push(plugin);
    }

    /// Adds a component and tells the panic reports which crate provides it.
    fn add_registration(&mut self, registration: &'static Registration, provider: Provider) {
        let factory = registration.factory;
        crate::panics::know_components([(
            registration.crate_name.to_string(),
            factory.kind(),
            factory.name().to_string(),
        )]);
        self.add(factory, provider);
    }

    fn add(&mut self, factory: &'static dyn Factory, provider: Provider) {
        let name = factory.name();
        if let Some(existing) = self.entries.get(name) {
            self.problems.push(format!(
                "duplicate component `{name}`: provided by {} and by {}; keeping the first",
                existing.provider, provider
            ));
            return;
        }
        self.entries.insert(name, Entry { factory, provider });
    }

    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.entries.get(name)
    }

    /// The component `name` of `kind`, or an error listing what there is.
    pub fn find(&self, kind: Kind, name: &str) -> Result<&Entry, String> {
        match self.entries.get(name) {
            Some(entry) if entry.factory.kind() == kind => Ok(entry),
            Some(entry) => Err(format!(
                "`{name}` is a {}, not a {kind}",
                entry.factory.kind()
            )),
            None => {
                let available = self.names(kind);
                let available = if available.is_empty() {
                    "none loaded (see `llmlab plugins`)".to_string()
                } else {
                    available.join(", ")
                };
                Err(format!(
                    "unknown {kind} `{name}`; available: {available}{}",
                    self.why_missing()
                ))
            }
        }
    }

    /// For "unknown component" errors: the libraries that were refused (one of them may be the
    /// plugin the script expects) and a stale runtime, each with the reason; empty when none.
    pub fn why_missing(&self) -> String {
        let mut out = String::new();
        if !self.refused_libraries.is_empty() {
            out.push_str("\n  libraries refused at start-up (one may provide it):");
            for refusal in &self.refused_libraries {
                out.push_str("\n    ");
                out.push_str(without_refused(refusal));
            }
        }
        if let Some(problem) = &self.runtime_problem {
            out.push_str("\n  ");
            out.push_str(problem);
        }
        out
    }

    pub fn names(&self, kind: Kind) -> Vec<&'static str> {
        self.entries
            .values()
            .filter(|e| e.factory.kind() == kind)
            .map(|e| e.factory.name())
            .collect()
    }

    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    /// What `llmlab plugins` and `:plugins` print.
    pub fn report(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        if let Some(problem) = &self.runtime_problem {
            let _ = writeln!(out, "warning: {problem}");
        }
        let builtins: Vec<_> = self
            .entries()
            .filter(|e| e.provider == Provider::BuiltIn)
            .map(|e| e.factory.name())
            .collect();
        if !builtins.is_empty() {
            let _ = writeln!(out, "built-in: {}", builtins.join(", "));
        }
        if self.plugins.is_empty() {
            let _ = writeln!(out, "no plugins loaded");
        }
        for plugin in &self.plugins {
            let _ = writeln!(
                out,
                "loaded {} {} ({})",
                plugin.name(),
                plugin.version(),
                plugin.path.display()
            );
            for registration in &plugin.registrations {
                let f = registration.factory;
                let _ = writeln!(
                    out,
                    "  {:<10} {:<12} {}",
                    f.kind().to_string(),
                    f.name(),
                    f.about()
                );
            }
        }
        for problem in &self.problems {
            let _ = writeln!(out, "refused: {}", without_refused(problem));
        }
        out
    }
}

/// A refusal's text without its own leading "refused " (printed after "refused: ").
fn without_refused(problem: &str) -> &str {
    problem.strip_prefix("refused ").unwrap_or(problem)
}

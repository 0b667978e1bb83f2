//! `llmlab`: the command line around the host library.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};

use clap::Parser;
use llmlab::cli::{BenchCommand, Cli, Command, Common, KernelCommand, PluginCommand, SweepCommand};
use llmlab::loader;
use llmlab::registry::Registry;
use llmlab::script::{Overrides, Session};
use llmlab::trust::TrustedPlugins;
use llmlab_plugin_api::candle::DType;
use llmlab_plugin_api::{tracing, Context};

fn main() -> ExitCode {
    thread_settings();
    reexec_with_malloc_tunables();
    ignore_sigxfsz();
    let cli = Cli::parse();
    init_logging(cli.common.verbose);
    // Panics in plugin calls become script errors that carry the message; the location is
    // for `-vv` (the shared runtime means this hook also covers plugin code).
    llmlab::panics::install_hook();
    // Started by mpirun as one of several ranks: join the job first (docs/distributed.md).
    let launch = match llmlab::distributed::init() {
        Ok(launch) => launch,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::FAILURE;
        }
    };
    let code = match run(cli) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    };
    // A failed rank ends the whole job at once; the others would wait for it until timeout.
    if code == ExitCode::FAILURE {
        launch.fail(1);
    }
    code
}

fn run(cli: Cli) -> Result<ExitCode, String> {
    let dirs = loader::search_dirs(&cli.common.plugin_dirs);
    let trusted = cli.common.trusted_plugins()?;
    let discover = || Registry::discover_trusted(&dirs, trusted.clone());
    let limits = cli.common.limits.limits();
    cli.common.metrics.start()?;
    match cli.command {
        Some(Command::Plugin {
            command: PluginCommand::Check { file },
        }) => Ok(check_plugin(&file, trusted.as_ref())),
        Some(Command::Plugin {
            command:
                PluginCommand::New {
                    name,
                    kind,
                    dir,
                    llmlab_source,
                },
        }) => new_plugin(&name, &kind, dir, llmlab_source.as_deref()),
        Some(Command::Plugin {
            command:
                PluginCommand::Build {
                    dir,
                    test,
                    llmlab_source,
                },
        }) => build_plugin(dir, test, llmlab_source),
        Some(Command::Bench {
            command:
                BenchCommand::Train {
                    config,
                    steps,
                    precision,
                    peak_tflops,
                },
        }) => {
            let bench = llmlab::bench::TrainBench {
                steps,
                precision: llmlab::bench::parse_precision(&precision).map_err(|e| e.to_string())?,
                peak_tflops,
            };
            let registry = discover();
            let ctx = context(&cli.common)?;
            for name in config.split(',') {
                let line = llmlab::bench::train(&registry, name.trim(), &bench, &ctx)
                    .map_err(|e| e.to_string())?;
                println!("{line}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Bench {
            command: BenchCommand::Kernels { size, dtype, reps },
        }) => {
            let ctx = context(&cli.common)?;
            let shapes = llmlab::bench_kernels::Shapes::named(&size).map_err(|e| e.to_string())?;
            let dtypes = dtype
                .split(',')
                .map(|d| match d.trim() {
                    "f32" => Ok(DType::F32),
                    "bf16" => Ok(DType::BF16),
                    "f16" => Ok(DType::F16),
                    other => Err(format!(
                        "bench kernels: --dtype {other:?}: expected f32, bf16 or f16"
                    )),
                })
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let (lines, ok) = llmlab::bench_kernels::run(&ctx.device, shapes, &dtypes, reps.max(1))
                .map_err(|e| e.to_string())?;
            for line in lines {
                println!("{line}");
            }
            if !ok {
                return Err("bench kernels: a fused op differs from its reference beyond tolerance (\"ok\": false above)".into());
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Bench {
            command:
                BenchCommand::Generate {
                    config,
                    batch,
                    prompt,
                    new_tokens,
                    reps,
                },
        }) => {
            let registry = discover();
            let ctx = context(&cli.common)?;
            for name in config.split(',') {
                for rows in batch.split(',') {
                    let rows = rows
                        .trim()
                        .parse()
                        .map_err(|_| format!("bench generate: --batch {rows:?} is not a count"))?;
                    let bench = llmlab::bench_generate::GenerateBench {
                        batch: rows,
                        prompt,
                        new_tokens,
                        reps,
                    };
                    let line =
                        llmlab::bench_generate::generate(&registry, name.trim(), bench, &ctx)
                            .map_err(|e| e.to_string())?;
                    println!("{line}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Sweep {
            command: SweepCommand::Status { name, runs_dir },
        }) => {
            print!("{}", llmlab::sweep::status(&runs_dir, &name)?);
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Eval(args)) => {
            let session = Session::new(discover(), context(&cli.common)?, Overrides::default());
            install_ctrl_c(&session, true);
            llmlab::eval::cli::run(&session, args)?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Serve(args)) => {
            let session = Session::new(discover(), context(&cli.common)?, Overrides::default());
            llmlab::serve::cli::serve(&session, &args)?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Bench {
            command: BenchCommand::Serve(args),
        }) => {
            let session = Session::new(discover(), context(&cli.common)?, Overrides::default());
            llmlab::serve::cli::bench(&session, &args)?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Plugins) => {
            let registry = discover();
            print!("{}", registry.report());
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Run { script, set }) => {
            let overrides = Overrides::parse(&set)?;
            let mut session = Session::new(discover(), context(&cli.common)?, overrides);
            session.set_limits(&limits);
            install_ctrl_c(&session, true);
            let _ = session.run_file(&script).map_err(|e| e.to_string())?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Kernel {
            connection_file,
            command,
        }) => match (command, connection_file) {
            (Some(KernelCommand::Install { user, prefix }), _) => {
                install_kernel(&cli.common, user, prefix.as_deref())
            }
            (None, Some(file)) => {
                let registry = discover();
                let ctx = context(&cli.common)?;
                let cancel = ctx.cancel.clone();
                llmlab::kernel::run(
                    &file,
                    move |progress| {
                        let ctx = Context { progress, ..ctx };
                        let mut session = Session::new(registry, ctx, Overrides::default());
                        session.set_limits(&limits);
                        session
                    },
                    cancel,
                )?;
                Ok(ExitCode::SUCCESS)
            }
            (None, None) => Err(
                "kernel: give --connection-file FILE (Jupyter does), or `kernel install`".into(),
            ),
        },
        None => {
            let registry = discover();
            let report = registry.report();
            // Progress bars on stderr (when it is a terminal), cleared by the REPL after each call.
            let bars = std::sync::Arc::new(llmlab::progress::Bars::for_stderr());
            let ctx = Context {
                progress: bars.clone(),
                ..context(&cli.common)?
            };
            let mut session = Session::new(registry, ctx, Overrides::default());
            session.set_limits(&limits);
            install_ctrl_c(&session, false);
            if !std::io::stdin().is_terminal() {
                tracing::debug!("stdin is not a terminal: reading statements line by line");
            }
            llmlab::repl::run(&mut session, &report, Some(bars))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `llmlab kernel install`: the kernelspec names this executable and the global flags given.
fn install_kernel(
    common: &Common,
    user: bool,
    prefix: Option<&std::path::Path>,
) -> Result<ExitCode, String> {
    let absolute = |p: &std::path::Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let mut args = Vec::new();
    for dir in &common.plugin_dirs {
        args.extend([
            "--plugin-dir".to_string(),
            absolute(dir).display().to_string(),
        ]);
    }
    if let Some(file) = &common.trusted_plugins {
        args.extend([
            "--trusted-plugins".to_string(),
            absolute(file).display().to_string(),
        ]);
    }
    if common.device != "cpu" {
        args.extend(["--device".to_string(), common.device.clone()]);
    }
    if common.seed != 0 {
        args.extend(["--seed".to_string(), common.seed.to_string()]);
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    let dir = llmlab::kernel::install::spec_dir(user, prefix)?;
    let file = llmlab::kernel::install::write_spec(&dir, &exe, &args)?;
    println!("installed the llmlab kernelspec: {}", file.display());
    Ok(ExitCode::SUCCESS)
}

/// `llmlab plugin new NAME --kind KIND`.
fn new_plugin(
    name: &str,
    kind: &str,
    dir: Option<std::path::PathBuf>,
    llmlab_source: Option<&std::path::Path>,
) -> Result<ExitCode, String> {
    use llmlab::plugin_sdk::{build, scaffold};
    let kind = scaffold::ScaffoldKind::parse(kind)?;
    let tree = build::source_tree(llmlab_source)?;
    let dir = dir.unwrap_or_else(|| std::path::PathBuf::from(name));
    let files = scaffold::scaffold(&dir, name, kind, &tree)?;
    for file in files {
        println!("wrote {}", file.display());
    }
    println!(
        "next: llmlab plugin build {0} --test && llmlab --plugin-dir {0}/target/llmlab run {0}/try.rhai",
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `llmlab plugin build [DIR] [--test]`.
fn build_plugin(
    dir: Option<std::path::PathBuf>,
    test: bool,
    llmlab_source: Option<std::path::PathBuf>,
) -> Result<ExitCode, String> {
    let request = llmlab::plugin_sdk::build::BuildRequest {
        dir: dir.unwrap_or_else(|| std::path::PathBuf::from(".")),
        llmlab_source,
        test,
    };
    let built = llmlab::plugin_sdk::build::build(&request)?;
    println!(
        "ok: built {} (plugin {}), it loads into this host:",
        built.library.display(),
        built.plugin
    );
    for component in &built.components {
        println!("  {component}");
    }
    let dir = built.library.parent().unwrap_or(std::path::Path::new("."));
    println!("use it: llmlab --plugin-dir {}", dir.display());
    Ok(ExitCode::SUCCESS)
}

fn check_plugin(file: &std::path::Path, trusted: Option<&TrustedPlugins>) -> ExitCode {
    let checked = match loader::check_trusted(file, trusted) {
        Ok(checked) => checked,
        Err(error) => {
            // Show the declaration of a library refused for its fingerprint: what to rebuild.
            if let loader::LoadError::Mismatch { .. } = error {
                if let Ok(fingerprint) = loader::read_declaration(file) {
                    println!(
                        "declaration of {}:\n{}",
                        file.display(),
                        loader::describe_fingerprint(&fingerprint)
                    );
                }
            }
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "declaration of {} (sha256 {}):\n{}",
        file.display(),
        checked.sha256,
        loader::describe_fingerprint(&checked.fingerprint)
    );
    match loader::load_checked(file, checked) {
        Ok(plugin) => {
            println!(
                "ok: plugin {} {} loads into this host",
                plugin.name(),
                plugin.version()
            );
            for registration in &plugin.registrations {
                println!(
                    "  {} {}",
                    registration.factory.kind(),
                    registration.factory.name()
                );
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn context(common: &Common) -> Result<Context, String> {
    let device = llmlab::device::open(&common.device)?;
    let dtype = DType::F32;
    Ok(Context {
        device,
        dtype,
        seed: common.seed,
        ..Context::cpu()
    })
}

/// First Ctrl-C cancels the running call; in `run`, a second one exits at once.
///
/// In `run`, SIGTERM (what `kill` and schedulers send) and SIGHUP are treated the same way, so
/// the trainer stops after its step and writes a checkpoint (ctrlc's `termination` feature). A
/// SIGHUP that was ignored when we started (`nohup`) stays ignored. The REPL keeps the default
/// for both: `kill` ends an interactive session as it always did.
fn install_ctrl_c(session: &Session, second_exits: bool) {
    let cancel = session.host().context.cancel.clone();
    static PRESSES: AtomicUsize = AtomicUsize::new(0);
    let hup_ignored = signal_ignored(libc::SIGHUP);
    let _ = ctrlc::set_handler(move || {
        let presses = PRESSES.fetch_add(1, Ordering::SeqCst) + 1;
        if second_exits && presses > 1 {
            eprintln!("\ninterrupted twice: exiting");
            std::process::exit(130);
        }
        eprintln!("\n(Ctrl-C or SIGTERM: stopping the running call)");
        cancel.cancel();
    });
    if !second_exits {
        reset_signal(libc::SIGTERM, libc::SIG_DFL);
        reset_signal(libc::SIGHUP, libc::SIG_DFL);
    }
    if hup_ignored {
        reset_signal(libc::SIGHUP, libc::SIG_IGN);
    }
}

/// Whether `signal`'s disposition is "ignore" (inherited from `nohup`, for example).
fn signal_ignored(signal: libc::c_int) -> bool {
    // SAFETY: sigaction with a null new action only reads the current disposition into `old`.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(signal, std::ptr::null(), &mut old) == 0
            && old.sa_sigaction == libc::SIG_IGN
    }
}

fn reset_signal(signal: libc::c_int, disposition: libc::sighandler_t) {
    // SAFETY: SIG_DFL and SIG_IGN are not handlers; nothing runs in signal context.
    unsafe {
        libc::signal(signal, disposition);
    }
}

/// A write past `ulimit -f` raises SIGXFSZ, whose default kills the process with no message in
/// the middle of a checkpoint. Ignored, the write fails with EFBIG instead, and the atomic
/// writers keep the previous file and report the error naming it.
fn ignore_sigxfsz() {
    reset_signal(libc::SIGXFSZ, libc::SIG_IGN);
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// candle runs its elementwise ops on a second, spinning thread pool beside the rayon pool that
/// gemm and our kernels use; on few cores the two fight and the main thread's spin-wait for
/// candle's workers was a third of a training step (docs/benchmarks.md, "Round 3"). With
/// `CANDLE_NUM_THREADS=1` those ops run inline; matmuls keep `RAYON_NUM_THREADS` threads. It
/// also makes candle's quantized matmuls single-threaded, which generated 13-18x faster under
/// load than with candle's pool (measured there); set `CANDLE_NUM_THREADS` to the core count to
/// get the old behaviour.
///
/// candle also asks for the matmul thread count on every CPU matmul, and without
/// `RAYON_NUM_THREADS` works it out each time by reading `/proc/cpuinfo` (physical cores): about
/// 10% of a loaded server's scheduler thread (docs/serving.md).
/// Setting the variable to that count once makes the question free, and gives the rayon pool
/// (our kernels, the row-parallel training split) the same count as candle's matmuls.
///
/// Called first thing in `main`, before any thread exists; values the user set are kept.
fn thread_settings() {
    // Sound only while single-threaded: the first statement of main, before any spawn.
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let cores = llmlab_plugin_api::candle::utils::get_num_threads();
        std::env::set_var("RAYON_NUM_THREADS", cores.to_string());
    }
}

/// Training allocates and frees many large tensors; with glibc's default thresholds each one is a
/// fresh `mmap` and its pages fault in again (≈ 30% of a CPU training step, DESIGN.md §7). glibc
/// reads its tunables only at start-up, so the host re-executes itself once with them set.
/// `GLIBC_TUNABLES` already set (by the user, or by us) means: leave it alone.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn reexec_with_malloc_tunables() {
    use std::os::unix::process::CommandExt;
    const TUNABLES: &str =
        "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967295";
    if std::env::var_os("GLIBC_TUNABLES").is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let error = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("GLIBC_TUNABLES", TUNABLES)
        .exec();
    // exec only returns on failure: carry on without the tunables.
    eprintln!("warning: could not re-execute with malloc tunables: {error}");
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn reexec_with_malloc_tunables() {}

//! The `tollgate` command line (SPEC §1). Parses arguments, runs the command, and maps every
//! failure to one line on stderr and an exit code: 0 success, 1 runtime failure, 2 usage or
//! configuration error.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use tollgate::app::{self, RunOptions, StartError};
use tollgate::config::PolicySource;
use tollgate::config::{self, LogFormat};
use tollgate::identity::SpiffeId;
use tollgate::policy::testing::{TestResult, run_tests};
use tollgate::policy::{PolicyRevision, read_modules};
use tollgate::tls::ca::{DevPkiLayout, svid_file_stem};

/// mimalloc instead of glibc's allocator: regorus' interpreter allocates and frees many small
/// values per decision, and glibc's malloc/free were a quarter of the proxy's CPU under load
/// (docs/BENCHMARKS.md §11). Built without transparent huge pages (`no_thp`, Cargo.toml): they
/// made most of an idle proxy's resident memory (§16).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "tollgate", version, about = "An egress proxy for AI agents")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (built-in local-development configuration without -c).
    Run {
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Evaluate and log every decision, enforce none.
        #[arg(long)]
        dry_run: bool,
    },
    /// Validate a configuration and everything it references.
    Check {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Policy tools.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Development certificates.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Print version, git revision and policy engines.
    Version,
    /// Serve the Kubernetes mutating admission webhook that adds the init step and the sidecar.
    Inject {
        /// Address to serve HTTPS on.
        #[arg(long, default_value = "0.0.0.0:8443")]
        listen: std::net::SocketAddr,
        /// Serving certificate (PEM chain); re-read when it changes.
        #[arg(long)]
        tls_cert: PathBuf,
        /// Serving key (PEM).
        #[arg(long)]
        tls_key: PathBuf,
        /// Injector settings (YAML): image, proxy UID and ports, exclusions, names.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// The sidecar's init step: the nat rules that redirect a pod's outbound TCP to tollgate.
    Redirect {
        #[command(subcommand)]
        command: RedirectCommand,
    },
}

#[derive(Subcommand)]
enum RedirectCommand {
    /// Install (idempotently) the rules that send every outbound TCP connection to the proxy
    /// port, except the proxy's UID, loopback and the exclusions. Needs NET_ADMIN only.
    Install {
        /// The proxy's UID: its own (upstream) connections are not redirected.
        #[arg(long)]
        proxy_uid: u32,
        /// The transparent listener's port.
        #[arg(long)]
        proxy_port: u16,
        /// Destination ports not redirected: `22,8000-8100`.
        #[arg(long)]
        exclude_ports: Option<String>,
        /// Destination CIDRs or addresses not redirected (IPv4 and IPv6): `10.0.0.0/8,fd00::/8`.
        #[arg(long)]
        exclude_cidrs: Option<String>,
        /// IPv6 rules: auto (when the namespace has IPv6), on, off.
        #[arg(long, default_value = "auto")]
        ipv6: String,
        /// Print the rules, one per line, and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Remove exactly the rules `install` put in place.
    Remove,
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Evaluate the entrypoint for one input and print the policy's own value as JSON.
    Eval {
        /// A folder of .rego files, one .rego file, a .wasm module or an OPA bundle .tar.gz.
        #[arg(short, long)]
        path: PathBuf,
        #[arg(short, long)]
        input: PathBuf,
        #[arg(short, long)]
        data: Option<PathBuf>,
        #[arg(short, long, default_value = "tollgate/decision")]
        entrypoint: String,
        /// Print {"value": the policy's own value, "applied": the decision tollgate would
        /// apply to it} instead of the value alone.
        #[arg(long)]
        explain: bool,
    },
    /// Run the test_* rules under PATH, like `opa test`.
    Test { path: PathBuf },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Create a development SPIFFE trust domain CA and an interception CA.
    Init {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        trust_domain: String,
    },
    /// Issue an X.509-SVID for a development workload.
    Issue {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        spiffe_id: String,
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// File name stem (default: derived from the SPIFFE ID).
        #[arg(long)]
        name: Option<String>,
    },
}

/// A failed command: its message and exit code.
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn usage(message: impl Into<String>) -> Failure {
        Failure {
            code: 2,
            message: message.into(),
        }
    }
    fn runtime(message: impl Into<String>) -> Failure {
        Failure {
            code: 1,
            message: message.into(),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            if !failure.message.is_empty() {
                eprintln!("{}", failure.message);
            }
            ExitCode::from(failure.code)
        }
    }
}

fn dispatch(command: Command) -> Result<(), Failure> {
    match command {
        Command::Run { config, dry_run } => run(config, dry_run),
        Command::Check { config } => check(&config),
        Command::Policy {
            command:
                PolicyCommand::Eval {
                    path,
                    input,
                    data,
                    entrypoint,
                    explain,
                },
        } => policy_eval(&path, &input, data.as_deref(), &entrypoint, explain),
        Command::Policy {
            command: PolicyCommand::Test { path },
        } => policy_test(&path),
        Command::Certs {
            command: CertsCommand::Init { dir, trust_domain },
        } => certs_init(dir, &trust_domain),
        Command::Certs {
            command:
                CertsCommand::Issue {
                    dir,
                    spiffe_id,
                    ttl,
                    name,
                },
        } => certs_issue(dir, &spiffe_id, &ttl, name),
        Command::Redirect { command } => redirect(command),
        Command::Inject {
            listen,
            tls_cert,
            tls_key,
            config,
        } => inject(listen, tls_cert, tls_key, config),
        Command::Version => {
            println!(
                "tollgate {} (git {}) engines: rego, wasm",
                env!("CARGO_PKG_VERSION"),
                env!("TOLLGATE_GIT_REVISION")
            );
            Ok(())
        }
    }
}

fn inject(
    listen: std::net::SocketAddr,
    cert: PathBuf,
    key: PathBuf,
    config: Option<PathBuf>,
) -> Result<(), Failure> {
    use tollgate::inject::server::{self, ServingCert};
    tollgate::tls::install_crypto_provider();
    tollgate::telemetry::init_logging(LogFormat::Json);
    let settings = match &config {
        Some(path) => tollgate::inject::Settings::load(path),
        None => Ok(tollgate::inject::Settings::default()),
    }
    .map_err(|e| Failure::usage(e.to_string()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::runtime(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(async move {
        let (listener, tls, cert) = server::bind(listen, ServingCert { cert, key })
            .await
            .map_err(|e| Failure::usage(e.to_string()))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Failure::runtime(e.to_string()))?;
        tracing::info!(%addr, image = %settings.image, "injector ready");
        tokio::select! {
            () = server::serve(listener, tls, cert, std::sync::Arc::new(settings)) => Ok(()),
            _ = tokio::signal::ctrl_c() => Ok(()),
            () = terminated() => Ok(()),
        }
    })
}

/// Resolves on SIGTERM (the kubelet's stop); never when the handler cannot be installed.
async fn terminated() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut signal) => {
            signal.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}

fn redirect(command: RedirectCommand) -> Result<(), Failure> {
    use tollgate::redirect::{self, Ipv6Mode, RedirectSpec};
    let fail = |e: redirect::RedirectError| Failure {
        code: e.exit_code(),
        message: e.to_string(),
    };
    let lines = match command {
        RedirectCommand::Install {
            proxy_uid,
            proxy_port,
            exclude_ports,
            exclude_cidrs,
            ipv6,
            dry_run,
        } => {
            let ipv6 = Ipv6Mode::parse(&ipv6).map_err(|e| fail(e.into()))?;
            let spec = RedirectSpec::new(
                proxy_uid,
                proxy_port,
                exclude_ports.as_deref(),
                exclude_cidrs.as_deref(),
                ipv6,
            )
            .map_err(|e| fail(e.into()))?;
            redirect::install(&spec, dry_run).map_err(fail)?
        }
        RedirectCommand::Remove => redirect::remove().map_err(fail)?,
    };
    for line in lines {
        println!("{line}");
    }
    Ok(())
}

fn run(path: Option<PathBuf>, dry_run: bool) -> Result<(), Failure> {
    let builtin = path.is_none();
    let config = match &path {
        Some(path) => config::load_file(path),
        None => config::builtin(),
    }
    .map_err(|errors| Failure::usage(errors.to_string()))?;
    tollgate::telemetry::init_logging(config.telemetry.log_format);
    if builtin && config.telemetry.log_format == LogFormat::Json {
        tracing::info!("using the built-in local-development configuration");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(tollgate::policy::on_worker_park)
        .build()
        .map_err(|e| Failure::runtime(format!("cannot start the runtime: {e}")))?;
    let options = RunOptions {
        dry_run,
        banner: builtin,
        config_path: path.clone(),
    };
    runtime
        .block_on(app::run(config, options))
        .map_err(|e| match e {
            StartError::Config(message) => Failure::usage(message),
            StartError::Runtime(message) => Failure::runtime(message),
        })
}

fn check(path: &Path) -> Result<(), Failure> {
    tollgate::tls::install_crypto_provider();
    let config = config::load_file(path).map_err(|errors| Failure::usage(errors.to_string()))?;
    let mut problems = Vec::new();
    // The policy compiles, and on the probe inputs (a request and a connection-level check)
    // its decision has the decision's type, as a reload requires.
    match app::load_policy(&config) {
        Ok(policy) => {
            if let Err(e) = policy.check_decision_type() {
                problems.push(format!(
                    "{}: policy: {e} (evaluating {} on the probe inputs)",
                    config.origin, config.policy.entrypoint
                ));
            }
        }
        Err(e) => problems.push(e.to_string()),
    }
    if let Err(e) =
        tollgate::telemetry::decision_log::check_writable(&config.telemetry.decision_log)
    {
        problems.push(format!("{}: telemetry.decision_log: {e}", config.origin));
    }
    if let Some(ca) = &config.intercept_ca
        && let Err(e) = tollgate::tls::intercept::InterceptAuthority::load(&ca.cert, &ca.key)
    {
        problems.push(format!("{}: intercept_ca: {e}", config.origin));
    }
    for listener in &config.listeners {
        if let Some(tls) = &listener.tls
            && let Err(e) = app::trust_bundles(&config)
                .and_then(|bundles| {
                    // With only the Workload API, bundles arrive at run time: check the rest.
                    if bundles.is_empty() && config.identity.workload_api.is_some() {
                        return Ok(None);
                    }
                    app::client_verifier(&config, &bundles, listener.client_auth)
                })
                .map_err(|e| e.to_string())
                .and_then(|verifier| {
                    tollgate::tls::listener_server_config(&tls.cert, &tls.key, verifier)
                        .map_err(|e| e.to_string())
                })
        {
            problems.push(format!(
                "{}: listeners.{}.tls: {e}",
                config.origin, listener.name
            ));
        }
    }
    // Credentials resolvable: signing keys load, secret files and variables can be read.
    if let Ok(metrics) = tollgate::telemetry::metrics::Metrics::new(&[], false)
        && let Err(errors) = tollgate::credentials::CredentialStore::build(
            &config.credentials,
            &config.agent_secrets,
            &metrics,
            None,
            true,
        )
    {
        for error in errors {
            problems.push(format!("{}: {error}", config.origin));
        }
    }
    if let Err(e) = tollgate::tls::upstream::client_config(config.upstream.ca.as_deref()) {
        problems.push(format!("{}: upstream.ca: {e}", config.origin));
    }
    if problems.is_empty() {
        println!("{}: ok", config.origin);
        Ok(())
    } else {
        Err(Failure::usage(problems.join("\n")))
    }
}

fn read_file(path: &Path, what: &str) -> Result<String, Failure> {
    std::fs::read_to_string(path)
        .map_err(|e| Failure::usage(format!("{}: cannot read {what}: {e}", path.display())))
}

/// `policy eval`: prints the policy's own value; with `explain`, one JSON object holding it
/// (`value`, absent when undefined) and the decision tollgate would apply (`applied`, plus
/// `error` when that is a `policy_error`). Exit 1 when the value is not a valid decision.
fn policy_eval(
    path: &Path,
    input: &Path,
    data: Option<&Path>,
    entrypoint: &str,
    explain: bool,
) -> Result<(), Failure> {
    let at =
        |e: tollgate::policy::PolicyLoadError| Failure::usage(format!("{}: {e}", path.display()));
    // Same rule as `engine: auto`: .wasm → module, .tar.gz → bundle, else Rego source.
    let revision = match PolicySource::from_path(path.to_path_buf()) {
        PolicySource::WasmBundle(_) => {
            if data.is_some() {
                return Err(Failure::usage(format!(
                    "{}: an OPA bundle carries its own data.json; drop -d",
                    path.display()
                )));
            }
            PolicyRevision::load_wasm_bundle(path, entrypoint).map_err(at)?
        }
        PolicySource::WasmModule(_) => {
            let data_text = match data {
                Some(file) => read_file(file, "data")?,
                None => "{}".to_string(),
            };
            PolicyRevision::load_wasm_module(path, &data_text, entrypoint).map_err(at)?
        }
        PolicySource::Bundled | PolicySource::Path(_) => {
            let modules = read_modules(path, false).map_err(|e| Failure::usage(e.to_string()))?;
            let data_text = match data {
                Some(file) => read_file(file, "data")?,
                None if path.join("data.json").is_file() => {
                    read_file(&path.join("data.json"), "data")?
                }
                None => "{}".to_string(),
            };
            PolicyRevision::compile(&modules, &data_text, entrypoint).map_err(at)?
        }
    };
    let input_text = read_file(input, "input")?;
    let input_value = regorus::Value::from_json_str(&input_text)
        .map_err(|e| Failure::usage(format!("{}: not valid JSON: {e}", input.display())))?;
    let (own, evaluation) = revision.evaluate_explained(input_value);
    // The policy's own value, verbatim (nothing added): what a policy author wrote.
    let own = match own {
        Some(value) => Some(
            value
                .to_json_str()
                .ok()
                .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
                .ok_or_else(|| {
                    Failure::runtime("the policy's value is not representable as JSON")
                })?,
        ),
        None => None,
    };
    let applied = match &evaluation.outcome {
        Ok(decision) => decision.to_json(),
        Err(failure) => serde_json::json!({"allow": false, "reason": failure.reason()}),
    };
    if explain {
        let mut shown = serde_json::json!({ "applied": applied });
        if let Some(own) = &own {
            shown["value"] = own.clone();
        }
        if let Err(failure) = &evaluation.outcome {
            shown["error"] = failure.detail().into();
        }
        println!("{shown}");
    } else if let Some(own) = &own {
        println!("{own}");
    }
    match evaluation.outcome {
        Ok(_) => Ok(()),
        Err(failure) => Err(Failure::runtime(format!(
            "policy_error: {} (tollgate would apply {applied})",
            failure.detail()
        ))),
    }
}

fn policy_test(path: &Path) -> Result<(), Failure> {
    if !matches!(
        PolicySource::from_path(path.to_path_buf()),
        PolicySource::Path(_)
    ) {
        return Err(Failure::usage(format!(
            "{}: a Wasm module or bundle carries no test rules (OPA compiles only the \
             entrypoint); run `tollgate policy test` on the Rego sources it was built from",
            path.display()
        )));
    }
    let outcomes = run_tests(path).map_err(|e| Failure::usage(e.to_string()))?;
    let mut failed = 0;
    for outcome in &outcomes {
        let ms = outcome.duration.as_secs_f64() * 1000.0;
        match &outcome.result {
            TestResult::Pass => println!("PASS {} ({ms:.2}ms)", outcome.name),
            TestResult::Fail => {
                failed += 1;
                println!("FAIL {} ({ms:.2}ms)", outcome.name);
            }
            TestResult::Error(message) => {
                failed += 1;
                println!("ERROR {} ({ms:.2}ms): {message}", outcome.name);
            }
        }
    }
    println!("{}", "-".repeat(80));
    let total = outcomes.len();
    println!("PASS: {}/{total}", total - failed);
    if failed > 0 {
        println!("FAIL: {failed}/{total}");
        return Err(Failure::runtime(""));
    }
    if total == 0 {
        return Err(Failure::usage(format!(
            "{}: no test_* rules found",
            path.display()
        )));
    }
    Ok(())
}

fn certs_init(dir: PathBuf, trust_domain: &str) -> Result<(), Failure> {
    let id = SpiffeId::parse(&format!("spiffe://{trust_domain}"))
        .map_err(|e| Failure::usage(format!("--trust-domain {trust_domain}: {e}")))?;
    let layout = DevPkiLayout { dir };
    let written = layout
        .init(id.trust_domain())
        .map_err(|e| Failure::runtime(e.to_string()))?;
    if written.is_empty() {
        println!(
            "{}: already initialized for {trust_domain}; nothing written",
            layout.dir.display()
        );
    }
    for file in written {
        println!("wrote {}", file.display());
    }
    Ok(())
}

fn certs_issue(
    dir: PathBuf,
    spiffe_id: &str,
    ttl: &str,
    name: Option<String>,
) -> Result<(), Failure> {
    let id = SpiffeId::parse(spiffe_id)
        .map_err(|e| Failure::usage(format!("--spiffe-id {spiffe_id}: {e}")))?;
    let ttl =
        config::duration::parse_duration(ttl).map_err(|e| Failure::usage(format!("--ttl: {e}")))?;
    if ttl.is_zero() {
        return Err(Failure::usage("--ttl: must be greater than zero"));
    }
    let name = name.unwrap_or_else(|| svid_file_stem(&id));
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return Err(Failure::usage(format!(
            "--name {name}: must be a plain file name"
        )));
    }
    let layout = DevPkiLayout { dir };
    let (cert, key) = layout.issue(&id, ttl, &name).map_err(|e| match e {
        tollgate::tls::ca::CaError::NoTrustDomain { .. } => Failure::usage(e.to_string()),
        other => Failure::runtime(other.to_string()),
    })?;
    println!("wrote {}", cert.display());
    println!("wrote {}", key.display());
    Ok(())
}

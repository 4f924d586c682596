//! The `hadrill` command line: clap definitions and the dispatch of each subcommand.

mod plan;
mod recover;
mod rigcmd;
mod run;
mod target;

use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand};

use crate::exit::{Code, Fatal};
use crate::runner::Selection;
use crate::suite::{self, Suites};

/// Conformance and chaos suites for highly-available Kubernetes control planes.
#[derive(Debug, Parser)]
#[command(name = "hadrill", version, propagate_version = true, disable_help_subcommand = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub cmd: Command,
}

/// Target and suite options, as in kubectl and etcdctl.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Global {
    /// Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: its current-context).
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
    /// etcd client URLs, comma-separated (https://10.0.0.1:2379,…).
    #[arg(long, global = true, value_delimiter = ',', value_name = "URLS")]
    pub etcd_endpoints: Vec<String>,
    /// CA bundle that signed the etcd servers' certificates.
    #[arg(long, global = true, value_name = "FILE")]
    pub etcd_cacert: Option<PathBuf>,
    /// Client certificate for etcd.
    #[arg(long, global = true, value_name = "FILE")]
    pub etcd_cert: Option<PathBuf>,
    /// Client key for etcd.
    #[arg(long, global = true, value_name = "FILE")]
    pub etcd_key: Option<PathBuf>,
    /// The cluster CA's key (kubeadm: /etc/kubernetes/pki/ca.key), for the `certs` suite's
    /// test client certificates; kept in memory, never written.
    #[arg(long, global = true, value_name = "FILE")]
    pub kube_ca_key: Option<PathBuf>,
    /// YAML config file: target and safety settings (flags win over it).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// A directory of extra suite files (*.yaml), added to the built-in ones.
    #[arg(long, global = true, value_name = "DIR")]
    pub suite_dir: Vec<PathBuf>,
    /// The fault ledger directory (default: $HADRILL_LEDGER, /var/lib/hadrill/ledger as root).
    #[arg(long, global = true, value_name = "DIR")]
    pub ledger: Option<PathBuf>,
    /// More log output on stderr (-v info, -vv debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List every suite and case, with a one-line description and whether it is disruptive.
    List,
    /// Run suites against the target and write the reports.
    Run(run::RunArgs),
    /// Show what a run would do (cases, faults, where, how reverted); change nothing.
    Plan(plan::PlanArgs),
    /// Revert what a killed run left behind, from the fault ledger.
    Recover(recover::RecoverArgs),
    /// The local rig: real etcd members on this machine.
    #[command(subcommand)]
    Rig(rigcmd::RigCmd),
    /// Print a shell completion script.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the version.
    Version,
}

/// Parses the command line and runs it; returns the exit code. Never panics on bad input.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => return usage_error(e),
    };
    init_logging(cli.global.verbose);
    match dispatch(cli) {
        Ok(code) => code as i32,
        Err(f) => {
            eprintln!("hadrill: {}", crate::exit::one_line(&f.message));
            f.code as i32
        }
    }
}

/// Help and version go to stdout (exit 0); a bare `hadrill` prints the help on stderr
/// (exit 2); any other command-line error is one line naming the problem and the usage.
fn usage_error(e: clap::Error) -> i32 {
    use clap::error::ErrorKind;
    if !e.use_stderr() {
        let _ = e.print();
        return 0;
    }
    if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        let _ = e.print();
        return Code::Usage as i32;
    }
    eprintln!("hadrill: {}", clap_one_line(&e.render().to_string()));
    Code::Usage as i32
}

/// `error: unexpected argument '--bogus' found … Usage: hadrill run [OPTIONS] [FILTER] …` →
/// `unexpected argument '--bogus' found (usage: hadrill run [OPTIONS] [FILTER]; see --help)`.
fn clap_one_line(rendered: &str) -> String {
    // the first paragraph: the error and what it lists (missing arguments, possible values)
    let para: Vec<&str> =
        rendered.lines().map(str::trim).skip_while(|l| l.is_empty()).take_while(|l| !l.is_empty()).collect();
    let what = para.join(" ");
    let what = what.trim_start_matches("error:").trim();
    let what = if what.is_empty() { "invalid command line" } else { what };
    let tip = rendered
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("tip: "))
        .map(|t| format!("; {t}"))
        .unwrap_or_default();
    match rendered.lines().map(str::trim).find_map(|l| l.strip_prefix("Usage: ")) {
        Some(usage) => format!("{what}{tip} (usage: {usage}; see --help)"),
        None => format!("{what}{tip} (see --help)"),
    }
}

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("HADRILL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("hadrill={level}")));
    let _ =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).try_init();
}

fn runtime() -> Result<tokio::runtime::Runtime, Fatal> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Fatal::usage(format!("cannot start the async runtime: {e}")))
}

fn dispatch(cli: Cli) -> Result<Code, Fatal> {
    match cli.cmd {
        Command::Version => {
            println!("hadrill {}", env!("CARGO_PKG_VERSION"));
            Ok(Code::Ok)
        }
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "hadrill", &mut std::io::stdout());
            Ok(Code::Ok)
        }
        Command::List => {
            // the config's suite directories are listed too, and a broken config is refused
            let config = target::resolve(&cli.global)?.config;
            let suites = load_suites(&cli.global, Some(&config))?;
            print!("{}", list_text(&suites));
            Ok(Code::Ok)
        }
        Command::Run(args) => run::run(&cli.global, args),
        Command::Plan(args) => plan::plan(&cli.global, args),
        Command::Recover(args) => recover::recover(&cli.global, args),
        Command::Rig(cmd) => rigcmd::rig(&cli.global, cmd),
    }
}

/// Built-in suites plus `--suite-dir` and the config's `suite_dirs`.
pub fn load_suites(g: &Global, config: Option<&crate::config::Config>) -> Result<Suites, Fatal> {
    let mut suites = suite::builtin().map_err(|e| Fatal::usage(e.to_string()))?;
    let mut dirs: Vec<PathBuf> = g.suite_dir.clone();
    if let Some(c) = config {
        dirs.extend(c.suite_dirs.iter().cloned());
    }
    for d in dirs {
        suite::load_dir(&mut suites, &d).map_err(|e| Fatal::usage(e.to_string()))?;
    }
    Ok(suites)
}

/// The text of `hadrill list`.
pub fn list_text(suites: &Suites) -> String {
    let mut out = String::new();
    for s in suites.iter() {
        out.push_str(&format!("{}  {}\n", s.suite, s.description));
        for c in &s.cases {
            let name = format!("{}::{}", s.suite, c.name);
            let mut tags = Vec::new();
            if c.disruptive {
                tags.push("disruptive".to_string());
            }
            if let Some(r) = &c.ignore {
                tags.push(format!("ignored: {r}"));
            }
            let tags = if tags.is_empty() { String::new() } else { format!("  [{}]", tags.join("; ")) };
            out.push_str(&format!("  {name:<46} {}{tags}\n", c.description));
        }
    }
    out
}

/// Refuses a selection that names nothing, so a typo is not a green run.
fn require_selection(suites: &Suites, sel: &Selection) -> Result<(), Fatal> {
    if crate::runner::selected(suites, sel).is_empty() && !sel.list {
        let names: Vec<&str> = suites.iter().map(|s| s.suite.as_str()).collect();
        return Err(Fatal::usage(format!(
            "no case matches `{}` (suites: {}; see `hadrill list`)",
            sel.filters.join("` or `"),
            names.join(", ")
        )));
    }
    Ok(())
}

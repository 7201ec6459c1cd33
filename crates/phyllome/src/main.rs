//! The `phyllome` command line.

mod cli;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use cli::{host, image, os, packaging, setup, vm, xml};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "phyllome", version, about = "Run your favourite operating systems well, in virtual machines")]
struct Cli {
    /// libvirt connection URI.
    #[arg(long, global = true, env = "PHYLLOME_CONNECT", default_value = "qemu:///system")]
    connect: String,
    /// Work on a host added with `phyllome host add` (its URI instead of --connect's; `local` is --connect's).
    #[arg(long, global = true, env = "PHYLLOME_HOST", value_name = "NAME")]
    host: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The guest OS catalog: which virtual hardware each OS gets, and why.
    #[command(subcommand)]
    Os(os::OsCommand),
    /// Print the libvirt domain XML for a VM, tuned to this host. Changes nothing.
    Xml(Box<xml::XmlArgs>),
    /// What Phyllome knows about this host (CPU, memory, KVM, firmware, libvirt).
    #[command(subcommand)]
    Host(host::HostCommand),
    /// Phyllome OS images: the Fedora Remix that hosts your VMs.
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Print a shell completion script (for packaging).
    #[command(hide = true)]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page in roff, or write every page into DIR (for packaging).
    #[command(hide = true)]
    Manpage {
        #[arg(long, value_name = "DIR")]
        dir: Option<std::path::PathBuf>,
    },
    /// Is this host ready to run guests well? Each check says what to fix; exits 1 when one fails.
    Check(cli::check::CheckArgs),
    /// PCI and USB devices, and whether each can be passed through to a VM.
    Devices(cli::devices::DevicesArgs),
    /// Pass a host device through to a VM (a last resort: a device given away leaves the host).
    Attach(cli::devices::AttachArgs),
    /// Take a passed-through host device back from a VM.
    Detach(cli::devices::DetachArgs),
    /// Serve the web UI and REST API (with VM consoles in the browser).
    Serve(Box<cli::serve::ServeArgs>),
    /// Accounts of the web UI and API.
    #[command(subcommand)]
    User(cli::serve::UserCommand),
    /// Disk volumes on their own (what `delete --keep-disk` kept): list, delete.
    #[command(subcommand)]
    Volume(cli::volume::VolumeCommand),
    /// Install media: what an ISO holds, and the host's ISO folder.
    #[command(subcommand)]
    Iso(cli::iso::IsoCommand),
    /// Host folders shared with a VM over virtiofs (read-only by default).
    #[command(subcommand)]
    Share(cli::share::ShareCommand),
    /// A VM's manifest: what was chosen for it, in TOML (docs/manifest.md).
    Manifest {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Write a stopped VM into one encrypted file (disk, UEFI variables, TPM state), to move it to another host.
    Export(cli::bundle::ExportArgs),
    /// Make a VM from an exported file, re-tuned for this host (says what changed, and why).
    Import(Box<cli::bundle::ImportArgs>),
    /// What `apply` would change to make the host's VMs what the manifests say (per VM).
    Diff(cli::apply::DiffArgs),
    /// Make the host's VMs what the manifests say: create, change, and with --prune remove what apply made.
    Apply(cli::apply::ApplyArgs),
    /// Move a VM to another libvirt host (live or stopped), its encrypted disk, TPM and UEFI variables with it.
    Migrate(Box<cli::migrate::MigrateArgs>),
    /// Snapshots of a whole VM: disks, UEFI variables, TPM state, and with --memory its RAM.
    #[command(subcommand)]
    Snapshot(cli::snapshot::SnapshotCommand),
    /// What the running VMs use: CPU, memory, disk, network (one libvirt call a sample).
    Stats(cli::stats::StatsArgs),
    /// A live view of the running VMs, busiest first (like virt-top); q quits.
    Top(cli::stats::TopArgs),
    #[command(flatten)]
    Vm(vm::VmCommand),
}

/// `phyllome list | head` ends quietly, as other command-line tools do, instead of a panic
/// message when the reader closed the pipe (`println!` panics on EPIPE). SIGPIPE itself stays
/// ignored, so a child's closed pipe is an error its command handles (a create rolls back).
fn quiet_on_closed_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to std") && msg.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}

fn main() -> ExitCode {
    // With --json anywhere, errors are JSON too: {"error": ..., "kind": ...} on stderr.
    let json = std::env::args().any(|a| a == "--json");
    let parsed = Cli::command().try_get_matches().and_then(|m| Cli::from_arg_matches(&m).map(|cli| (cli, m)));
    let (cli, matches) = match parsed {
        Ok(parsed) => parsed,
        Err(e) if json && e.use_stderr() => {
            let msg = e.to_string();
            let first = msg.lines().next().unwrap_or_default().trim_start_matches("error: ");
            return report(json, first, phyllome_engine::errors::ErrorKind::Usage);
        }
        Err(e) => e.exit(),
    };
    quiet_on_closed_pipe();
    let uri = match connection(&cli, &matches) {
        Ok(uri) => uri,
        Err(e) => return report(json, &e.to_string(), e.kind()),
    };
    let uri = uri.as_str();
    let result = match cli.command {
        Command::Os(os::OsCommand::List { json }) => os::list(json),
        Command::Os(os::OsCommand::Show { id, json }) => os::show(&id, json),
        Command::Xml(args) => xml::run(uri, *args),
        Command::Vm(cmd) => vm::run(uri, cmd),
        Command::Volume(cmd) => cli::volume::run(uri, cmd),
        Command::Host(host::HostCommand::Facts { json, record, via_libvirt }) => {
            host::facts(uri, json, record, via_libvirt)
        }
        Command::Host(host::HostCommand::Setup { dry_run, root }) => setup::run(uri, dry_run, &root),
        Command::Host(host::HostCommand::Add { name, uri, no_check, json }) => host::add(&name, &uri, no_check, json),
        Command::Host(host::HostCommand::List { offline, json }) => host::list(uri, offline, json),
        Command::Host(host::HostCommand::Remove { name, json }) => host::remove(&name, json),
        Command::Host(host::HostCommand::Clean { destination, dry_run, json }) => {
            host::clean(uri, &destination, dry_run, json)
        }
        Command::Image(image::ImageCommand::Kickstart(args)) => image::kickstart(args),
        Command::Completions { shell } => packaging::completions(Cli::command(), shell),
        Command::Manpage { dir } => packaging::manpage(Cli::command(), dir),
        Command::Check(args) => cli::check::run(uri, args),
        Command::Devices(args) => cli::devices::list(args),
        Command::Attach(args) => cli::devices::attach(uri, args),
        Command::Detach(args) => cli::devices::detach(uri, args),
        Command::Serve(args) => cli::serve::serve(uri, *args),
        Command::User(cmd) => cli::serve::user(cmd),
        Command::Iso(cmd) => cli::iso::run(uri, cmd),
        Command::Share(cmd) => cli::share::run(uri, cmd),
        Command::Snapshot(cmd) => cli::snapshot::run(uri, cmd),
        Command::Migrate(args) => cli::migrate::run(uri, *args),
        Command::Export(args) => cli::bundle::export(uri, args),
        Command::Import(args) => cli::bundle::import(uri, *args),
        Command::Manifest { name, json } => cli::manifest::manifest(uri, &name, json),
        Command::Diff(args) => cli::apply::diff(uri, args),
        Command::Apply(args) => cli::apply::apply(uri, args),
        Command::Stats(args) => cli::stats::stats(uri, args),
        Command::Top(args) => cli::stats::top(uri, args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(json, &e.to_string(), e.kind()),
    }
}

/// A usage error found after parsing (exit 2, as clap's own).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Usage(pub(crate) String);

impl phyllome_engine::errors::Classify for Usage {
    fn kind(&self) -> phyllome_engine::errors::ErrorKind {
        phyllome_engine::errors::ErrorKind::Usage
    }
}

/// The libvirt URI the command works on: `--connect`'s, or with `--host NAME` that host's
/// (`local` is `--connect`'s). `--host` and `--connect` both on the command line is a usage
/// error; one on the command line beats the other's environment variable. `host add|list|remove`
/// manage the names and `list --all-hosts` reaches every host, so for them `--host` picks nothing.
fn connection(cli: &Cli, matches: &clap::ArgMatches) -> Result<String, phyllome_engine::errors::Failure> {
    let typed = |id: &str| matches.value_source(id) == Some(ValueSource::CommandLine);
    let Some(name) = &cli.host else { return Ok(cli.connect.clone()) };
    if typed("host") && typed("connect") {
        return Err(Usage("--host NAME and --connect URI both say where to connect: give one".into()).into());
    }
    let all_hosts = matches!(cli.command, Command::Vm(vm::VmCommand::List { all_hosts: true, .. }));
    if all_hosts && typed("host") {
        return Err(Usage("list --all-hosts lists every host; --host picks one: give one".into()).into());
    }
    let manages = matches!(
        cli.command,
        Command::Host(
            host::HostCommand::Add { .. } | host::HostCommand::List { .. } | host::HostCommand::Remove { .. }
        )
    );
    if manages || all_hosts || (typed("connect") && !typed("host")) || name == phyllome_engine::remotes::LOCAL {
        return Ok(cli.connect.clone());
    }
    Ok(phyllome_engine::remotes::Remotes::open().uri(name)?)
}

/// Prints an error (as JSON with --json) and returns its class's exit code (README, "Exit codes").
fn report(json: bool, message: &str, kind: phyllome_engine::errors::ErrorKind) -> ExitCode {
    if json {
        eprintln!("{}", serde_json::json!({ "error": message, "kind": kind }));
    } else {
        eprintln!("phyllome: error: {message}");
    }
    ExitCode::from(kind.exit_code())
}

//! The `phyllome` command line.

mod cli;

use clap::{Parser, Subcommand};
use cli::{host, os, vm, xml};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "phyllome", version, about = "Run your favourite operating systems well, in virtual machines")]
struct Cli {
    /// libvirt connection URI.
    #[arg(long, global = true, env = "PHYLLOME_CONNECT", default_value = "qemu:///system")]
    connect: String,
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
    #[command(flatten)]
    Vm(vm::VmCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let uri = cli.connect.as_str();
    let result = match cli.command {
        Command::Os(os::OsCommand::List { json }) => os::list(json),
        Command::Os(os::OsCommand::Show { id, json }) => os::show(&id, json),
        Command::Xml(args) => xml::run(uri, *args),
        Command::Vm(cmd) => vm::run(uri, cmd),
        Command::Host(host::HostCommand::Facts { json, record }) => host::facts(uri, json, record),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("phyllome: error: {e}");
            ExitCode::FAILURE
        }
    }
}

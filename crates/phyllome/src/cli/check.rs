//! `phyllome check`: is this host ready to run guests well, and what exactly to fix.

use super::Fallible;
use clap::Args;
use phyllome_engine::host_facts;
use phyllome_host::check::{self, Inputs, Report, Status};
use phyllome_libvirt::Libvirt;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct CheckArgs {
    /// Print {"verdict", "checks": [{"id", "status", "summary", "fix"}]}.
    #[arg(long)]
    json: bool,
    /// Read the host through DIR (a recorded tree) instead of /; the KVM probe, libvirtd and free space are then not asked.
    #[arg(long, value_name = "DIR", default_value = "/")]
    root: PathBuf,
}

/// Whether `root` is this running host.
pub fn is_live_root(root: &Path) -> Result<bool, String> {
    let canonical = root.canonicalize().map_err(|e| format!("--root {}: {e}", root.display()))?;
    Ok(canonical == Path::new("/"))
}

/// What only the running host can answer: libvirtd, the KVM probe, free space, the user.
pub fn run(uri: &str, args: CheckArgs) -> Fallible {
    phyllome_engine::host_files::here_only_uri(uri, "phyllome check (it examines this machine)")?;
    let inputs = if is_live_root(&args.root)? {
        let lv = Libvirt::connect(uri).map_err(|e| e.message);
        host_facts::check_inputs(lv.as_ref().map_err(String::clone), uri)
    } else {
        let mut i = Inputs::recorded(&format!("--root {} is not the running host", args.root.display()));
        i.uri = uri.to_string();
        i.user = check::current_user();
        i
    };
    let report = check::run(&args.root, &inputs);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    if report.failed() {
        // A failing check is the answer, not an error: exit 1 without an error line.
        std::io::stdout().flush()?;
        std::process::exit(1);
    }
    Ok(())
}

fn print_report(report: &Report) {
    let w = report.checks.iter().map(|c| c.id.len()).max().unwrap_or(0);
    for c in &report.checks {
        println!("{:4}  {:w$}  {}", c.status.as_str().to_uppercase(), c.id, c.summary);
        if let Some(fix) = &c.fix {
            println!("{:4}  {:w$}  fix: {fix}", "", "");
        }
    }
    let count = |s: Status| report.checks.iter().filter(|c| c.status == s).count();
    println!(
        "\nverdict: {} ({} fail, {} warn, {} pass)",
        report.verdict.as_str(),
        count(Status::Fail),
        count(Status::Warn),
        count(Status::Pass)
    );
}

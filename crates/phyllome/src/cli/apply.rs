//! `phyllome diff` and `phyllome apply`: the host's VMs as manifests (docs/manifest.md).

use super::Fallible;
use clap::Args;
use phyllome_engine::apply::{self, Action, Outcome, VmDiff};
use phyllome_engine::op::progress::Progress;
use phyllome_engine::text::printable;
use phyllome_libvirt::Libvirt;
use std::path::PathBuf;

#[derive(Args)]
pub struct DiffArgs {
    /// A manifest, or a folder of them (every *.toml in it; each names one VM).
    #[arg(short = 'f', long = "file", value_name = "FILE|DIR")]
    pub file: PathBuf,
    /// Also list the VMs apply made from this FILE or DIR that no manifest names any more.
    #[arg(long)]
    pub prune: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct ApplyArgs {
    /// A manifest, or a folder of them (every *.toml in it; each names one VM).
    #[arg(short = 'f', long = "file", value_name = "FILE|DIR")]
    pub file: PathBuf,
    /// Show what would change, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Remove the VMs apply made from this FILE or DIR that no manifest names any more (never others).
    #[arg(long)]
    pub prune: bool,
    #[arg(long)]
    pub json: bool,
}

/// The diff as text: `create NAME`, `change NAME` with a line a field, `unchanged NAME`, `remove NAME`.
pub fn render(vms: &[VmDiff]) -> String {
    let mut out = String::new();
    for d in vms {
        let name = printable(&d.name);
        match d.action {
            Action::Remove if d.running => out.push_str(&format!("remove {name} (it runs: it stays until stopped)\n")),
            a => out.push_str(&format!("{} {name}\n", a.as_str())),
        }
        for c in &d.changes {
            let wait = if c.needs_stop { format!(" (needs {name} stopped)") } else { String::new() };
            out.push_str(&format!("  {}: {} -> {}{wait}\n", c.field, printable(&c.from), printable(&c.to)));
        }
    }
    out
}

fn load_and_plan(
    uri: &str,
    file: &std::path::Path,
    prune: bool,
) -> Result<(Libvirt, apply::Plan), phyllome_engine::errors::Failure> {
    let src = apply::load(file)?;
    let lv = Libvirt::connect(uri)?;
    let plan = apply::plan(&lv, &src, prune)?;
    Ok((lv, plan))
}

/// `phyllome diff -f FILE|DIR`: what apply would change, per VM.
pub fn diff(uri: &str, args: DiffArgs) -> Fallible {
    let (_, plan) = load_and_plan(uri, &args.file, args.prune)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&plan.vms)?);
    } else {
        print!("{}", render(&plan.vms));
    }
    Ok(())
}

fn said(o: &Outcome) -> Option<String> {
    let name = printable(&o.name);
    let fields = |f: &[&str]| f.join(", ");
    let mut lines = Vec::new();
    match o.action {
        Action::Create => lines.push(format!("created {name} (not started)")),
        Action::Remove if o.removed.is_some() => lines.push(format!("removed {name}")),
        Action::Change if !o.done.is_empty() => lines.push(format!("changed {name}: {}", fields(&o.done))),
        _ => {}
    }
    if !o.waiting.is_empty() {
        lines.push(format!("not changed yet in {name}: {}", fields(&o.waiting)));
    }
    if let Some(n) = &o.note {
        lines.push(format!("{}", printable(n)));
    }
    (!lines.is_empty()).then(|| lines.join("\n"))
}

/// `phyllome apply -f FILE|DIR`: the diff, then the changes (nothing with --dry-run).
pub fn apply(uri: &str, args: ApplyArgs) -> Fallible {
    let (lv, plan) = load_and_plan(uri, &args.file, args.prune)?;
    if !args.json {
        print!("{}", render(&plan.vms));
    }
    let outcomes = if args.dry_run {
        if !args.json {
            eprintln!("phyllome: dry run: nothing was changed");
        }
        Vec::new()
    } else {
        let progress = |p: Progress<'_>| {
            if let (false, Progress::Note { message }) = (args.json, p) {
                eprintln!("phyllome: {}", printable(message));
            }
        };
        apply::apply(&lv, &plan, &progress)?
    };
    if args.json {
        let v = serde_json::json!({
            "source": plan.source,
            "dry_run": args.dry_run,
            "diff": plan.vms,
            "applied": outcomes,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let said: Vec<String> = outcomes.iter().filter_map(said).collect();
    if !args.dry_run {
        if said.is_empty() {
            println!("nothing to change");
        }
        for s in said {
            println!("{s}");
        }
    }
    Ok(())
}

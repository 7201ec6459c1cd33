//! `phyllome host`: the facts the VM models are tuned to, and the named hosts
//! (`host add|list|remove`, used by `--host NAME` and `list --all-hosts`).

use super::Fallible;
use clap::Subcommand;
use phyllome_engine::host_facts;
use phyllome_engine::remotes::{self, Remote, Remotes};
use phyllome_engine::text::printable;
use phyllome_libvirt::Libvirt;
use serde_json::json;

#[derive(Subcommand)]
pub enum HostCommand {
    /// Show the host facts the VM models are tuned to.
    Facts {
        #[arg(long)]
        json: bool,
        /// Write host.json and domcaps.xml into DIR (a recorded-host fixture).
        #[arg(long, value_name = "DIR")]
        record: Option<String>,
        /// Read the host through its libvirt only, as a remote host (`--host`, `migrate --to`) is read.
        #[arg(long)]
        via_libvirt: bool,
    },
    /// Configure this host for virtualization (IOMMU, vfio, nested, libvirt, storage pool), idempotently.
    /// Shows every change before making it.
    Setup {
        /// Only show the changes.
        #[arg(long)]
        dry_run: bool,
        /// Work on the system under DIR instead of this host (nothing is executed there).
        #[arg(long, value_name = "DIR", default_value = "/")]
        root: std::path::PathBuf,
    },
    /// Name a libvirt host (qemu+ssh://root@server/system...) for --host NAME and list --all-hosts.
    /// Checks that it answers first, unless --no-check.
    Add {
        /// 1 to 63 lowercase letters, digits and '-'.
        name: String,
        /// Its libvirt URI: qemu+ssh://user@server/system, qemu+tls://server/system, qemu+unix:///system?socket=...
        uri: String,
        /// Store it without connecting to it.
        #[arg(long)]
        no_check: bool,
        #[arg(long)]
        json: bool,
    },
    /// The named hosts (this host's own connection as `local`), with their libvirt and QEMU versions.
    List {
        /// Do not connect to the hosts: names and URIs only.
        #[arg(long)]
        offline: bool,
        #[arg(long)]
        json: bool,
    },
    /// Forget a named host (nothing on the host itself changes).
    Remove {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Settle the migrations to HOST that were cut short (phyllome killed, HOST away): a move
    /// that got there is finished (the VM's copy here removed), one that did not is undone
    /// (what it made there removed).
    Clean {
        /// A host's name (host add) or a libvirt URI.
        #[arg(value_name = "HOST")]
        destination: String,
        /// Only say what would be done.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
}

pub fn add(name: &str, uri: &str, no_check: bool, json: bool) -> Fallible {
    let list = Remotes::open();
    // Name, URI and duplicates are told before anything is connected to.
    list.check_add(name, uri)?;
    let versions = if no_check {
        None
    } else {
        let unreachable = |why: String| remotes::RemoteError::Unreachable {
            name: name.into(),
            uri: uri.into(),
            why: format!("{why} (nothing stored; --no-check stores it without connecting)"),
        };
        let lv = remotes::connect(&Remote { name: name.into(), uri: uri.into() }).map_err(|e| match e {
            remotes::RemoteError::Unreachable { why, .. } => unreachable(why),
            e => e,
        })?;
        Some(lv.versions().map_err(|e| unreachable(e.to_string()))?)
    };
    let host = list.add(name, uri)?;
    if json {
        let (libvirt, qemu) = versions.as_ref().map(|(l, q)| (Some(l), Some(q))).unwrap_or_default();
        let v = json!({"name": host.name, "uri": host.uri, "checked": !no_check, "libvirt": libvirt, "qemu": qemu});
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    match versions {
        Some((l, q)) => println!("added host {}: {} (libvirt {l}, QEMU {q})", host.name, host.uri),
        None => println!("added host {}: {} (not connected to: --no-check)", host.name, host.uri),
    }
    println!("use it with `phyllome --host {} list`; `phyllome list --all-hosts` shows every host's VMs", host.name);
    Ok(())
}

pub fn remove(name: &str, json: bool) -> Fallible {
    let host = Remotes::open().remove(name)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&json!({"name": host.name, "uri": host.uri}))?);
    } else {
        println!("removed host {} ({}); nothing on that host changed", host.name, host.uri);
    }
    Ok(())
}

pub fn list(local_uri: &str, offline: bool, json: bool) -> Fallible {
    let all = Remotes::open().all(local_uri)?;
    let reached: Vec<Option<Result<(String, String), remotes::RemoteError>>> = if offline {
        all.iter().map(|_| None).collect()
    } else {
        remotes::on_each(&all, remotes::REACH_WITHIN, |lv| lv.versions()).into_iter().map(|(_, r)| Some(r)).collect()
    };
    if json {
        let rows: Vec<_> = all
            .iter()
            .zip(&reached)
            .map(|(h, r)| {
                let (reached, libvirt, qemu, error) = match r {
                    None => (None, None, None, None),
                    Some(Ok((l, q))) => (Some(true), Some(l.as_str()), Some(q.as_str()), None),
                    Some(Err(e)) => (Some(false), None, None, Some(e.to_string())),
                };
                json!({"name": h.name, "uri": h.uri, "reached": reached, "libvirt": libvirt, "qemu": qemu, "error": error})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let w = all.iter().map(|h| h.name.len()).max().unwrap_or(4).max(4);
    if offline {
        println!("{:w$}  URI", "NAME");
        for h in &all {
            println!("{:w$}  {}", h.name, printable(&h.uri));
        }
        return Ok(());
    }
    let versions: Vec<(String, String)> = reached
        .iter()
        .map(|r| match r {
            Some(Ok((l, q))) => (l.clone(), q.clone()),
            _ => ("-".into(), "-".into()),
        })
        .collect();
    let lw = versions.iter().map(|v| v.0.len()).max().unwrap_or(7).max(7);
    let qw = versions.iter().map(|v| v.1.len()).max().unwrap_or(4).max(4);
    println!("{:w$}  {:11}  {:lw$}  {:qw$}  URI", "NAME", "STATE", "LIBVIRT", "QEMU");
    for ((h, r), (l, q)) in all.iter().zip(&reached).zip(&versions) {
        let state = if matches!(r, Some(Ok(_))) { "reached" } else { "unreachable" };
        println!("{:w$}  {state:11}  {l:lw$}  {q:qw$}  {}", h.name, printable(&h.uri));
    }
    for e in reached.iter().flatten().filter_map(|r| r.as_ref().err()) {
        eprintln!("phyllome: warning: {e}");
    }
    Ok(())
}

pub fn clean(uri: &str, host: &str, dry_run: bool, json: bool) -> Fallible {
    let to = if host.contains("://") { host.to_string() } else { Remotes::open().uri(host)? };
    let lv = Libvirt::connect(uri)?;
    let dst = phyllome_engine::migrate::connect(&to)?;
    let moves = phyllome_engine::migrate::clean(&lv, &dst, &to, dry_run);
    if json {
        let v = json!({"host": host, "dry_run": dry_run, "moves": moves});
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if moves.is_empty() {
        println!("no migration to {} was cut short: nothing to clean", printable(host));
    }
    for m in &moves {
        println!("{}: {}", printable(&m.vm), printable(&m.note));
        let verb = if dry_run { "would remove" } else { "removed" };
        for r in &m.removed {
            println!("  {verb}: {}", printable(r));
        }
        for l in &m.left {
            println!("  left: {}", printable(l));
        }
    }
    if dry_run && !moves.is_empty() {
        println!("(dry run: nothing was changed)");
    }
    Ok(())
}

pub fn facts(uri: &str, json: bool, record: Option<String>, via_libvirt: bool) -> Fallible {
    let lv = Libvirt::connect(uri)?;
    let (host, kvm_detail) =
        if via_libvirt { (host_facts::gather_remote(&lv)?, None) } else { host_facts::gather(&lv, true)? };
    if let Some(dir) = record {
        std::fs::create_dir_all(&dir)?;
        let virttype = &host.caps.virt_type;
        std::fs::write(format!("{dir}/domcaps.xml"), lv.domain_capabilities(virttype, "q35")?)?;
        std::fs::write(format!("{dir}/host.json"), serde_json::to_string_pretty(&host.facts)? + "\n")?;
        eprintln!("recorded {dir}/host.json and {dir}/domcaps.xml");
    }
    if json {
        let v =
            json!({"facts": host.facts, "kvm_detail": kvm_detail, "domcaps": host.caps, "features": host.features()});
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let f = &host.facts;
    println!("cpu:       {} ({:?}), {} logical CPUs", f.cpu_model, f.cpu_vendor, f.cpus);
    println!("memory:    {}", phyllome_engine::model::input::human_mib(f.memory_mib));
    println!("kvm:       {:?}{}", f.kvm, kvm_detail.map(|d| format!(" ({d})")).unwrap_or_default());
    let p = &f.platform;
    let library = if p.libvirt_library.is_empty() || p.libvirt_library == p.libvirt {
        String::new()
    } else {
        format!(" (client library {})", p.libvirt_library)
    };
    println!("libvirt:   {}{library}, QEMU {}, domain type {}", p.libvirt, p.qemu, host.caps.virt_type);
    println!("firmware:  {}", f.firmware.iter().map(|d| d.name.as_str()).collect::<Vec<_>>().join(", "));
    match &p.swtpm {
        Some(t) => println!("swtpm:     {} ({})", or(&t.version, "version unknown"), t.features.join(", ")),
        None => println!("swtpm:     {}", if f.swtpm { "yes (it did not describe itself)" } else { "no" }),
    }
    match &p.virtiofsd {
        Some(v) => println!(
            "virtiofsd: {} {}{}",
            v.path,
            or(&v.version, "(version unknown)"),
            if v.readonly { ", --readonly" } else { ", no read-only mode" }
        ),
        None => println!("virtiofsd: none (shared folders unavailable)"),
    }
    println!("snapshots: external revert {}", if p.external_snapshot { "yes" } else { "no" });
    println!("render:    {}", if f.render_nodes.is_empty() { "none".into() } else { f.render_nodes.join(", ") });
    println!("virgl:     {}", if f.virgl { "yes" } else { "no" });
    println!("\nwhat this libvirt {} and QEMU {} can do:", p.libvirt, p.qemu);
    for s in host.features() {
        match (&s.needs, &s.have) {
            (Some(needs), Some(have)) => println!("  no   {:<26} needs {needs} (has {have})", s.feature),
            _ => println!("  yes  {:<26} {}", s.feature, s.what),
        }
    }
    Ok(())
}

fn or<'a>(v: &'a str, unknown: &'a str) -> &'a str {
    if v.is_empty() {
        unknown
    } else {
        v
    }
}

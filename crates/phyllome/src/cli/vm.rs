//! VM lifecycle commands: create, start, stop, kill, pause, resume, delete,
//! list, info, console, display, screenshot.

use super::prompt::read_passphrase;
use super::render::{note, reporter, Steps};
use super::xml::VmArgs;
use super::Fallible;
use clap::{Args, Subcommand};
use phyllome_engine::model::input::human_mib;
use phyllome_engine::model::Encryption;
use phyllome_engine::text::printable;
use phyllome_engine::vm;
use phyllome_libvirt::Libvirt;
use std::time::Duration;

#[derive(Subcommand)]
pub enum VmCommand {
    /// Create a VM (disk encrypted by default), optionally starting it.
    Create(Box<CreateArgs>),
    /// Start a VM (asks for the disk passphrase when it has one).
    Start {
        name: String,
        /// Attach to the serial console once started.
        #[arg(long)]
        console: bool,
    },
    /// Shut a VM down: ACPI power button, then the guest agent.
    Stop {
        name: String,
        /// Seconds to wait before giving up (or forcing).
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// Power off if the guest has not shut down in time.
        #[arg(long)]
        force: bool,
    },
    /// Power a VM off at once (like pulling the plug).
    Kill { name: String },
    /// Pause a running VM.
    Pause { name: String },
    /// Resume a paused VM.
    Resume { name: String },
    /// Delete a stopped VM: domain, disk, its secret, NVRAM and TPM state.
    Delete {
        name: String,
        /// Keep the disk volume (and its key).
        #[arg(long)]
        keep_disk: bool,
    },
    /// Copy a stopped VM: a new UUID and MAC, the disk re-encrypted under a key of its own, the NVRAM
    /// copied, and a fresh TPM (a copied one would clone what the guest sealed in it).
    Clone {
        name: String,
        new_name: String,
        /// Copy the TPM state too (BitLocker and other sealed secrets then work in both VMs).
        #[arg(long)]
        keep_tpm: bool,
        #[arg(long)]
        json: bool,
    },
    /// Start a VM when the host boots (libvirt's autostart): on or off.
    Autostart {
        name: String,
        #[arg(value_parser = ["on", "off"])]
        state: String,
        #[arg(long)]
        json: bool,
    },
    /// List VMs.
    List {
        /// The VMs of this host (--connect) and of every host of `phyllome host list`, with a HOST column;
        /// a host that cannot be reached is reported and does not fail the others.
        #[arg(long)]
        all_hosts: bool,
        #[arg(long)]
        json: bool,
    },
    /// Details of one VM.
    Info {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Attach to a VM's serial console (Ctrl-] leaves).
    Console { name: String },
    /// Show a VM's display address, and open a viewer when one is installed.
    Display { name: String },
    /// Save a screenshot of a VM's display as PNG.
    Screenshot { name: String, file: String },
}

#[derive(Args)]
pub struct CreateArgs {
    /// VM name: letters, digits, '.', '_' and '-', at most 64.
    name: String,
    #[command(flatten)]
    vm: VmArgs,
    /// Start the VM once created.
    #[arg(long)]
    start: bool,
    #[arg(long)]
    json: bool,
}

fn encryption_text(e: Encryption) -> &'static str {
    match e {
        Encryption::Secret => "encrypted (LUKS, random key in a private libvirt secret)",
        Encryption::Prompt => "encrypted (LUKS, your passphrase, asked at each start)",
        Encryption::None => "NOT encrypted",
    }
}

pub fn run(uri: &str, cmd: VmCommand) -> Fallible {
    if let VmCommand::List { all_hosts: true, json } = cmd {
        return list_all_hosts(uri, json);
    }
    let lv = Libvirt::connect(uri)?;
    match cmd {
        VmCommand::Create(a) => create(&lv, *a),
        VmCommand::Start { name, console: attach } => {
            let started = vm::start(&lv, &name, &|| read_passphrase(&format!("Passphrase of {name}'s disk: "), false))?;
            if started {
                note(&format!("started {name}"));
            } else {
                note(&format!("{name} is already running"));
            }
            if attach {
                return console(uri, &name);
            }
            Ok(())
        }
        VmCommand::Stop { name, timeout, force } => {
            let steps = Steps::new(&format!("stopping {name}"));
            let how = vm::stop(&lv, &name, Duration::from_secs(timeout), force, &|p| steps.report(p))?;
            drop(steps);
            let msg = match how {
                vm::Stopped::AlreadyOff => "was already shut off",
                vm::Stopped::PowerButton => "shut down (ACPI power button)",
                vm::Stopped::GuestAgent => "shut down (guest agent)",
                vm::Stopped::Forced => "did not shut down in time and was powered off (--force)",
            };
            note(&format!("{name} {msg}"));
            Ok(())
        }
        VmCommand::Kill { name } => {
            vm::kill(&lv, &name)?;
            note(&format!("{name} powered off"));
            Ok(())
        }
        VmCommand::Pause { name } => {
            vm::pause(&lv, &name)?;
            note(&format!("{name} paused: `phyllome resume {name}` lets it run again"));
            Ok(())
        }
        VmCommand::Resume { name } => {
            vm::resume(&lv, &name)?;
            note(&format!("{name} running again"));
            Ok(())
        }
        VmCommand::Clone { name, new_name, keep_tpm, json } => {
            let steps = Steps::new(&format!("clone {name} as {new_name}"));
            let c = phyllome_engine::clone::clone(&lv, &name, &new_name, keep_tpm, &reporter(&steps))?;
            drop(steps);
            if json {
                println!("{}", serde_json::to_string_pretty(&c)?);
            } else {
                let tpm = if c.kept_tpm { "the TPM state copied" } else { "a fresh TPM" };
                note(&format!("cloned {name} as {new_name} (its own disk key, NVRAM copied, {tpm})"));
            }
            Ok(())
        }
        VmCommand::Autostart { name, state, json } => {
            let on = state == "on";
            vm::set_autostart(&lv, &name, on)?;
            if json {
                println!("{}", serde_json::json!({ "name": name, "autostart": on }));
            } else if on {
                note(&format!("{name} starts when the host boots (libvirt's autostart)"));
            } else {
                note(&format!("{name} no longer starts when the host boots"));
            }
            Ok(())
        }
        VmCommand::Delete { name, keep_disk } => {
            let d = vm::delete(&lv, &name, keep_disk)?;
            let disk = if d.kept_disk {
                "disk kept".to_string()
            } else if d.volumes.is_empty() {
                "no disk volume".to_string()
            } else {
                format!("removed {} and {} secret(s)", d.volumes.join(", "), d.secrets)
            };
            let snaps = match d.snapshots {
                0 => String::new(),
                1 => ", its snapshot".to_string(),
                n => format!(", its {n} snapshots"),
            };
            note(&format!("deleted {name} (domain, NVRAM, TPM state{snaps}; {disk})"));
            for l in &d.left {
                eprintln!("phyllome: warning: left {}", printable(l));
            }
            Ok(())
        }
        VmCommand::List { json, .. } => list(&lv, json),
        VmCommand::Info { name, json } => info(&lv, &name, json),
        VmCommand::Console { name } => {
            vm::summary(&lv, &name)?;
            console(uri, &name)
        }
        VmCommand::Display { name } => display(&lv, uri, &name),
        VmCommand::Screenshot { name, file } => screenshot(&lv, &name, &file),
    }
}

fn create(lv: &Libvirt, a: CreateArgs) -> Fallible {
    a.vm.require_os()?;
    let spec = a.vm.spec();
    let passphrase = if spec.encryption == Some(Encryption::Prompt) {
        // Check everything that can be checked before asking for a passphrase.
        phyllome_engine::model::input::validate_name(&a.name)?;
        Some(read_passphrase(&format!("New passphrase for {}'s disk: ", a.name), true)?)
    } else {
        None
    };
    let steps = Steps::new(&format!("creating {}", a.name));
    let c = vm::create(lv, &a.name, &spec, passphrase.as_deref(), a.start, &|p| steps.report(p));
    drop(steps);
    let c = c?;
    for w in &c.warnings {
        eprintln!("phyllome: warning: {w}");
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&c)?);
        return Ok(());
    }
    println!(
        "created {}: {}, {} vCPU{}, {} memory, {} GiB disk {}",
        c.name,
        c.os,
        c.vcpus,
        if c.vcpus == 1 { "" } else { "s" },
        human_mib(c.memory_mib),
        c.disk_gib,
        encryption_text(c.encryption)
    );
    if c.started {
        println!(
            "running: `phyllome console {0}` for its serial console, `phyllome display {0}` for its screen",
            c.name
        );
    } else {
        println!("start it with `phyllome start {}`", c.name);
    }
    Ok(())
}

fn list(lv: &Libvirt, json: bool) -> Fallible {
    let rows = vm::list(lv)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    print_rows(None, &rows.iter().collect::<Vec<_>>());
    Ok(())
}

/// `list --all-hosts`: this host's (`local`) and every named host's VMs, each host asked at once
/// through the engine's list, within a bound. A host not reached is a warning (and in JSON a
/// `hosts` entry with `reached: false` and its name in `unreachable`), not a failure: the exit is 0
/// when at least one host answered, and the first host's error's code when none did.
fn list_all_hosts(local_uri: &str, json: bool) -> Fallible {
    use phyllome_engine::remotes::{self, Remotes};
    let all = Remotes::open().all(local_uri)?;
    let results = remotes::on_each(&all, remotes::REACH_WITHIN, vm::list);
    if results.iter().all(|(_, r)| r.is_err()) {
        // None answered: the first host's error is the command's, the others are warnings.
        let mut errors = results.into_iter().filter_map(|(_, r)| r.err());
        let first = errors.next();
        for e in errors {
            eprintln!("phyllome: warning: {e}");
        }
        return first.map_or(Ok(()), |e| Err(e.into()));
    }
    let mut rows: Vec<(&str, &vm::VmRow)> = Vec::new();
    let mut status = Vec::new();
    let mut unreachable = Vec::new();
    let mut errors = Vec::new();
    for (host, r) in &results {
        match r {
            Ok(vms) => {
                rows.extend(vms.iter().map(|v| (host.name.as_str(), v)));
                status.push(serde_json::json!({"name": host.name, "uri": host.uri, "reached": true, "vms": vms.len(), "error": null}));
            }
            Err(e) => {
                unreachable.push(host.name.as_str());
                status.push(serde_json::json!({"name": host.name, "uri": host.uri, "reached": false, "vms": null, "error": e.to_string()}));
                errors.push(e);
            }
        }
    }
    if json {
        #[derive(serde::Serialize)]
        struct Row<'a> {
            host: &'a str,
            #[serde(flatten)]
            vm: &'a vm::VmRow,
        }
        let vms: Vec<_> = rows.iter().map(|(host, vm)| Row { host, vm }).collect();
        let v = serde_json::json!({"vms": vms, "hosts": status, "unreachable": unreachable});
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let (hosts, vms): (Vec<&str>, Vec<&vm::VmRow>) = rows.into_iter().unzip();
        print_rows(Some(&hosts), &vms);
    }
    for e in errors {
        eprintln!("phyllome: warning: {e}; its VMs are not listed");
    }
    Ok(())
}

/// The VM table, with a HOST column first when `hosts` is given (one per row).
fn print_rows(hosts: Option<&[&str]>, rows: &[&vm::VmRow]) {
    let names: Vec<_> = rows.iter().map(|r| printable(&r.name)).collect();
    let states: Vec<String> = rows
        .iter()
        .map(|r| match r.state_reason {
            Some(why) => format!("{}: {why}", r.state),
            None => r.state.to_string(),
        })
        .collect();
    let w = names.iter().map(|n| n.chars().count()).max().unwrap_or(4).max(4);
    let sw = states.iter().map(|s| s.len()).max().unwrap_or(8).max(8);
    let hw = hosts.map(|h| h.iter().map(|n| n.len()).max().unwrap_or(4).max(4));
    let host_cell = |h: &str| hw.map(|hw| format!("{h:hw$}  ")).unwrap_or_default();
    println!(
        "{}{:w$}  {:14}  {:sw$}  {:5}  {:>8}  {:>8}  {:9}  {:9}  AUTOSTART",
        host_cell("HOST"),
        "NAME",
        "OS",
        "STATE",
        "VCPUS",
        "MEMORY",
        "DISK",
        "ENCRYPTED",
        "SNAPSHOTS"
    );
    for (i, ((r, name), state)) in rows.iter().zip(&names).zip(&states).enumerate() {
        println!(
            "{}{:w$}  {:14}  {:sw$}  {:5}  {:>8}  {:>8}  {:9}  {:9}  {}",
            host_cell(hosts.map(|h| h[i]).unwrap_or_default()),
            name,
            r.os.as_deref().unwrap_or("-"),
            state,
            r.vcpus,
            human_mib(r.memory_mib),
            r.disk_gib.map(|g| format!("{g} GiB")).unwrap_or_else(|| "-".into()),
            if r.encrypted {
                "yes"
            } else if r.changed_outside.is_some() {
                "changed"
            } else {
                "no"
            },
            r.snapshots,
            if r.autostart { "on" } else { "off" }
        );
    }
    for (r, name) in rows.iter().zip(&names) {
        if let Some(what) = &r.changed_outside {
            eprintln!("phyllome: warning: {name} was changed outside Phyllome: {}", printable(what));
        }
    }
}

fn info(lv: &Libvirt, name: &str, json: bool) -> Fallible {
    let d = vm::details(lv, name)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&d)?);
        return Ok(());
    }
    println!("name:       {}", printable(&d.row.name));
    println!("uuid:       {}", d.uuid);
    println!("os:         {}", d.row.os.as_deref().unwrap_or("- (not made by phyllome)"));
    match d.row.state_reason {
        Some(why) => println!("state:      {}: {why}", d.row.state),
        None => println!("state:      {}", d.row.state),
    }
    println!("vcpus:      {}", d.row.vcpus);
    println!("memory:     {}", human_mib(d.row.memory_mib));
    let enc = match &d.row.changed_outside {
        // What `list` says too: not all of it is encrypted any more.
        Some(what) => Some(format!("changed outside Phyllome, not all encrypted: {}", printable(what))),
        None => d.encryption.as_deref().and_then(Encryption::parse).map(|e| encryption_text(e).to_string()),
    };
    println!(
        "disk:       {} {}",
        d.row.disk_gib.map(|g| format!("{g} GiB")).unwrap_or("-".into()),
        enc.unwrap_or_default()
    );
    for disk in &d.disks {
        let src = match (&disk.pool, &disk.volume, &disk.file) {
            (Some(p), Some(v), _) => format!("{p}/{v}"),
            (_, _, Some(f)) => f.clone(),
            _ => "-".into(),
        };
        println!("  {:4} {:6} {src}", disk.target, disk.device);
    }
    println!("display:    {}", d.display.as_deref().unwrap_or("- (not running)"));
    println!("snapshots:  {}", d.row.snapshots);
    println!("autostart:  {}", if d.row.autostart { "on (starts when the host boots)" } else { "off" });
    Ok(())
}

/// What virsh prints on hosts without a polkit daemon although root needs none.
const POLKIT_NOISE: &str = "Authorization not available. Check if polkit service is running";

fn console(uri: &str, name: &str) -> Fallible {
    use std::io::{BufRead, Write};
    eprintln!("phyllome: serial console of {name}; leave with Ctrl-]");
    // The terminal goes to virsh as it is; only its error stream passes through us, less the polkit noise.
    let mut child = std::process::Command::new("virsh")
        .args(["-c", uri, "console", name])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run virsh console: {e}"))?;
    let stderr = child.stderr.take().expect("piped");
    let relay = std::thread::spawn(move || {
        let mut out = std::io::stderr();
        for line in std::io::BufReader::new(stderr).split(b'\n').map_while(Result::ok) {
            if !String::from_utf8_lossy(&line).contains(POLKIT_NOISE) {
                let _ = out.write_all(&line).and_then(|_| out.write_all(b"\n"));
            }
        }
    });
    let status = child.wait()?;
    let _ = relay.join();
    if status.success() {
        Ok(())
    } else {
        Err(format!("virsh console {name} ended with {status}").into())
    }
}

fn in_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

fn display(lv: &Libvirt, uri: &str, name: &str) -> Fallible {
    let s = vm::summary(lv, name)?;
    let Some((host, port)) = s.vnc else {
        return Err(format!("{name} is not running (or has no VNC display)").into());
    };
    let addr = format!("vnc://{host}:{port}");
    println!("{addr}");
    let graphical = std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some();
    if graphical && in_path("virt-viewer") {
        std::process::Command::new("virt-viewer").args(["--connect", uri, name]).spawn()?;
        eprintln!("phyllome: opened virt-viewer");
    } else if !lv.is_local() {
        // The address is that host's loopback, not this machine's.
        eprintln!(
            "phyllome: the display listens on the VM's host ({}) only: open it with virt-viewer --connect URI {name}, or tunnel port {port} of that host",
            lv.uri()
        );
    } else if graphical && in_path("remote-viewer") {
        std::process::Command::new("remote-viewer").arg(&addr).spawn()?;
        eprintln!("phyllome: opened remote-viewer");
    } else {
        eprintln!(
            "phyllome: the display listens on this host only; from another machine: ssh -L {port}:{host}:{port} THIS-HOST, then open vnc://127.0.0.1:{port}"
        );
    }
    Ok(())
}

fn screenshot(lv: &Libvirt, name: &str, file: &str) -> Fallible {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    vm::summary(lv, name)?;
    let (data, mime) = lv.screenshot(name)?;
    let png = if data.starts_with(b"\x89PNG") { data } else { phyllome_engine::image::ppm_to_png(&data)? };
    // A screen can show anything the guest shows: private to its owner, like the disk keys.
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(file)?;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(&png)
    };
    write().map_err(|e| format!("cannot write the screenshot to {file}: {e}"))?;
    eprintln!("phyllome: saved {name}'s screen to {file} (from {mime})");
    Ok(())
}

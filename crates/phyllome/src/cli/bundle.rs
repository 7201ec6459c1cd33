//! `phyllome export` / `phyllome import`: a VM as one encrypted file, re-tuned where it lands.

use super::prompt::read_passphrase;
use super::render::{human, reporter, Steps};
use super::Fallible;
use clap::Args;
use phyllome_engine::bundle::{self, ImportOptions};
use phyllome_engine::text::{printable, printable_lines};
use phyllome_libvirt::Libvirt;
use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct ExportArgs {
    /// The VM (stopped).
    pub name: String,
    /// The bundle to write, or - for standard output (default: NAME.phyllome here).
    #[arg(short = 'o', long = "output", value_name = "FILE|-")]
    pub output: Option<String>,
    /// Read the export passphrase as one line on standard input (for scripts) instead of asking.
    #[arg(long)]
    pub passphrase_stdin: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct ImportArgs {
    /// The bundle, or - for standard input.
    #[arg(value_name = "FILE|-")]
    pub bundle: String,
    /// The VM's name here (default: the one it had).
    #[arg(long = "name", value_name = "NEW")]
    pub name: Option<String>,
    /// Every choice this host makes for the VM, and why (not only what changed).
    #[arg(long)]
    pub explain: bool,
    /// Read and check the whole bundle, show what this host would make of it, make nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Read the passphrase as one line on standard input (the bundle must then be a file).
    #[arg(long)]
    pub passphrase_stdin: bool,
    /// Share the host folders the bundle names even where `share add` refuses them without --force.
    #[arg(long)]
    pub force: bool,
    /// Plan against a recorded host (`phyllome host facts --record DIR`) instead of this one; with --dry-run.
    #[arg(long, value_name = "DIR", requires = "dry_run", hide = true)]
    pub host_facts: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

fn passphrase(from_stdin: bool, confirm: bool) -> Result<Vec<u8>, phyllome_engine::errors::Failure> {
    let prompt = if confirm { "Export passphrase (it opens the bundle): " } else { "Passphrase of the bundle: " };
    if from_stdin || !std::io::stdin().is_terminal() {
        let mut line = String::new();
        std::io::stdin().lock().read_line_bounded(&mut line)?;
        return Ok(line.trim_end_matches(['\n', '\r']).as_bytes().to_vec());
    }
    Ok(read_passphrase(prompt, confirm)?)
}

/// One line from standard input, at most 4 KiB (a passphrase, never a whole stream).
trait ReadLineBounded {
    fn read_line_bounded(&mut self, line: &mut String) -> std::io::Result<()>;
}

impl<R: std::io::BufRead> ReadLineBounded for R {
    fn read_line_bounded(&mut self, line: &mut String) -> std::io::Result<()> {
        let mut buf = vec![];
        self.take(4096).read_until(b'\n', &mut buf)?;
        *line = String::from_utf8(buf).map_err(|_| std::io::Error::other("the passphrase is not UTF-8 text"))?;
        Ok(())
    }
}

/// A new file written under a temporary name and renamed into place only once complete.
struct Partial {
    tmp: PathBuf,
    to: PathBuf,
    file: Option<std::fs::File>,
}

impl Partial {
    fn create(to: &Path) -> std::io::Result<Partial> {
        use std::os::unix::fs::OpenOptionsExt;
        if to.exists() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists: give another -o, or remove it first", to.display()),
            ));
        }
        let name = to.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = to.with_file_name(format!(".{name}.partial"));
        let file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        Ok(Partial { tmp, to: to.to_path_buf(), file: Some(file) })
    }

    fn commit(mut self) -> std::io::Result<()> {
        let f = self.file.take().expect("open");
        f.sync_all()?;
        drop(f);
        if self.to.exists() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} appeared meanwhile", self.to.display()),
            ));
        }
        std::fs::rename(&self.tmp, &self.to)
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if self.file.is_some() || self.tmp.exists() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

pub fn export(uri: &str, a: ExportArgs) -> Fallible {
    let lv = Libvirt::connect(uri)?;
    // What export would refuse is said before a passphrase is asked or a file made.
    bundle::check_exportable(&lv, &a.name)?;
    let pass = passphrase(a.passphrase_stdin, true)?;
    let to_stdout = a.output.as_deref() == Some("-");
    if to_stdout && std::io::stdout().is_terminal() {
        return Err("refusing to write a bundle to a terminal: give -o FILE, or redirect standard output".into());
    }
    let steps = Steps::new(&format!("export {}", a.name));
    let report = reporter(&steps);
    let (exported, path) = if to_stdout {
        let mut out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
        let e = bundle::export(&lv, &a.name, &pass, &mut out, &report)?;
        out.flush()?;
        (e, None)
    } else {
        let path = PathBuf::from(a.output.clone().unwrap_or_else(|| format!("{}.phyllome", a.name)));
        let partial = Partial::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, partial.file.as_ref().expect("open"));
        let e = bundle::export(&lv, &a.name, &pass, &mut out, &report)?;
        out.flush()?;
        drop(out);
        partial.commit().map_err(|e| format!("{}: {e}", path.display()))?;
        (e, Some(path))
    };
    drop(report);
    drop(steps);
    if a.json {
        let v = serde_json::json!({ "export": exported, "file": path.as_ref().map(|p| p.display().to_string()) });
        // With -o -, standard output is the bundle: the report goes to standard error.
        if to_stdout {
            eprintln!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        return Ok(());
    }
    for n in &exported.notes {
        eprintln!("phyllome: {}", printable(n));
    }
    let size = human(exported.bytes as f64);
    match path {
        Some(p) => {
            println!("exported {} to {} ({size}; disk, UEFI variables and TPM state encrypted)", a.name, p.display())
        }
        None => eprintln!("phyllome: exported {} ({size})", a.name),
    }
    Ok(())
}

pub fn import(uri: &str, a: ImportArgs) -> Fallible {
    let lv = Libvirt::connect(uri)?;
    let from_stdin = a.bundle == "-";
    if from_stdin && a.passphrase_stdin {
        return Err("--passphrase-stdin needs the bundle as a file: standard input is the bundle".into());
    }
    let host = match &a.host_facts {
        Some(dir) => Some(phyllome_host::fixture::load(dir)?),
        None => None,
    };
    let (mut input, total): (Box<dyn Read>, u64) = if from_stdin {
        (Box::new(std::io::stdin().lock()), 0)
    } else {
        let f = std::fs::File::open(&a.bundle).map_err(|e| format!("{}: {e}", a.bundle))?;
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        (Box::new(std::io::BufReader::with_capacity(1 << 20, f)), len)
    };
    let pass = if from_stdin {
        // Standard input is the bundle: the passphrase comes from the terminal itself (rpassword opens /dev/tty).
        rpassword::prompt_password("Passphrase of the bundle: ")
            .map_err(|e| {
                format!("the bundle is on standard input, so the passphrase must be typed on a terminal: {e}")
            })?
            .into_bytes()
    } else {
        passphrase(a.passphrase_stdin, false)?
    };
    let steps = Steps::new(&format!("import {}", a.bundle));
    let report = reporter(&steps);
    let opts = ImportOptions { name: a.name.clone(), passphrase: &pass, dry_run: a.dry_run, host, force: a.force };
    let imported = bundle::import(&lv, &mut input, total, &opts, &report)?;
    drop(report);
    drop(steps);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&imported)?);
        return Ok(());
    }
    print!("{}", phyllome_engine::retune::render_changes(&imported.source, &imported.here, &imported.changes));
    print!("{}", bundle::render_reach(&imported));
    if a.explain {
        println!("every choice on this host:");
        for c in &imported.choices {
            println!("  {}: {}\n      why: {}", c.item, printable(&c.choice), printable(&c.why));
        }
    }
    for w in &imported.warnings {
        eprintln!("phyllome: warning: {}", printable(w));
    }
    if imported.dry_run {
        if let Some(x) = &imported.xml {
            if !a.explain {
                println!("domain XML for this host (--explain says why for each device):");
            }
            // Built from the bundle's manifest (a kernel command line...): escaped, line by line.
            print!("{}", printable_lines(x));
        }
        println!("dry run: every part matches its checksum; nothing was made");
    } else {
        println!(
            "imported {} ({}): start it with `phyllome start {}`",
            printable(&imported.name),
            printable(&imported.os),
            printable(&imported.name)
        );
    }
    Ok(())
}

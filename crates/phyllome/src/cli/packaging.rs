//! Hidden commands for packaging: shell completions and the man page, both
//! generated from the command-line definition so they never drift from it.

use super::Fallible;
use std::io::Write;

/// `phyllome completions SHELL`: the completion script on standard output.
pub fn completions(mut cmd: clap::Command, shell: clap_complete::Shell) -> Fallible {
    let mut out = std::io::stdout().lock();
    clap_complete::generate(shell, &mut cmd, "phyllome", &mut out);
    out.flush()?;
    Ok(())
}

/// `phyllome manpage [--dir DIR]`: phyllome(1) in roff on standard output,
/// or every page (phyllome.1, phyllome-host.1, phyllome-host-setup.1, ...) into DIR.
pub fn manpage(cmd: clap::Command, dir: Option<std::path::PathBuf>) -> Fallible {
    match dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir)?;
            clap_mangen::generate_to(cmd, &dir)?;
        }
        None => {
            let mut out = std::io::stdout().lock();
            clap_mangen::Man::new(cmd).render(&mut out)?;
            out.flush()?;
        }
    }
    Ok(())
}

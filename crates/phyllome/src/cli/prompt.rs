//! What the CLI asks the user: passphrases, never from arguments or the environment.

use phyllome_engine::vm::{self, VmError};
use std::io::{BufRead, IsTerminal};

/// Reads a passphrase without echo from the terminal, or one line from
/// standard input when it is not a terminal (scripts, tests). Never from
/// arguments or the environment.
pub fn read_passphrase(prompt: &str, confirm: bool) -> vm::Result<Vec<u8>> {
    let io = |e: std::io::Error| VmError::Disk(format!("cannot read the passphrase: {e}"));
    if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password(prompt).map_err(io)?;
        if confirm {
            let again = rpassword::prompt_password("Repeat the passphrase: ").map_err(io)?;
            if again != first {
                return Err(VmError::Disk("the two passphrases differ".into()));
            }
        }
        return Ok(first.into_bytes());
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).map_err(io)?;
    Ok(line.trim_end_matches(['\n', '\r']).as_bytes().to_vec())
}

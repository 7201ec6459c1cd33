//! What kind of failure an error is, for every front end: the CLI's exit code
//! and `--json` `kind`, and the API's status (the README's table).
//!
//! Each error type says its own kind ([`Classify`], in the file that defines it);
//! front ends hold a [`Failure`]: any classified error, boxed with its kind, so no
//! table of the engine's error types is needed anywhere. This file knows nothing of
//! the engine's modules: only the errors of the crates below it that the engine passes on.

use phyllome_model::build::BuildError;
use serde::Serialize;
/// A class of failure. The exit code of each is part of the CLI's interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// The operation was tried and failed (libvirt refused, a file could not be written...).
    Failed,
    /// The command line could not be parsed (clap's own exit code).
    Usage,
    /// Input the request names is wrong: a name, a size, a file that is not what it claims to be.
    InvalidInput,
    /// What the request names does not exist: a VM, a network, a pool, a file.
    NotFound,
    /// The state forbids it now: the name is taken, the VM is running, another create holds the name.
    Conflict,
    /// This host cannot do it: firmware, TPM, or its libvirt/QEMU version.
    Unsupported,
    /// libvirtd cannot be reached.
    Unavailable,
    /// Not enough space for it: a file system or a storage pool is (nearly) full.
    NoSpace,
    /// Interrupted (Ctrl-C, SIGTERM); what the command made was removed.
    Interrupted,
}

impl ErrorKind {
    /// Its name in `--json` errors (the serde name).
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Failed => "failed",
            ErrorKind::Usage => "usage",
            ErrorKind::InvalidInput => "invalid-input",
            ErrorKind::NotFound => "not-found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::NoSpace => "no-space",
            ErrorKind::Interrupted => "interrupted",
        }
    }

    pub fn exit_code(self) -> u8 {
        match self {
            ErrorKind::Failed => 1,
            ErrorKind::Usage => 2,
            ErrorKind::InvalidInput => 3,
            ErrorKind::NotFound => 4,
            ErrorKind::Conflict => 5,
            ErrorKind::Unsupported => 6,
            ErrorKind::Unavailable => 7,
            ErrorKind::NoSpace => 8,
            ErrorKind::Interrupted => 130,
        }
    }
}

/// An error that knows its kind.
pub trait Classify: std::error::Error {
    fn kind(&self) -> ErrorKind;
}

/// Any classified error with its kind: what the front ends hold and render
/// (`From` every [`Classify`] error, so `?` keeps the kind).
pub struct Failure {
    kind: ErrorKind,
    error: Box<dyn std::error::Error>,
}

impl Failure {
    /// An error of a kind the caller decides (a front end's own refusals).
    pub fn new(kind: ErrorKind, error: impl Into<Box<dyn std::error::Error>>) -> Failure {
        Failure { kind, error: error.into() }
    }

    /// An error of a crate that knows no kinds: the operation failed.
    pub fn failed(error: impl Into<Box<dyn std::error::Error>>) -> Failure {
        Failure::new(ErrorKind::Failed, error)
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The error itself.
    pub fn error(&self) -> &(dyn std::error::Error + 'static) {
        self.error.as_ref()
    }
}

impl<E: Classify + 'static> From<E> for Failure {
    fn from(e: E) -> Failure {
        Failure { kind: e.kind(), error: Box::new(e) }
    }
}

/// Words, and errors of crates that know no kinds (JSON, a terminal...): the operation failed.
impl From<String> for Failure {
    fn from(e: String) -> Failure {
        Failure::new(ErrorKind::Failed, e)
    }
}

impl From<&str> for Failure {
    fn from(e: &str) -> Failure {
        Failure::new(ErrorKind::Failed, e)
    }
}

impl From<Box<dyn std::error::Error>> for Failure {
    fn from(e: Box<dyn std::error::Error>) -> Failure {
        Failure::new(ErrorKind::Failed, e)
    }
}

impl From<serde_json::Error> for Failure {
    fn from(e: serde_json::Error) -> Failure {
        Failure::new(ErrorKind::Failed, e)
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl std::fmt::Debug for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} ({})", self.error, self.kind.name())
    }
}

impl Classify for phyllome_libvirt::Error {
    fn kind(&self) -> ErrorKind {
        if self.is_unavailable() {
            ErrorKind::Unavailable
        } else if self.is_invalid_state() {
            ErrorKind::Conflict
        } else if self.is_no_domain() {
            ErrorKind::NotFound
        } else {
            ErrorKind::Failed
        }
    }
}

impl Classify for BuildError {
    fn kind(&self) -> ErrorKind {
        match self {
            BuildError::NoUefi { .. }
            | BuildError::NoSecureBootFirmware { .. }
            | BuildError::NoTpm { .. }
            | BuildError::Unsupported(_) => ErrorKind::Unsupported,
            _ => ErrorKind::InvalidInput,
        }
    }
}

impl Classify for phyllome_model::input::InputError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidInput
    }
}

impl Classify for phyllome_model::Unsupported {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Unsupported
    }
}

impl Classify for phyllome_model::hostdev::HostdevError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Failed
    }
}

impl Classify for phyllome_host::fixture::FixtureError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Failed
    }
}

impl Classify for std::io::Error {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_class_has_its_own_exit_code() {
        let all = [
            ErrorKind::Failed,
            ErrorKind::Usage,
            ErrorKind::InvalidInput,
            ErrorKind::NotFound,
            ErrorKind::Conflict,
            ErrorKind::Unsupported,
            ErrorKind::Unavailable,
            ErrorKind::NoSpace,
            ErrorKind::Interrupted,
        ];
        let mut codes: Vec<u8> = all.iter().map(|k| k.exit_code()).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), all.len());
    }

    #[test]
    fn the_errors_passed_on_fall_into_their_class() {
        let kind = |f: Failure| f.kind();
        assert_eq!(kind(BuildError::ZeroCpus.into()), ErrorKind::InvalidInput);
        let tpm = BuildError::NoTpm { os: "Windows 11", why: "swtpm is not installed" };
        assert_eq!(kind(tpm.into()), ErrorKind::Unsupported);
        assert_eq!(kind(phyllome_model::input::InputError::EmptyName.into()), ErrorKind::InvalidInput);
        assert_eq!(kind(std::io::Error::other("disk full").into()), ErrorKind::Failed);
        assert_eq!(kind("words".into()), ErrorKind::Failed);
        let f = Failure::new(ErrorKind::Usage, "--host and --connect");
        assert_eq!((f.kind(), f.to_string()), (ErrorKind::Usage, "--host and --connect".to_string()));
    }
}

//! What kind of failure an error is, for every front end: the CLI's exit code
//! and `--json` `kind`, and (later) the API's status. One table, documented in
//! the README.

use crate::host_facts::HostError;
use crate::op::journal::JournalError;
use crate::media::files::FileError;
use crate::vm::VmError;
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

fn libvirt(e: &phyllome_libvirt::Error) -> ErrorKind {
    if e.is_unavailable() {
        ErrorKind::Unavailable
    } else if e.is_invalid_state() {
        ErrorKind::Conflict
    } else if e.is_no_domain() {
        ErrorKind::NotFound
    } else {
        ErrorKind::Failed
    }
}

fn build(e: &BuildError) -> ErrorKind {
    match e {
        BuildError::NoUefi { .. }
        | BuildError::NoSecureBootFirmware { .. }
        | BuildError::NoTpm { .. }
        | BuildError::Unsupported(_) => ErrorKind::Unsupported,
        _ => ErrorKind::InvalidInput,
    }
}

fn file(e: &FileError) -> ErrorKind {
    match e {
        FileError::Missing { .. } => ErrorKind::NotFound,
        FileError::Unreadable { .. } | FileError::UnreadableDevice { .. } => ErrorKind::Failed,
        _ => ErrorKind::InvalidInput,
    }
}

fn vm(e: &VmError) -> ErrorKind {
    match e {
        VmError::Build(b) => build(b),
        VmError::File(f) => file(f),
        VmError::Libvirt(l) | VmError::Host(HostError::Libvirt(l)) => libvirt(l),
        VmError::Journal(JournalError::Busy(_)) => ErrorKind::Conflict,
        VmError::Lock(l) => l.kind(),
        VmError::NameBusy(_)
        | VmError::VolumeExists { .. }
        | VmError::SecretExists(_)
        | VmError::Running(_)
        | VmError::NotRunning(_)
        | VmError::DiskShared { .. }
        | VmError::NetworkInactive(_)
        | VmError::IoPaused { .. }
        | VmError::VolumeInUse { .. }
        | VmError::MoveUnfinished { .. }
        | VmError::ChangedOutside { .. } => ErrorKind::Conflict,
        VmError::NeedPassphrase(_) => ErrorKind::InvalidInput,
        VmError::NoSuchVm(_) | VmError::NoPool(_) | VmError::NoNetwork(_) | VmError::NoVolume(_) => ErrorKind::NotFound,
        VmError::BadNetwork(_) | VmError::EmptyPassphrase | VmError::WrongPassphrase(_) => ErrorKind::InvalidInput,
        VmError::BadShare(_)
        | VmError::NoOs(_)
        | VmError::Iso { .. }
        | VmError::UnknownMedia { .. }
        | VmError::IsoFirmware { .. } => ErrorKind::InvalidInput,
        VmError::Interrupted => ErrorKind::Interrupted,
        VmError::NotHere { .. } => ErrorKind::Unsupported,
        _ => ErrorKind::Failed,
    }
}

fn manifest(e: &crate::manifest::ManifestError) -> ErrorKind {
    use crate::manifest::ManifestError as M;
    match e {
        M::Missing(_) => ErrorKind::NotFound,
        M::Unreadable { .. } => ErrorKind::Failed,
        M::Syntax { .. } | M::Version { .. } | M::Field { .. } => ErrorKind::InvalidInput,
    }
}

/// The kind of `e`, looking through the engine's error types.
pub fn classify(e: &(dyn std::error::Error + 'static)) -> ErrorKind {
    if let Some(e) = e.downcast_ref::<VmError>() {
        vm(e)
    } else if let Some(e) = e.downcast_ref::<crate::media::iso_dir::IsoDirError>() {
        use crate::media::iso_dir::IsoDirError as I;
        match e {
            I::BadName(_) | I::NotIso(..) => ErrorKind::InvalidInput,
            I::NoSpace { .. } | I::Full { .. } => ErrorKind::NoSpace,
            I::Exists(_) | I::InUse { .. } => ErrorKind::Conflict,
            I::Missing(_) | I::NoFile(_) => ErrorKind::NotFound,
            I::Interrupted => ErrorKind::Interrupted,
            I::Libvirt(l) => libvirt(l),
            I::Io(..) => ErrorKind::Failed,
        }
    } else if let Some(e) = e.downcast_ref::<crate::manifest::ManifestError>() {
        manifest(e)
    } else if let Some(e) = e.downcast_ref::<crate::apply::ApplyError>() {
        use crate::apply::ApplyError as A;
        match e {
            A::Manifest(m) => manifest(m),
            A::InFile { source, .. } => vm(source),
            A::Vm(source) => vm(source),
        }
    } else if let Some(e) = e.downcast_ref::<crate::snapshot::SnapshotError>() {
        e.kind()
    } else if let Some(e) = e.downcast_ref::<crate::bundle::BundleError>() {
        e.kind()
    } else if let Some(e) = e.downcast_ref::<crate::migrate::MigrateError>() {
        e.kind()
    } else if let Some(e) = e.downcast_ref::<crate::remotes::HostsError>() {
        e.kind()
    } else if let Some(e) = e.downcast_ref::<BuildError>() {
        build(e)
    } else if let Some(e) = e.downcast_ref::<FileError>() {
        file(e)
    } else if e.downcast_ref::<phyllome_model::input::InputError>().is_some() {
        ErrorKind::InvalidInput
    } else if let Some(e) = e.downcast_ref::<phyllome_libvirt::Error>() {
        libvirt(e)
    } else if let Some(HostError::Libvirt(e)) = e.downcast_ref::<HostError>() {
        libvirt(e)
    } else if e.downcast_ref::<phyllome_model::Unsupported>().is_some() {
        ErrorKind::Unsupported
    } else {
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

    fn boxed_apply(e: crate::apply::ApplyError) -> Box<dyn std::error::Error> {
        Box::new(e)
    }

    #[test]
    fn engine_errors_fall_into_their_class() {
        let boxed = |e: VmError| -> Box<dyn std::error::Error> { Box::new(e) };
        assert_eq!(classify(boxed(VmError::NameBusy("x".into())).as_ref()), ErrorKind::Conflict);
        assert_eq!(classify(boxed(VmError::NoSuchVm("x".into())).as_ref()), ErrorKind::NotFound);
        assert_eq!(classify(boxed(VmError::Interrupted).as_ref()), ErrorKind::Interrupted);
        let missing = FileError::Missing { what: "ISO", path: "/x".into() };
        assert_eq!(classify(boxed(VmError::File(missing)).as_ref()), ErrorKind::NotFound);
        let zero = BuildError::ZeroCpus;
        assert_eq!(classify(boxed(VmError::Build(zero)).as_ref()), ErrorKind::InvalidInput);
        let tpm = BuildError::NoTpm { os: "Windows 11", why: "swtpm is not installed" };
        assert_eq!(classify(boxed(VmError::Build(tpm)).as_ref()), ErrorKind::Unsupported);
        let name: Box<dyn std::error::Error> = Box::new(phyllome_model::input::InputError::EmptyName);
        assert_eq!(classify(name.as_ref()), ErrorKind::InvalidInput);
        use crate::apply::ApplyError;
        use crate::manifest::ManifestError;
        let missing: Box<dyn std::error::Error> = Box::new(ManifestError::Missing("/vms".into()));
        assert_eq!(classify(missing.as_ref()), ErrorKind::NotFound);
        let field = ManifestError::Field { file: "a.toml".into(), field: "disk_size", why: "smaller".into() };
        let shrink: Box<dyn std::error::Error> = Box::new(ApplyError::from(field));
        assert_eq!(classify(shrink.as_ref()), ErrorKind::InvalidInput);
        let busy = ApplyError::InFile { file: "a.toml".into(), source: Box::new(VmError::Running("a".into())) };
        assert_eq!(classify(boxed_apply(busy).as_ref()), ErrorKind::Conflict);
        let io: Box<dyn std::error::Error> = Box::new(std::io::Error::other("disk full"));
        assert_eq!(classify(io.as_ref()), ErrorKind::Failed);
    }
}

//! Validation of user input: VM names, sizes and paths.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum InputError {
    #[error("VM name is empty")]
    EmptyName,
    #[error("VM name is {0} characters long; at most 64 are allowed")]
    NameTooLong(usize),
    #[error("VM name {0:?} contains {1:?}: use letters, digits, '.', '_' and '-' only")]
    NameBadChar(String, char),
    #[error("VM name {0:?} must start with a letter or a digit")]
    NameBadStart(String),
    #[error("size {0:?} is not a size: use a number and a unit, e.g. 4G, 512M, 1.5GiB; {UNITS}")]
    SizeSyntax(String),
    #[error("size {0:?} has no unit: say 512M for MiB or 4G for GiB; {UNITS}")]
    SizeNoUnit(String),
    #[error("size {0:?} is zero")]
    SizeZero(String),
    #[error("size {0:?} is too large")]
    SizeOverflow(String),
    #[error("path {0:?} contains a control character")]
    PathControlChar(String),
    #[error("path {0:?} must be absolute")]
    PathNotAbsolute(String),
}

/// Longest VM name we accept (libvirt accepts more, but NVRAM and TPM state
/// file names, volume names and UI columns all derive from it).
pub const MAX_NAME_LEN: usize = 64;

/// Checks a VM name: 1-64 characters from `[A-Za-z0-9._-]`, starting with a
/// letter or digit. Refusing '/', XML metacharacters, spaces and control
/// characters keeps the name safe as a file name, a volume name and in XML.
pub fn validate_name(name: &str) -> Result<(), InputError> {
    let len = name.chars().count();
    if len == 0 {
        return Err(InputError::EmptyName);
    }
    if len > MAX_NAME_LEN {
        return Err(InputError::NameTooLong(len));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(InputError::NameBadChar(name.to_string(), c));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(InputError::NameBadStart(name.to_string()));
    }
    Ok(())
}

/// Checks a host path given by the user. Any printable character is allowed
/// (the XML writer escapes it); control characters cannot be represented in
/// XML and relative paths would be resolved by libvirtd, not by the user.
pub fn validate_path(path: &str) -> Result<(), InputError> {
    if path.chars().any(|c| c.is_control()) {
        return Err(InputError::PathControlChar(path.to_string()));
    }
    if !path.starts_with('/') {
        return Err(InputError::PathNotAbsolute(path.to_string()));
    }
    Ok(())
}

/// The units a size may carry, for messages.
pub const UNITS: &str =
    "units are K, M, G, T (also KiB, MiB, GiB, TiB: powers of 1024) and KB, MB, GB, TB (powers of 1000)";

/// Parses a size like `4G`, `4GiB`, `512M`, `1.5G`, `2T`, `4GB` into bytes. A
/// unit is required (a bare `512` meant MiB for memory and GiB for disks, which
/// nobody can guess). `K`/`M`/`G`/`T` and `KiB`..`TiB` are powers of 1024, as QEMU
/// and libvirt read them; `KB`..`TB` are powers of 1000, as disk vendors write them.
pub fn parse_size(text: &str) -> Result<u64, InputError> {
    let t = text.trim();
    let err = || InputError::SizeSyntax(text.to_string());
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() || num.matches('.').count() > 1 || num.starts_with('.') || num.ends_with('.') {
        return Err(err());
    }
    let mult: u128 = match unit.trim().to_ascii_lowercase().as_str() {
        "" => return Err(InputError::SizeNoUnit(text.to_string())),
        "b" => 1,
        "k" | "kib" | "ki" => 1 << 10,
        "m" | "mib" | "mi" => 1 << 20,
        "g" | "gib" | "gi" => 1 << 30,
        "t" | "tib" | "ti" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return Err(err()),
    };
    let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
    if int_part.len() > 20 {
        return Err(InputError::SizeOverflow(text.to_string()));
    }
    let int: u128 = int_part.parse().map_err(|_| InputError::SizeOverflow(text.to_string()))?;
    let mut bytes = int.checked_mul(mult).ok_or_else(|| InputError::SizeOverflow(text.to_string()))?;
    if !frac_part.is_empty() {
        if frac_part.len() > 6 {
            return Err(err());
        }
        let frac: u128 = frac_part.parse().map_err(|_| err())?;
        let scale = 10u128.pow(frac_part.len() as u32);
        // A fraction of a byte is no size.
        if !(frac * mult).is_multiple_of(scale) {
            return Err(err());
        }
        bytes += frac * mult / scale;
    }
    if bytes > u64::MAX as u128 {
        return Err(InputError::SizeOverflow(text.to_string()));
    }
    if bytes == 0 {
        return Err(InputError::SizeZero(text.to_string()));
    }
    Ok(bytes as u64)
}

/// Formats MiB for people: `4 GiB`, `1.5 GiB`, `512 MiB`.
pub fn human_mib(mib: u64) -> String {
    if mib >= 1024 && mib.is_multiple_of(1024) {
        format!("{} GiB", mib / 1024)
    } else if mib >= 1024 {
        format!("{:.1} GiB", mib as f64 / 1024.0)
    } else {
        format!("{mib} MiB")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_names() {
        for n in ["win11", "debian-12", "a", "Work_VM.2", &"x".repeat(64)] {
            assert_eq!(validate_name(n), Ok(()), "{n}");
        }
    }

    #[test]
    fn rejects_bad_names() {
        assert_eq!(validate_name(""), Err(InputError::EmptyName));
        assert_eq!(validate_name(&"x".repeat(200)), Err(InputError::NameTooLong(200)));
        assert!(matches!(validate_name("a/b"), Err(InputError::NameBadChar(_, '/'))));
        assert!(matches!(validate_name("<vm>"), Err(InputError::NameBadChar(_, '<'))));
        assert!(matches!(validate_name("a'b"), Err(InputError::NameBadChar(_, '\''))));
        assert!(matches!(validate_name("a&b"), Err(InputError::NameBadChar(_, '&'))));
        assert!(matches!(validate_name("a b"), Err(InputError::NameBadChar(_, ' '))));
        assert!(matches!(validate_name("é"), Err(InputError::NameBadChar(_, 'é'))));
        assert!(matches!(validate_name("-x"), Err(InputError::NameBadStart(_))));
        assert!(matches!(validate_name(".x"), Err(InputError::NameBadStart(_))));
    }

    #[test]
    fn parses_sizes() {
        assert_eq!(parse_size("4G"), Ok(4 << 30));
        assert_eq!(parse_size("4GiB"), Ok(4 << 30));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        // Decimal units are decimal.
        assert_eq!(parse_size("4GB"), Ok(4_000_000_000));
        assert_eq!(parse_size("4 gb"), Ok(4_000_000_000));
        assert_eq!(parse_size("500MB"), Ok(500_000_000));
    }

    #[test]
    fn rejects_bad_sizes() {
        for s in ["", "G", "-1G", "4X", "1..5G", ".5G", "4G4", "abc", "1e9", "1.3B"] {
            assert!(matches!(parse_size(s), Err(InputError::SizeSyntax(_))), "{s}");
        }
        for s in ["512", "64", "0"] {
            let e = parse_size(s).unwrap_err();
            assert!(matches!(e, InputError::SizeNoUnit(_)), "{s}");
            assert!(e.to_string().contains("powers of 1024") && e.to_string().contains("512M"), "{e}");
        }
        assert!(matches!(parse_size("0G"), Err(InputError::SizeZero(_))));
        assert!(matches!(parse_size("99999999999999999999999T"), Err(InputError::SizeOverflow(_))));
        assert!(matches!(parse_size("17179869184T"), Err(InputError::SizeOverflow(_))));
    }

    #[test]
    fn paths_must_be_absolute_and_printable() {
        assert_eq!(validate_path("/isos/a b&'<>.iso"), Ok(()));
        assert!(matches!(validate_path("rel.iso"), Err(InputError::PathNotAbsolute(_))));
        assert!(matches!(validate_path("/a\nb"), Err(InputError::PathControlChar(_))));
    }

    #[test]
    fn formats_mib() {
        assert_eq!(human_mib(4096), "4 GiB");
        assert_eq!(human_mib(1536), "1.5 GiB");
        assert_eq!(human_mib(512), "512 MiB");
    }
}

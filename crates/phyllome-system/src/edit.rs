//! Pure text edits: kernel command lines, `/etc/default/grub`, Boot Loader
//! Specification entries, libvirt's `qemu.conf` and modprobe options.
//!
//! Every edit adds or sets only what Phyllome owns and leaves every other
//! byte of the file as it was, so the user's own settings survive.

/// Marks the block Phyllome appends to a configuration file it shares.
pub const BEGIN_MARK: &str = "# BEGIN phyllome host setup: keys Phyllome manages (it sets only these)";
pub const END_MARK: &str = "# END phyllome host setup";

/// Splits a kernel command line into parameters (double quotes group, as the kernel does).
pub fn cmdline_tokens(cmdline: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn param_key(token: &str) -> &str {
    token.split_once('=').map_or(token, |(k, _)| k)
}

/// Whether a wanted parameter is on a command line already.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamState {
    Present,
    Missing,
    /// The same key with another value: the user's choice, left alone.
    Conflict(String),
}

/// The state of `wanted` (`key=value` or a bare flag) among `tokens`. The
/// kernel keeps the last occurrence of a key, so that one decides.
pub fn param_state(tokens: &[String], wanted: &str) -> ParamState {
    let key = param_key(wanted);
    match tokens.iter().rev().find(|t| param_key(t) == key) {
        None => ParamState::Missing,
        Some(t) if t == wanted => ParamState::Present,
        Some(t) => ParamState::Conflict(t.clone()),
    }
}

/// `cmdline` with the missing parameters of `wanted` appended; conflicting
/// ones are not added (see [`param_state`]).
pub fn add_params(cmdline: &str, wanted: &[String]) -> String {
    let tokens = cmdline_tokens(cmdline);
    let mut out = cmdline.trim_end().to_string();
    for w in wanted {
        if param_state(&tokens, w) == ParamState::Missing {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(w);
        }
    }
    out
}

/// An active (uncommented) shell assignment `NAME=value` in a file such as `/etc/default/grub`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellAssignment {
    pub line: usize,
    /// The value without its quotes.
    pub value: String,
    quote: Option<char>,
    /// Text before the value (indentation, `export `, `NAME=`).
    head: String,
    /// Text after the closing quote (a comment, usually nothing).
    tail: String,
}

/// The last active assignment of `name` (the one the shell keeps), if any.
/// Values spanning lines are not understood and yield an error.
pub fn shell_assignment(text: &str, name: &str) -> Result<Option<ShellAssignment>, String> {
    let mut found = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let body = trimmed.strip_prefix("export ").map(str::trim_start).unwrap_or(trimmed);
        let Some(rest) = body.strip_prefix(name).and_then(|r| r.strip_prefix('=')) else {
            continue;
        };
        let head = line[..line.len() - rest.len()].to_string();
        let (quote, value, tail) = match rest.chars().next() {
            Some(q @ ('"' | '\'')) => match rest[1..].find(q) {
                Some(end) => (Some(q), rest[1..1 + end].to_string(), rest[2 + end..].to_string()),
                None => return Err(format!("line {}: {name} spans several lines; edit it by hand", i + 1)),
            },
            _ => {
                let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
                (None, rest[..end].to_string(), rest[end..].to_string())
            }
        };
        found = Some(ShellAssignment { line: i, value, quote, head, tail });
    }
    Ok(found)
}

fn replace_line(text: &str, index: usize, new_line: &str) -> String {
    let mut out = String::with_capacity(text.len() + new_line.len());
    for (i, line) in text.split_inclusive('\n').enumerate() {
        if i == index {
            out.push_str(new_line);
            if line.ends_with('\n') {
                out.push('\n');
            }
        } else {
            out.push_str(line);
        }
    }
    out
}

fn ensure_trailing_newline(mut s: String) -> String {
    if !s.is_empty() && !s.ends_with('\n') {
        s.push('\n');
    }
    s
}

/// `/etc/default/grub` with `params` appended to `GRUB_CMDLINE_LINUX` (added
/// after the file when it has no such line). Other lines are kept byte for byte.
pub fn grub_defaults_add(text: &str, params: &[String], why: &str) -> Result<String, String> {
    let name = "GRUB_CMDLINE_LINUX";
    match shell_assignment(text, name)? {
        Some(a) => {
            let value = add_params(&a.value, params);
            let q = match a.quote {
                Some('\'') => '\'',
                _ => '"',
            };
            Ok(replace_line(text, a.line, &format!("{}{q}{value}{q}{}", a.head, a.tail)))
        }
        None => {
            let mut out = ensure_trailing_newline(text.to_string());
            out.push_str(&format!("# phyllome host setup: {why}\n{name}=\"{}\"\n", params.join(" ")));
            Ok(out)
        }
    }
}

/// The parameters a GRUB defaults file puts on every normal boot entry:
/// `GRUB_CMDLINE_LINUX` then `GRUB_CMDLINE_LINUX_DEFAULT`.
pub fn grub_defaults_tokens(text: &str) -> Result<Vec<String>, String> {
    let mut tokens = Vec::new();
    for name in ["GRUB_CMDLINE_LINUX", "GRUB_CMDLINE_LINUX_DEFAULT"] {
        if let Some(a) = shell_assignment(text, name)? {
            tokens.extend(cmdline_tokens(&a.value));
        }
    }
    Ok(tokens)
}

/// The `options` of a Boot Loader Specification entry (`boot/loader/entries/*.conf`).
pub fn bls_options(entry: &str) -> Option<String> {
    entry.lines().find_map(|l| {
        let rest = l.strip_prefix("options")?;
        (rest.is_empty() || rest.starts_with([' ', '\t'])).then(|| rest.trim().to_string())
    })
}

/// A BLS entry with `params` added to its `options` line (as `grubby --args` does).
pub fn bls_add(entry: &str, params: &[String]) -> Option<String> {
    let index =
        entry.lines().position(|l| l.starts_with("options ") || l.starts_with("options\t") || l == "options")?;
    let options = bls_options(entry)?;
    Some(replace_line(entry, index, &format!("options {}", add_params(&options, params))))
}

/// A single-line command-line file (`/etc/kernel/cmdline`) with `params` added.
pub fn cmdline_file_add(text: &str, params: &[String]) -> String {
    format!("{}\n", add_params(text.trim(), params))
}

/// The value of the last active `key = value` line of a libvirt config file
/// (`qemu.conf`), without a trailing comment.
pub fn conf_value(text: &str, key: &str) -> Option<(usize, String)> {
    let mut found = None;
    for (i, line) in text.lines().enumerate() {
        let Some(rest) = line.trim_start().strip_prefix(key) else {
            continue;
        };
        let Some(value) = rest.trim_start().strip_prefix('=') else {
            continue;
        };
        found = Some((i, strip_conf_comment(value.trim()).to_string()));
    }
    found
}

fn strip_conf_comment(value: &str) -> &str {
    let mut quoted = false;
    for (i, c) in value.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '#' if !quoted => return value[..i].trim_end(),
            _ => {}
        }
    }
    value
}

/// A libvirt config file with each `(key, value)` set: an active line with
/// another value is rewritten in place, a missing key goes into Phyllome's
/// marked block at the end. Keys not in `pairs` are never touched.
pub fn conf_set(text: &str, pairs: &[(&str, &str)]) -> String {
    let mut out = text.to_string();
    let mut missing = Vec::new();
    for (key, value) in pairs {
        match conf_value(&out, key) {
            Some((_, v)) if v == *value => {}
            Some((line, _)) => out = replace_line(&out, line, &format!("{key} = {value}")),
            None => missing.push(format!("{key} = {value}")),
        }
    }
    if missing.is_empty() {
        return out;
    }
    let lines: Vec<&str> = out.lines().collect();
    match (lines.iter().position(|l| *l == BEGIN_MARK), lines.iter().position(|l| *l == END_MARK)) {
        (Some(b), Some(e)) if b < e => {
            let mut new: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
            for (n, m) in missing.into_iter().enumerate() {
                new.insert(e + n, m);
            }
            new.join("\n") + "\n"
        }
        _ => {
            let mut out = ensure_trailing_newline(out);
            if !out.is_empty() && !out.ends_with("\n\n") {
                out.push('\n');
            }
            out.push_str(BEGIN_MARK);
            out.push('\n');
            for m in missing {
                out.push_str(&m);
                out.push('\n');
            }
            out.push_str(END_MARK);
            out.push('\n');
            out
        }
    }
}

/// The `param=value` options a modprobe configuration gives `module`
/// (`options MODULE a=1 b=2` lines).
pub fn modprobe_options(text: &str, module: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("options") && words.next() == Some(module)).then(|| words.map(str::to_string))
        })
        .flatten()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn tokens_respect_quotes() {
        assert_eq!(cmdline_tokens(" a  b=\"c d\" e\n"), p(&["a", "b=\"c d\"", "e"]));
    }

    #[test]
    fn param_states() {
        let t = p(&["quiet", "iommu=off", "intel_iommu=on"]);
        assert_eq!(param_state(&t, "intel_iommu=on"), ParamState::Present);
        assert_eq!(param_state(&t, "iommu=pt"), ParamState::Conflict("iommu=off".into()));
        assert_eq!(param_state(&t, "kvm.nx_huge_pages=off"), ParamState::Missing);
        assert_eq!(param_state(&p(&["iommu=pt", "iommu=off"]), "iommu=pt"), ParamState::Conflict("iommu=off".into()));
    }

    #[test]
    fn add_params_appends_only_missing_and_never_overrides() {
        let want = p(&["intel_iommu=on", "iommu=pt"]);
        assert_eq!(add_params("quiet", &want), "quiet intel_iommu=on iommu=pt");
        assert_eq!(add_params("", &want), "intel_iommu=on iommu=pt");
        assert_eq!(add_params("intel_iommu=off", &want), "intel_iommu=off iommu=pt");
        assert_eq!(add_params("iommu=pt intel_iommu=on", &want), "iommu=pt intel_iommu=on");
    }

    #[test]
    fn grub_defaults_edit_keeps_everything_else() {
        let text = "# comment GRUB_CMDLINE_LINUX=\"x\"\nGRUB_TIMEOUT=5\nGRUB_CMDLINE_LINUX_DEFAULT=\"quiet\"\nGRUB_CMDLINE_LINUX=\"console=ttyS0,115200\" # serial\n";
        let want = p(&["iommu=pt"]);
        let out = grub_defaults_add(text, &want, "why").unwrap();
        assert_eq!(out, text.replace("console=ttyS0,115200\"", "console=ttyS0,115200 iommu=pt\""));
        assert_eq!(grub_defaults_add(&out, &want, "why").unwrap(), out);
        // Single quotes, no quotes, empty, missing.
        assert_eq!(
            grub_defaults_add("GRUB_CMDLINE_LINUX='a'\n", &want, "w").unwrap(),
            "GRUB_CMDLINE_LINUX='a iommu=pt'\n"
        );
        assert_eq!(
            grub_defaults_add("GRUB_CMDLINE_LINUX=a\n", &want, "w").unwrap(),
            "GRUB_CMDLINE_LINUX=\"a iommu=pt\"\n"
        );
        assert_eq!(
            grub_defaults_add("GRUB_CMDLINE_LINUX=\n", &want, "w").unwrap(),
            "GRUB_CMDLINE_LINUX=\"iommu=pt\"\n"
        );
        assert_eq!(
            grub_defaults_add("GRUB_TIMEOUT=5", &want, "w").unwrap(),
            "GRUB_TIMEOUT=5\n# phyllome host setup: w\nGRUB_CMDLINE_LINUX=\"iommu=pt\"\n"
        );
        assert!(grub_defaults_add("GRUB_CMDLINE_LINUX=\"a\nb\"\n", &want, "w").is_err());
        assert_eq!(grub_defaults_tokens(text).unwrap(), p(&["console=ttyS0,115200", "quiet"]));
    }

    #[test]
    fn bls_entry_options() {
        let e = "title Fedora\nlinux /vmlinuz\noptions root=/dev/x ro rhgb\ngrub_class fedora\n";
        assert_eq!(bls_options(e).as_deref(), Some("root=/dev/x ro rhgb"));
        let out = bls_add(e, &p(&["iommu=pt"])).unwrap();
        assert_eq!(out, e.replace("rhgb\n", "rhgb iommu=pt\n"));
        assert!(bls_add("title x\n", &p(&["a"])).is_none());
        assert_eq!(cmdline_file_add("root=x ro\n", &p(&["a=1"])), "root=x ro a=1\n");
    }

    #[test]
    fn conf_set_owns_only_its_keys() {
        let text = "#vnc_listen = \"0.0.0.0\"\nsecurity_driver = \"apparmor\" # mine\nvnc_listen = \"0.0.0.0\"\n";
        let pairs = [("vnc_listen", "\"127.0.0.1\""), ("spice_listen", "\"127.0.0.1\"")];
        let out = conf_set(text, &pairs);
        assert!(out.starts_with(
            "#vnc_listen = \"0.0.0.0\"\nsecurity_driver = \"apparmor\" # mine\nvnc_listen = \"127.0.0.1\"\n\n"
        ));
        assert!(out.ends_with(&format!("{BEGIN_MARK}\nspice_listen = \"127.0.0.1\"\n{END_MARK}\n")), "{out}");
        assert_eq!(conf_set(&out, &pairs), out);
        assert_eq!(conf_value(&out, "security_driver").unwrap().1, "\"apparmor\"");
        // A key removed from the block by hand comes back inside the block.
        let removed = out.replace("spice_listen = \"127.0.0.1\"\n", "");
        assert_eq!(conf_set(&removed, &pairs), out);
    }

    #[test]
    fn modprobe_options_for_a_module() {
        let t = "# x\noptions kvm_intel nested=0 ept=1\noptions kvm ignore_msrs=1\n";
        assert_eq!(modprobe_options(t, "kvm_intel"), p(&["nested=0", "ept=1"]));
        assert_eq!(modprobe_options(t, "kvm_amd"), Vec::<String>::new());
    }
}

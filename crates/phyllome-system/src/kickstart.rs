//! The Phyllome OS recipes: a Fedora Remix based on Fedora Server whose only
//! job is to host the user's VMs.
//!
//! A kickstart is cooked from small named [`Ingredient`]s (the installer's
//! basics, Fedora Server, storage, security, virtualization, Phyllome, …);
//! a [`Recipe`] (edition and options) picks them, and [`render`] mixes them
//! into one flattened kickstart (no `%include`): commands first, then the
//! merged `services` and `firewall` lines, `%packages`, and each ingredient's
//! `%post`. Every part is labelled with the ingredient it came from.

use crate::WEB_PORT;
use std::collections::BTreeSet;
use std::fmt;

/// The two Phyllome OS editions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edition {
    /// A minimal desktop: virt-manager and a browser on Phyllome's web UI.
    Desktop,
    /// No desktop: `phyllome serve` on the network, for a server or a home lab.
    Headless,
}

/// The boot loader the installed system uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bootloader {
    Grub,
    /// systemd-boot (UEFI only; kernels on the EFI system partition).
    SystemdBoot,
}

impl fmt::Display for Edition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Edition::Desktop => "desktop",
            Edition::Headless => "headless",
        })
    }
}

impl fmt::Display for Bootloader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Bootloader::Grub => "grub",
            Bootloader::SystemdBoot => "systemd-boot",
        })
    }
}

/// The oldest Fedora release the recipes support (`bootloader --sdboot` needs 39; older ones are end of life).
pub const MIN_FEDORA: u32 = 40;
/// The Fedora release used when none is given.
pub const DEFAULT_FEDORA: u32 = 44;
/// Where the installer finds the phyllome RPM by default: the `phyllome/`
/// repository on the Phyllome OS install media (mounted there by Anaconda).
pub const DEFAULT_PHYLLOME_REPO: &str = "file:///run/install/repo/phyllome";

/// What to cook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipe {
    pub edition: Edition,
    /// The root filesystem on LUKS (the installer asks for the passphrase).
    pub encrypted: bool,
    pub bootloader: Bootloader,
    pub fedora: u32,
    /// The administrator's user name (in the wheel and libvirt groups).
    pub admin: String,
    /// A crypt(3) hash (`openssl passwd -6`): the admin is created unattended.
    /// Without it the installer asks for the administrator.
    pub admin_password_hash: Option<String>,
    /// SSH public keys for the admin.
    pub ssh_keys: Vec<String>,
    /// The repository the phyllome package comes from.
    pub phyllome_repo: String,
    /// Install on this disk only (`sda`, `nvme0n1`, `disk/by-id/...`); else every disk is erased.
    pub disk: Option<String>,
}

impl Recipe {
    pub fn new(edition: Edition) -> Recipe {
        Recipe {
            edition,
            encrypted: false,
            bootloader: Bootloader::Grub,
            fedora: DEFAULT_FEDORA,
            admin: "admin".into(),
            admin_password_hash: None,
            ssh_keys: Vec::new(),
            phyllome_repo: DEFAULT_PHYLLOME_REPO.into(),
            disk: None,
        }
    }

    /// The command line that makes this recipe (recorded in the kickstart's header).
    pub fn command_line(&self) -> String {
        let mut s = format!("phyllome image kickstart --edition {}", self.edition);
        if self.encrypted {
            s.push_str(" --encrypted");
        }
        s.push_str(&format!(" --bootloader {} --fedora {}", self.bootloader, self.fedora));
        if self.admin != "admin" {
            s.push_str(&format!(" --admin {}", self.admin));
        }
        if self.admin_password_hash.is_some() {
            s.push_str(" --admin-password-hash HASH");
        }
        for _ in &self.ssh_keys {
            s.push_str(" --ssh-key KEY");
        }
        if self.phyllome_repo != DEFAULT_PHYLLOME_REPO {
            s.push_str(&format!(" --phyllome-repo {}", self.phyllome_repo));
        }
        if let Some(d) = &self.disk {
            s.push_str(&format!(" --disk {d}"));
        }
        s
    }
}

/// A recipe that cannot be cooked.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecipeError {
    #[error("Fedora {0} is not supported: use {MIN_FEDORA} or newer")]
    Fedora(u32),
    #[error("admin user name {0:?} is not valid: lower-case letters, digits, '_' and '-', starting with a letter or '_', at most 32")]
    Admin(String),
    #[error("{what} {value:?} contains whitespace, quotes or a backslash")]
    Unsafe { what: &'static str, value: String },
    #[error("the password hash must be a crypt(3) hash starting with '$' (make one with `openssl passwd -6`)")]
    Hash,
    #[error("--ssh-key needs --admin-password-hash: the administrator needs a password for sudo")]
    KeyWithoutPassword,
    #[error("ingredients {0} and {1} both set the kickstart command {2:?}")]
    Clash(&'static str, &'static str, String),
}

/// A `%post` script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Post {
    /// Stop the installation when the script fails.
    pub must_succeed: bool,
    pub body: String,
}

/// One named part of a recipe.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ingredient {
    pub name: &'static str,
    /// What it brings, one line.
    pub about: String,
    /// Kickstart commands (each keyword once in a whole kickstart, except `repo`, `part`, `logvol`, `sshkey`).
    pub commands: Vec<String>,
    pub packages: Vec<String>,
    /// systemd units enabled by the `services` command.
    pub services: Vec<String>,
    /// firewalld options merged into the one `firewall` command (`--service=ssh`, `--port=…`).
    pub firewall: Vec<String>,
    pub post: Option<Post>,
}

fn lines(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn installer(_: &Recipe) -> Ingredient {
    Ingredient {
        name: "installer",
        about: "language, keyboard, time zone, network, and a reboot at the end".into(),
        commands: lines(&[
            "lang en_US.UTF-8",
            "keyboard --vckeymap=us --xlayouts=us",
            "timezone Etc/UTC --utc",
            "network --bootproto=dhcp --device=link --activate --hostname=phyllome",
            "firstboot --disable",
            "reboot --eject",
        ]),
        ..Default::default()
    }
}

fn fedora_server(r: &Recipe) -> Ingredient {
    let mirror = "https://mirrors.fedoraproject.org/mirrorlist";
    Ingredient {
        name: "fedora-server",
        about: format!("Fedora Server {} from Fedora's mirrors, with updates", r.fedora),
        commands: vec![
            format!("url --mirrorlist=\"{mirror}?repo=fedora-{}&arch=x86_64\"", r.fedora),
            format!("repo --name=updates --mirrorlist=\"{mirror}?repo=updates-released-f{}&arch=x86_64\"", r.fedora),
        ],
        packages: lines(&["@^server-product-environment"]),
        ..Default::default()
    }
}

fn storage(r: &Recipe) -> Ingredient {
    let ondisk = r.disk.as_ref().map(|d| format!(" --ondisk={d}")).unwrap_or_default();
    let mut commands = Vec::new();
    if let Some(d) = &r.disk {
        commands.push(format!("ignoredisk --only-use={d}"));
    }
    commands.push("zerombr".into());
    commands.push(format!(
        "clearpart --all --initlabel --disklabel=gpt{}",
        r.disk.as_ref().map(|d| format!(" --drives={d}")).unwrap_or_default()
    ));
    match r.bootloader {
        // The platform's boot partitions (EFI system partition or BIOS boot) and /boot.
        Bootloader::Grub => commands.push("reqpart --add-boot".into()),
        // systemd-boot reads kernels from the EFI system partition: make it roomy, no /boot.
        Bootloader::SystemdBoot => commands.push(format!("part /boot/efi --fstype=efi --size=2048{ondisk}")),
    }
    let luks = if r.encrypted { " --encrypted --luks-version=luks2" } else { "" };
    commands.push(format!("part pv.01 --size=1 --grow{luks}{ondisk}"));
    commands.push("volgroup phyllome pv.01".into());
    commands.push("logvol / --vgname=phyllome --name=root --fstype=xfs --size=20480 --grow".into());
    commands.push(match r.bootloader {
        Bootloader::Grub => "bootloader --timeout=3".into(),
        Bootloader::SystemdBoot => "bootloader --sdboot --timeout=3".into(),
    });
    Ingredient {
        name: "storage",
        about: format!(
            "{}: the root filesystem (XFS on LVM{}) grows over the disk; VM disks live on it; boot loader {}",
            match &r.disk {
                Some(d) => format!("erases {d}"),
                None => "erases every disk the installer sees".into(),
            },
            if r.encrypted { ", on LUKS2: the installer asks for the passphrase" } else { "" },
            r.bootloader
        ),
        commands,
        ..Default::default()
    }
}

fn security(_: &Recipe) -> Ingredient {
    Ingredient {
        name: "security",
        about: "SELinux enforcing, the firewall on (SSH only, cockpit closed), root locked".into(),
        commands: lines(&["selinux --enforcing", "rootpw --lock"]),
        services: lines(&["sshd"]),
        firewall: lines(&["--service=ssh", "--remove-service=cockpit"]),
        ..Default::default()
    }
}

fn admin(r: &Recipe) -> Ingredient {
    let mut commands = Vec::new();
    let about;
    let post;
    match &r.admin_password_hash {
        Some(hash) => {
            commands.push(format!("user --name={} --groups=wheel,libvirt --iscrypted --password={hash}", r.admin));
            about = format!("the administrator {} (wheel, libvirt), created unattended", r.admin);
            post = None;
        }
        None => {
            about = "the installer asks for the administrator (root is locked, so it requires one)".into();
            // The account is made in the installer's UI: put it in libvirt's group here.
            post = Some(Post {
                must_succeed: true,
                body: "# Administrators (wheel) manage VMs without a password prompt: libvirt group.\n\
                       for u in $(getent group wheel | cut -d: -f4 | tr ',' ' '); do\n    \
                           usermod -a -G libvirt \"$u\"\n\
                       done\n"
                    .into(),
            });
        }
    }
    for key in &r.ssh_keys {
        commands.push(format!("sshkey --username={} \"{key}\"", r.admin));
    }
    Ingredient { name: "admin", about, commands, post, ..Default::default() }
}

fn virtualization(_: &Recipe) -> Ingredient {
    Ingredient {
        name: "virtualization",
        about: "libvirt with its QEMU/KVM driver, OVMF (UEFI and Secure Boot), swtpm (TPM 2.0)".into(),
        packages: lines(&[
            "libvirt-daemon-kvm",
            "libvirt-daemon-config-network",
            "libvirt-client",
            "qemu-kvm",
            "qemu-img",
            "edk2-ovmf",
            "swtpm",
            "swtpm-tools",
            "virt-install",
        ]),
        ..Default::default()
    }
}

fn virtio_win(_: &Recipe) -> Ingredient {
    Ingredient {
        name: "virtio-win",
        about: "Windows' virtio drivers, from their own repository when it can be reached (not in Fedora)".into(),
        post: Some(Post {
            must_succeed: false,
            body: "# The virtio-win repository as its maintainers publish it (unsigned: gpgcheck=0).\n\
                   cat > /etc/yum.repos.d/virtio-win.repo <<'EOF'\n\
                   [virtio-win-stable]\n\
                   name=virtio-win builds roughly matching what was shipped in latest RHEL\n\
                   baseurl=https://fedorapeople.org/groups/virt/virtio-win/repo/stable\n\
                   enabled=1\n\
                   skip_if_unavailable=1\n\
                   gpgcheck=0\n\
                   EOF\n\
                   dnf -y install virtio-win || echo 'phyllome: virtio-win is not available now; later: dnf install virtio-win'\n"
                .into(),
        }),
        ..Default::default()
    }
}

fn phyllome(r: &Recipe) -> Ingredient {
    Ingredient {
        name: "phyllome",
        about: "the phyllome package: CLI, web UI service (phyllome.service), completions, man page".into(),
        // A network repository is kept on the installed system for updates; the
        // install media's is not (dnf would fail on it once the media is gone).
        commands: vec![format!(
            "repo --name=phyllome --baseurl={}{}",
            r.phyllome_repo,
            if r.phyllome_repo.starts_with("file:") { "" } else { " --install" }
        )],
        packages: lines(&["phyllome"]),
        ..Default::default()
    }
}

fn first_boot(_: &Recipe) -> Ingredient {
    Ingredient {
        name: "first-boot",
        about: "`phyllome host setup` at first boot, on the real hardware (IOMMU, vfio, nested, libvirt, pool)".into(),
        post: Some(Post {
            must_succeed: true,
            body: "cat > /etc/systemd/system/phyllome-host-setup.service <<'EOF'\n\
                   [Unit]\n\
                   Description=Phyllome OS first boot: set this host up for virtualization\n\
                   ConditionPathExists=!/var/lib/phyllome/host-setup.done\n\
                   Wants=virtqemud.socket\n\
                   After=virtqemud.socket network-online.target\n\
                   \n\
                   [Service]\n\
                   Type=oneshot\n\
                   RemainAfterExit=yes\n\
                   ExecStart=/usr/bin/phyllome host setup\n\
                   ExecStartPost=/usr/bin/mkdir -p /var/lib/phyllome\n\
                   ExecStartPost=/usr/bin/touch /var/lib/phyllome/host-setup.done\n\
                   \n\
                   [Install]\n\
                   WantedBy=multi-user.target\n\
                   EOF\n\
                   systemctl enable phyllome-host-setup.service\n"
                .into(),
        }),
        ..Default::default()
    }
}

fn web_ui(r: &Recipe) -> Ingredient {
    let (listen, about, firewall) = match r.edition {
        Edition::Headless => (
            format!("0.0.0.0:{WEB_PORT}"),
            format!("`phyllome serve` on port {WEB_PORT} of every address; the firewall opens that port only"),
            vec![format!("--port={WEB_PORT}:tcp")],
        ),
        Edition::Desktop => (
            format!("127.0.0.1:{WEB_PORT}"),
            format!("`phyllome serve` on 127.0.0.1:{WEB_PORT}, for this desktop's browser; no port opened"),
            vec![],
        ),
    };
    Ingredient {
        name: "web-ui",
        about,
        services: lines(&["phyllome"]),
        firewall,
        post: Some(Post {
            must_succeed: true,
            body: format!(
                "mkdir -p /etc/phyllome\n\
                 cat > /etc/phyllome/phyllome.env <<'EOF'\n\
                 # Read by phyllome.service: where `phyllome serve` listens.\n\
                 PHYLLOME_LISTEN={listen}\n\
                 EOF\n"
            ),
        }),
        ..Default::default()
    }
}

fn desktop(_: &Recipe) -> Ingredient {
    let url = format!("http://127.0.0.1:{WEB_PORT}/");
    let entry = |autostart: bool| {
        format!(
            "[Desktop Entry]\nType=Application\nName=Phyllome\nComment=Your virtual machines\n\
             Exec=xdg-open {url}\nIcon=virt-manager\nCategories=System;Emulator;\n{}",
            if autostart { "X-GNOME-Autostart-enabled=true\n" } else { "" }
        )
    };
    Ingredient {
        name: "desktop",
        about: "a minimal GNOME desktop with virt-manager, and Firefox opening Phyllome's web UI at login".into(),
        commands: lines(&["xconfig --startxonboot"]),
        packages: lines(&[
            "@base-x",
            "@fonts",
            "gdm",
            "gnome-shell",
            "gnome-terminal",
            "firefox",
            "xdg-utils",
            "virt-manager",
            "virt-viewer",
        ]),
        post: Some(Post {
            must_succeed: true,
            body: format!(
                "mkdir -p /usr/local/share/applications /etc/xdg/autostart\n\
                 cat > /usr/local/share/applications/phyllome.desktop <<'EOF'\n{}EOF\n\
                 cat > /etc/xdg/autostart/phyllome.desktop <<'EOF'\n{}EOF\n",
                entry(false),
                entry(true)
            ),
        }),
        ..Default::default()
    }
}

fn check_safe(what: &'static str, value: &str) -> Result<(), RecipeError> {
    if value.is_empty() || value.contains(|c: char| c.is_whitespace() || "\"'\\".contains(c)) {
        return Err(RecipeError::Unsafe { what, value: value.into() });
    }
    Ok(())
}

fn check(r: &Recipe) -> Result<(), RecipeError> {
    if r.fedora < MIN_FEDORA {
        return Err(RecipeError::Fedora(r.fedora));
    }
    let a = r.admin.as_bytes();
    let admin_ok = !a.is_empty()
        && a.len() <= 32
        && (a[0].is_ascii_lowercase() || a[0] == b'_')
        && a.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-');
    if !admin_ok {
        return Err(RecipeError::Admin(r.admin.clone()));
    }
    if let Some(h) = &r.admin_password_hash {
        check_safe("the password hash", h)?;
        if !h.starts_with('$') {
            return Err(RecipeError::Hash);
        }
    }
    if !r.ssh_keys.is_empty() && r.admin_password_hash.is_none() {
        return Err(RecipeError::KeyWithoutPassword);
    }
    for k in &r.ssh_keys {
        if k.trim().is_empty() || k.contains(['"', '\\', '\n', '\r']) {
            return Err(RecipeError::Unsafe { what: "the SSH key", value: k.clone() });
        }
    }
    check_safe("the phyllome repository URL", &r.phyllome_repo)?;
    if let Some(d) = &r.disk {
        check_safe("the disk", d)?;
    }
    Ok(())
}

/// The ingredients of a recipe, in the order they go into the kickstart.
pub fn ingredients(r: &Recipe) -> Result<Vec<Ingredient>, RecipeError> {
    check(r)?;
    let mut v = vec![
        installer(r),
        fedora_server(r),
        storage(r),
        security(r),
        admin(r),
        virtualization(r),
        virtio_win(r),
        phyllome(r),
        web_ui(r),
        first_boot(r),
    ];
    if r.edition == Edition::Desktop {
        v.push(desktop(r));
    }
    Ok(v)
}

/// Commands a kickstart may hold more than once.
const REPEATABLE: [&str; 5] = ["repo", "part", "logvol", "sshkey", "volgroup"];

/// Mixes ingredients into one flattened kickstart.
pub fn mix(title: &str, ingredients: &[Ingredient]) -> Result<String, RecipeError> {
    let mut seen: Vec<(String, &'static str)> = Vec::new();
    for ing in ingredients {
        for c in &ing.commands {
            let keyword = c.split_whitespace().next().unwrap_or_default().to_string();
            if REPEATABLE.contains(&keyword.as_str()) {
                continue;
            }
            if let Some((_, other)) = seen.iter().find(|(k, _)| *k == keyword) {
                return Err(RecipeError::Clash(other, ing.name, keyword));
            }
            seen.push((keyword, ing.name));
        }
        for k in ["services", "firewall", "%packages", "%post"] {
            if ing.commands.iter().any(|c| c.starts_with(k)) {
                return Err(RecipeError::Clash(ing.name, "the mixer", k.into()));
            }
        }
    }
    let mut out = String::new();
    out.push_str(title);
    out.push_str("#\n# Ingredients:\n");
    for ing in ingredients {
        out.push_str(&format!("#   {:<15} {}\n", ing.name, ing.about));
    }
    for ing in ingredients.iter().filter(|i| !i.commands.is_empty()) {
        out.push_str(&format!("\n# --- {} ---\n", ing.name));
        for c in &ing.commands {
            out.push_str(c);
            out.push('\n');
        }
    }
    // One services and one firewall command, from every ingredient.
    let mut services = BTreeSet::new();
    let mut firewall = Vec::new();
    for ing in ingredients {
        services.extend(ing.services.iter().cloned());
        for f in &ing.firewall {
            if !firewall.contains(f) {
                firewall.push(f.clone());
            }
        }
    }
    let from = |pick: fn(&Ingredient) -> bool| {
        ingredients.iter().filter(|i| pick(i)).map(|i| i.name).collect::<Vec<_>>().join(", ")
    };
    out.push_str(&format!(
        "\n# --- services and firewall, from: {} ---\n",
        from(|i| !i.services.is_empty() || !i.firewall.is_empty())
    ));
    if !services.is_empty() {
        out.push_str(&format!("services --enabled={}\n", services.into_iter().collect::<Vec<_>>().join(",")));
    }
    out.push_str("firewall --enabled");
    for f in &firewall {
        out.push(' ');
        out.push_str(f);
    }
    out.push('\n');
    out.push_str("\n%packages\n");
    let mut listed = BTreeSet::new();
    for ing in ingredients.iter().filter(|i| !i.packages.is_empty()) {
        out.push_str(&format!("# {}\n", ing.name));
        for p in &ing.packages {
            if listed.insert(p.clone()) {
                out.push_str(p);
                out.push('\n');
            }
        }
    }
    out.push_str("%end\n");
    for ing in ingredients {
        if let Some(post) = &ing.post {
            out.push_str(&format!(
                "\n%post{} --log=/var/log/phyllome-kickstart-{}.log\n# --- {} ---\n",
                if post.must_succeed { " --erroronfail" } else { "" },
                ing.name,
                ing.name
            ));
            out.push_str(&post.body);
            if !post.body.ends_with('\n') {
                out.push('\n');
            }
            out.push_str("%end\n");
        }
    }
    Ok(out)
}

/// The whole kickstart for a recipe.
pub fn render(r: &Recipe) -> Result<String, RecipeError> {
    let ings = ingredients(r)?;
    let title = format!(
        "# Phyllome OS, {} edition: a Fedora {} Remix based on Fedora Server that hosts your VMs.\n\
         # Generated by `{}`.\n\
         # A flattened kickstart (no %include); each part names the ingredient it comes from.\n\
         # WARNING: installing with it {}.\n",
        r.edition,
        r.fedora,
        r.command_line(),
        match &r.disk {
            Some(d) => format!("erases the disk {d}"),
            None => "erases every disk the installer sees".into(),
        }
    );
    mix(&title, &ings)
}

/// Every edition × encryption × boot loader combination, for tests and CI.
pub fn all_combinations(fedora: u32) -> Vec<Recipe> {
    let mut v = Vec::new();
    for edition in [Edition::Desktop, Edition::Headless] {
        for encrypted in [false, true] {
            for bootloader in [Bootloader::Grub, Bootloader::SystemdBoot] {
                v.push(Recipe { encrypted, bootloader, fedora, ..Recipe::new(edition) });
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(r: &Recipe) -> Vec<&'static str> {
        ingredients(r).unwrap().iter().map(|i| i.name).collect()
    }

    #[test]
    fn editions_share_the_base_and_desktop_adds_its_dish() {
        let h = names(&Recipe::new(Edition::Headless));
        let d = names(&Recipe::new(Edition::Desktop));
        assert_eq!(&d[..h.len()], &h[..]);
        assert_eq!(d.last(), Some(&"desktop"));
        for n in ["fedora-server", "storage", "security", "virtualization", "phyllome", "first-boot"] {
            assert!(h.contains(&n), "{n}");
        }
    }

    #[test]
    fn options_reach_the_kickstart() {
        let mut r = Recipe::new(Edition::Headless);
        let plain = render(&r).unwrap();
        assert!(plain.contains("bootloader --timeout=3\n") && plain.contains("reqpart --add-boot\n"));
        assert!(!plain.contains("--encrypted"));
        assert!(plain.contains(&format!("--port={WEB_PORT}:tcp")));
        assert!(plain.contains("PHYLLOME_LISTEN=0.0.0.0:"));
        assert!(plain.contains("services --enabled=phyllome,sshd\n"));
        r.encrypted = true;
        r.bootloader = Bootloader::SystemdBoot;
        r.fedora = 42;
        let k = render(&r).unwrap();
        assert!(k.contains("part pv.01 --size=1 --grow --encrypted --luks-version=luks2\n"));
        assert!(k.contains("bootloader --sdboot --timeout=3\n") && !k.contains("reqpart"));
        assert!(k.contains("repo=fedora-42&arch") && k.contains("updates-released-f42"));
        let d = render(&Recipe::new(Edition::Desktop)).unwrap();
        assert!(d.contains("virt-manager\n") && d.contains("firefox\n") && d.contains("xconfig --startxonboot"));
        assert!(d.contains("PHYLLOME_LISTEN=127.0.0.1:") && !d.contains("--port="));
    }

    #[test]
    fn security_basics_in_every_combination() {
        for r in all_combinations(DEFAULT_FEDORA) {
            let k = render(&r).unwrap();
            for want in ["selinux --enforcing\n", "rootpw --lock\n", "firewall --enabled --service=ssh", "edk2-ovmf\n"]
            {
                assert!(k.contains(want), "{want} missing for {}", r.command_line());
            }
            assert!(!k.lines().any(|l| l.starts_with("%include")));
            assert_eq!(k.matches("\nservices ").count(), 1);
            assert_eq!(k.matches("\nfirewall ").count(), 1);
        }
    }

    #[test]
    fn admin_unattended_with_hash_and_keys() {
        let mut r = Recipe::new(Edition::Headless);
        r.admin = "ops".into();
        r.admin_password_hash = Some("$6$salt$hash".into());
        r.ssh_keys = vec!["ssh-ed25519 AAAA me@host".into()];
        let k = render(&r).unwrap();
        assert!(k.contains("user --name=ops --groups=wheel,libvirt --iscrypted --password=$6$salt$hash\n"));
        assert!(k.contains("sshkey --username=ops \"ssh-ed25519 AAAA me@host\"\n"));
        let asked = render(&Recipe::new(Edition::Headless)).unwrap();
        assert!(!asked.contains("\nuser ") && asked.contains("usermod -a -G libvirt"));
    }

    #[test]
    fn bad_input_is_refused() {
        let base = Recipe::new(Edition::Headless);
        let err = |f: &dyn Fn(&mut Recipe)| {
            let mut r = base.clone();
            f(&mut r);
            render(&r).unwrap_err()
        };
        assert_eq!(err(&|r| r.fedora = 38), RecipeError::Fedora(38));
        assert!(matches!(err(&|r| r.admin = "Root Admin".into()), RecipeError::Admin(_)));
        assert_eq!(err(&|r| r.admin_password_hash = Some("plain".into())), RecipeError::Hash);
        assert!(matches!(err(&|r| r.admin_password_hash = Some("$6$a b".into())), RecipeError::Unsafe { .. }));
        assert_eq!(err(&|r| r.ssh_keys = vec!["ssh-ed25519 A".into()]), RecipeError::KeyWithoutPassword);
        assert!(matches!(err(&|r| r.disk = Some("sda\nclearpart".into())), RecipeError::Unsafe { .. }));
    }

    #[test]
    fn clashing_ingredients_are_a_composition_error() {
        let a = Ingredient { name: "a", commands: lines(&["selinux --enforcing"]), ..Default::default() };
        let b = Ingredient { name: "b", commands: lines(&["selinux --permissive"]), ..Default::default() };
        assert_eq!(mix("", &[a.clone(), b]), Err(RecipeError::Clash("a", "b", "selinux".into())));
        let c = Ingredient { name: "c", commands: lines(&["repo --name=x --baseurl=file:///x"]), ..Default::default() };
        assert!(mix("", &[a, c.clone(), c]).is_ok());
    }

    #[test]
    fn one_disk_only_when_asked() {
        let mut r = Recipe::new(Edition::Headless);
        r.disk = Some("nvme0n1".into());
        r.bootloader = Bootloader::SystemdBoot;
        let k = render(&r).unwrap();
        assert!(k.contains("ignoredisk --only-use=nvme0n1\n"));
        assert!(k.contains("clearpart --all --initlabel --disklabel=gpt --drives=nvme0n1\n"));
        assert!(k.contains("part /boot/efi --fstype=efi --size=2048 --ondisk=nvme0n1\n"));
        assert!(k.contains("WARNING: installing with it erases the disk nvme0n1."));
    }
}

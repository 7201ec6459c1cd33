//! A typed subset of libvirt's domain XML: the devices and settings Phyllome
//! generates, and nothing else. `Domain::to_xml` lowers it to text.

use crate::xml::Element;

/// XML namespace of Phyllome's `<metadata>` entry.
pub const METADATA_NS: &str = "https://phyllo.me/xmlns/phyllome/1";
/// libosinfo's namespace, read by virt-manager, GNOME Boxes and cockpit.
pub const LIBOSINFO_NS: &str = "http://libosinfo.org/xmlns/libvirt/domain/1.0";
/// QEMU command-line passthrough namespace (used only where libvirt has no element).
pub const QEMU_NS: &str = "http://libvirt.org/schemas/domain/qemu/1.0";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainType {
    Kvm,
    Qemu,
}

impl DomainType {
    pub fn as_str(self) -> &'static str {
        match self {
            DomainType::Kvm => "kvm",
            DomainType::Qemu => "qemu",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Machine {
    Q35,
    /// i440fx.
    Pc,
}

impl Machine {
    pub fn as_str(self) -> &'static str {
        match self {
            Machine::Q35 => "q35",
            Machine::Pc => "pc",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS.
    Bios,
    /// OVMF, auto-selected by libvirt from the host's firmware descriptors.
    /// `nvram`: the path of a qcow2 variable store (Phyllome makes it from the
    /// template libvirt picked, see `capability::Feature::QcowNvram`); `None`
    /// lets libvirt keep a raw one of its own.
    Efi { secure_boot: bool, nvram: Option<String> },
}

/// Where libvirt keeps UEFI variable stores (its `nvram_dir`).
pub const NVRAM_DIR: &str = "/var/lib/libvirt/qemu/nvram";

/// The qcow2 variable store of the VM `name`, named as libvirt names its raw ones.
pub fn qcow2_nvram_path(name: &str) -> String {
    format!("{NVRAM_DIR}/{name}_VARS.qcow2")
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectBoot {
    pub kernel: String,
    pub initrd: Option<String>,
    pub cmdline: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CpuMode {
    HostModel,
    /// Everything the accelerator can offer (`-cpu max`), for TCG.
    Maximum,
    Custom {
        model: String,
        vendor: Option<String>,
        features: Vec<(String, String)>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cpu {
    pub mode: CpuMode,
    /// One socket, `cores` cores, one thread each.
    pub cores: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Clock {
    Utc {
        kvmclock: bool,
    },
    /// Windows keeps the RTC in local time.
    LocalTime {
        hypervclock: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Features {
    pub smm: bool,
    /// Hyper-V enlightenments as (name, extra attributes).
    pub hyperv: Vec<HypervFeature>,
    pub vmport_off: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HypervFeature {
    On(&'static str),
    Spinlocks(u32),
    /// `<stimer>` with `<direct>`.
    StimerDirect,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskBus {
    Virtio,
    Sata,
    Ide,
}

impl DiskBus {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskBus::Virtio => "virtio",
            DiskBus::Sata => "sata",
            DiskBus::Ide => "ide",
        }
    }

    fn dev_prefix(self) -> &'static str {
        match self {
            DiskBus::Virtio => "vd",
            DiskBus::Sata => "sd",
            DiskBus::Ide => "hd",
        }
    }

    /// Target device name for the `index`-th disk on this bus (vda, sdb, hdc...).
    pub fn target(self, index: usize) -> String {
        let letter = (b'a' + (index % 26) as u8) as char;
        format!("{}{}", self.dev_prefix(), letter)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskSource {
    /// A volume in a libvirt storage pool.
    Volume {
        pool: String,
        volume: String,
    },
    File(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    pub cdrom: bool,
    pub source: DiskSource,
    /// `qcow2` or `raw`.
    pub format: &'static str,
    pub bus: DiskBus,
    pub target: String,
    pub readonly: bool,
    pub boot_order: Option<u32>,
    /// Pass guest TRIM through and turn zero writes into holes.
    pub discard: bool,
    /// LUKS encryption; the passphrase secret is found by its usage id (the volume path).
    pub luks_secret_usage: Option<String>,
    /// Tell libvirt not to relabel the file (`<seclabel model='dac' relabel='no'/>`): for
    /// read-only installer media, which stay as the user made them (QEMU must already be able to read them).
    pub keep_label: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interface {
    Network { network: String, model: &'static str },
    User { model: &'static str },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Video {
    pub model: &'static str,
    pub accel3d: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Graphics {
    /// VNC on loopback with an automatic port.
    VncLoopback,
    /// Renders OpenGL on the host's render node, shown through the VNC display.
    EglHeadless { rendernode: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputBus {
    Virtio,
    Usb,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    Keyboard,
    Tablet,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Device {
    Disk(Disk),
    /// A host folder shared over virtiofs (needs the shared memory backing the
    /// domain then gets).
    Share(Share),
    /// `<controller type='usb' model=...>`.
    UsbController(&'static str),
    /// Spare PCIe root ports for hot-plugging disks, NICs and passthrough devices.
    PcieRootPorts(u32),
    Interface(Interface),
    Input {
        kind: InputKind,
        bus: InputBus,
    },
    Graphics(Graphics),
    Video(Video),
    Sound(&'static str),
    Rng,
    Balloon {
        free_page_reporting: bool,
    },
    NoBalloon,
    Tpm {
        model: &'static str,
    },
    GuestAgentChannel,
    /// The first serial port as the console, logged to `log`.
    SerialConsole {
        log: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    pub os_id: String,
    pub version: String,
    pub osinfo: Option<String>,
    /// `secret`, `prompt` or `none`: how the main disk is encrypted.
    pub encryption: String,
    /// What the user asked for, as given (`4`, `8G`, `64G`), not what the host made of it:
    /// what a manifest of the VM says, so another host sizes it anew only where the user let it.
    pub asked: Asked,
    /// The manifest file or folder (absolute path) `phyllome apply` made the VM from:
    /// what `apply --prune` may remove, and nothing else.
    pub applied_from: Option<String>,
}

/// The sizes a user gave when the VM was made (none: the host decided).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Asked {
    pub cpus: Option<u32>,
    pub memory: Option<String>,
    pub disk_size: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Domain {
    pub kind: DomainType,
    pub name: String,
    pub title: Option<String>,
    pub metadata: Metadata,
    pub memory_mib: u64,
    pub vcpus: u32,
    pub machine: Machine,
    pub firmware: Firmware,
    pub direct_boot: Option<DirectBoot>,
    pub features: Features,
    pub cpu: Cpu,
    pub clock: Clock,
    /// Allow S3/S4 (suspend to RAM/disk) in the guest.
    pub suspend: bool,
    pub devices: Vec<Device>,
    /// Extra QEMU arguments for devices libvirt does not model (macOS's applesmc).
    pub qemu_args: Vec<String>,
}

/// A host folder shared with the guest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Share {
    pub dir: String,
    /// The name the guest mounts it by (`mount -t virtiofs TAG /mnt`).
    pub tag: String,
    pub readonly: bool,
}

/// virtiofsd maps guest memory, so the guest's RAM must be shareable: memfd.
pub fn shared_memory() -> Element {
    Element::new("memoryBacking")
        .child(Element::new("source").attr("type", "memfd"))
        .child(Element::new("access").attr("mode", "shared"))
}

fn on(name: &'static str) -> Element {
    Element::new(name).attr("state", "on")
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

impl Domain {
    /// A share's `<filesystem>` (also what `share add` attaches).
    pub fn share_element(sh: &Share) -> Element {
        let mut fs = Element::new("filesystem")
            .attr("type", "mount")
            .attr("accessmode", "passthrough")
            .child(Element::new("driver").attr("type", "virtiofs"))
            .child(Element::new("source").attr("dir", &sh.dir))
            .child(Element::new("target").attr("dir", &sh.tag));
        if sh.readonly {
            fs = fs.child(Element::new("readonly"));
        }
        fs
    }

    pub fn to_xml(&self) -> String {
        self.to_element().render()
    }

    pub fn to_element(&self) -> Element {
        let mut d = Element::new("domain").attr("type", self.kind.as_str());
        if !self.qemu_args.is_empty() {
            d = d.attr("xmlns:qemu", QEMU_NS);
        }
        d = d
            .child(Element::leaf("name", &self.name))
            .child_opt(self.title.as_ref().map(|t| Element::leaf("title", t)))
            .child(self.metadata_element())
            .child(Element::leaf("memory", self.memory_mib.to_string()).attr("unit", "MiB"))
            .child(Element::leaf("currentMemory", self.memory_mib.to_string()).attr("unit", "MiB"))
            .child_opt(self.devices.iter().any(|d| matches!(d, Device::Share(_))).then(shared_memory))
            .child(Element::leaf("vcpu", self.vcpus.to_string()).attr("placement", "static"))
            .child(self.os_element())
            .child(self.features_element())
            .child(self.cpu_element())
            .child(self.clock_element())
            .child(Element::leaf("on_poweroff", "destroy"))
            .child(Element::leaf("on_reboot", "restart"))
            .child(Element::leaf("on_crash", "destroy"))
            .child(
                Element::new("pm")
                    .child(Element::new("suspend-to-mem").attr("enabled", yes_no(self.suspend)))
                    .child(Element::new("suspend-to-disk").attr("enabled", yes_no(self.suspend))),
            );
        let mut devices = Element::new("devices");
        for dev in &self.devices {
            for e in device_elements(dev) {
                devices.push(e);
            }
        }
        d = d.child(devices);
        if !self.qemu_args.is_empty() {
            let mut cl = Element::new("qemu:commandline");
            for a in &self.qemu_args {
                cl.push(Element::new("qemu:arg").attr("value", a));
            }
            d = d.child(cl);
        }
        d
    }

    fn metadata_element(&self) -> Element {
        let m = &self.metadata;
        let ours = Element::new("phyllome:vm")
            .attr("xmlns:phyllome", METADATA_NS)
            .child(Element::leaf("phyllome:os", &m.os_id))
            .child(Element::leaf("phyllome:version", &m.version))
            .child(Element::leaf("phyllome:encryption", &m.encryption))
            .child_opt((m.asked != Asked::default()).then(|| {
                Element::new("phyllome:asked")
                    .attr_opt("cpus", m.asked.cpus.map(|c| c.to_string()))
                    .attr_opt("memory", m.asked.memory.clone())
                    .attr_opt("disk", m.asked.disk_size.clone())
            }))
            .child_opt(m.applied_from.as_ref().map(|from| Element::new("phyllome:applied").attr("from", from)));
        let osinfo = m.osinfo.as_ref().map(|id| {
            Element::new("libosinfo:libosinfo")
                .attr("xmlns:libosinfo", LIBOSINFO_NS)
                .child(Element::new("libosinfo:os").attr("id", id))
        });
        Element::new("metadata").child(ours).child_opt(osinfo)
    }

    fn os_element(&self) -> Element {
        let mut os = Element::new("os");
        if let Firmware::Efi { .. } = self.firmware {
            os = os.attr("firmware", "efi");
        }
        os = os.child(Element::leaf("type", "hvm").attr("arch", "x86_64").attr("machine", self.machine.as_str()));
        if let Firmware::Efi { secure_boot, nvram } = &self.firmware {
            let secure_boot = *secure_boot;
            // Ask libvirt's firmware auto-selection for the right OVMF build
            // instead of hard-coding distribution-specific paths: the VM then
            // moves to a host whose OVMF lives elsewhere.
            let mut fw = Element::new("firmware");
            if secure_boot {
                fw.push(Element::new("feature").attr("enabled", "yes").attr("name", "enrolled-keys"));
            }
            fw.push(Element::new("feature").attr("enabled", yes_no(secure_boot)).attr("name", "secure-boot"));
            os = os.child(fw);
            // libvirt 9.0 refuses secure='no' next to auto-selection, but
            // secure='yes' makes it check that SMM is on as secure boot needs.
            let secure = secure_boot.then_some(("secure", "yes"));
            // Beside a qcow2 store the code's format must be said: libvirt would
            // otherwise look for qcow2 firmware code, which OVMF rarely ships.
            let raw_code = nvram.is_some().then_some(("format", "raw"));
            if secure.is_some() || raw_code.is_some() {
                let mut loader = Element::new("loader");
                for (k, v) in [secure, raw_code].into_iter().flatten() {
                    loader = loader.attr(k, v);
                }
                os = os.child(loader);
            }
            if let Some(path) = nvram {
                // libvirt still picks the firmware and its template at define time;
                // only the store's format and place are ours.
                os = os.child(Element::leaf("nvram", path).attr("format", "qcow2"));
            }
        }
        if let Some(b) = &self.direct_boot {
            os = os
                .child(Element::leaf("kernel", &b.kernel))
                .child_opt(b.initrd.as_ref().map(|i| Element::leaf("initrd", i)))
                .child_opt(b.cmdline.as_ref().map(|c| Element::leaf("cmdline", c)));
        }
        os
    }

    fn features_element(&self) -> Element {
        let f = &self.features;
        let mut e = Element::new("features").child(Element::new("acpi")).child(Element::new("apic"));
        if !f.hyperv.is_empty() {
            let mut hv = Element::new("hyperv").attr("mode", "custom");
            for h in &f.hyperv {
                hv.push(match h {
                    HypervFeature::On(name) => on(name),
                    HypervFeature::Spinlocks(n) => on("spinlocks").attr("retries", n.to_string()),
                    HypervFeature::StimerDirect => on("stimer").child(on("direct")),
                });
            }
            e = e.child(hv);
        }
        if f.vmport_off {
            e = e.child(Element::new("vmport").attr("state", "off"));
        }
        if f.smm {
            e = e.child(on("smm"));
        }
        e
    }

    fn cpu_element(&self) -> Element {
        let topo = Element::new("topology")
            .attr("sockets", "1")
            .attr("dies", "1")
            .attr("cores", self.cpu.cores.to_string())
            .attr("threads", "1");
        match &self.cpu.mode {
            CpuMode::HostModel => Element::new("cpu").attr("mode", "host-model").attr("check", "partial").child(topo),
            CpuMode::Maximum => Element::new("cpu").attr("mode", "maximum").attr("check", "none").child(topo),
            CpuMode::Custom { model, vendor, features } => {
                let mut c = Element::new("cpu")
                    .attr("mode", "custom")
                    .attr("match", "exact")
                    .attr("check", "none")
                    .child(Element::leaf("model", model).attr("fallback", "forbid"))
                    .child_opt(vendor.as_ref().map(|v| Element::leaf("vendor", v)))
                    .child(topo);
                for (policy, name) in features {
                    c.push(Element::new("feature").attr("policy", policy).attr("name", name));
                }
                c
            }
        }
    }

    fn clock_element(&self) -> Element {
        let timer = |name: &'static str| Element::new("timer").attr("name", name);
        match self.clock {
            Clock::Utc { kvmclock } => {
                let mut c = Element::new("clock")
                    .attr("offset", "utc")
                    .child(timer("rtc").attr("tickpolicy", "catchup"))
                    .child(timer("pit").attr("tickpolicy", "delay"))
                    .child(timer("hpet").attr("present", "no"));
                if kvmclock {
                    c.push(timer("kvmclock").attr("present", "yes"));
                }
                c
            }
            Clock::LocalTime { hypervclock } => {
                let mut c = Element::new("clock")
                    .attr("offset", "localtime")
                    .child(timer("rtc").attr("tickpolicy", "catchup"))
                    .child(timer("pit").attr("tickpolicy", "delay"))
                    .child(timer("hpet").attr("present", "no"));
                if hypervclock {
                    c.push(timer("hypervclock").attr("present", "yes"));
                }
                c
            }
        }
    }
}

fn device_elements(dev: &Device) -> Vec<Element> {
    match dev {
        Device::Disk(d) => vec![disk_element(d)],
        Device::UsbController(model) => {
            vec![Element::new("controller").attr("type", "usb").attr("model", *model)]
        }
        Device::PcieRootPorts(n) => {
            (0..*n).map(|_| Element::new("controller").attr("type", "pci").attr("model", "pcie-root-port")).collect()
        }
        Device::Interface(i) => {
            let e = match i {
                Interface::Network { network, model } => Element::new("interface")
                    .attr("type", "network")
                    .child(Element::new("source").attr("network", network))
                    .child(Element::new("model").attr("type", *model)),
                Interface::User { model } => {
                    Element::new("interface").attr("type", "user").child(Element::new("model").attr("type", *model))
                }
            };
            vec![e]
        }
        Device::Input { kind, bus } => {
            let kind = match kind {
                InputKind::Keyboard => "keyboard",
                InputKind::Tablet => "tablet",
            };
            let bus = match bus {
                InputBus::Virtio => "virtio",
                InputBus::Usb => "usb",
            };
            vec![Element::new("input").attr("type", kind).attr("bus", bus)]
        }
        Device::Graphics(g) => {
            let e = match g {
                Graphics::VncLoopback => Element::new("graphics")
                    .attr("type", "vnc")
                    .attr("port", "-1")
                    .attr("autoport", "yes")
                    .child(Element::new("listen").attr("type", "address").attr("address", "127.0.0.1")),
                Graphics::EglHeadless { rendernode } => Element::new("graphics")
                    .attr("type", "egl-headless")
                    .child(Element::new("gl").attr("rendernode", rendernode)),
            };
            vec![e]
        }
        Device::Video(v) => {
            let mut model = Element::new("model").attr("type", v.model).attr("heads", "1").attr("primary", "yes");
            if v.accel3d {
                model = model.child(Element::new("acceleration").attr("accel3d", "yes"));
            }
            vec![Element::new("video").child(model)]
        }
        Device::Sound(model) => vec![Element::new("sound").attr("model", *model)],
        Device::Share(sh) => vec![Domain::share_element(sh)],
        Device::Rng => vec![Element::new("rng")
            .attr("model", "virtio")
            .child(Element::leaf("backend", "/dev/urandom").attr("model", "random"))],
        Device::Balloon { free_page_reporting } => {
            let mut b = Element::new("memballoon").attr("model", "virtio");
            if *free_page_reporting {
                b = b.attr("freePageReporting", "on");
            }
            vec![b.child(Element::new("stats").attr("period", "10"))]
        }
        Device::NoBalloon => vec![Element::new("memballoon").attr("model", "none")],
        Device::Tpm { model } => vec![Element::new("tpm")
            .attr("model", *model)
            .child(Element::new("backend").attr("type", "emulator").attr("version", "2.0"))],
        Device::GuestAgentChannel => vec![Element::new("channel")
            .attr("type", "unix")
            .child(Element::new("target").attr("type", "virtio").attr("name", "org.qemu.guest_agent.0"))],
        Device::SerialConsole { log } => vec![
            Element::new("serial")
                .attr("type", "pty")
                .child(Element::new("log").attr("file", log).attr("append", "off"))
                .child(Element::new("target").attr("port", "0")),
            Element::new("console")
                .attr("type", "pty")
                .child(Element::new("target").attr("type", "serial").attr("port", "0")),
        ],
    }
}

fn disk_element(d: &Disk) -> Element {
    let mut driver = Element::new("driver").attr("name", "qemu").attr("type", d.format);
    if d.discard {
        driver = driver.attr("discard", "unmap").attr("detect_zeroes", "unmap");
    }
    let (kind, mut source) = match &d.source {
        DiskSource::Volume { pool, volume } => {
            ("volume", Element::new("source").attr("pool", pool).attr("volume", volume))
        }
        DiskSource::File(path) => {
            let src = Element::new("source").attr("file", path);
            let src = if d.keep_label {
                src.child(Element::new("seclabel").attr("model", "dac").attr("relabel", "no"))
            } else {
                src
            };
            ("file", src)
        }
    };
    if let Some(usage) = &d.luks_secret_usage {
        source = source.child(
            Element::new("encryption")
                .attr("format", "luks")
                .child(Element::new("secret").attr("type", "passphrase").attr("usage", usage)),
        );
    }
    Element::new("disk")
        .attr("type", kind)
        .attr("device", if d.cdrom { "cdrom" } else { "disk" })
        .child(driver)
        .child(source)
        .child(Element::new("target").attr("dev", &d.target).attr("bus", d.bus.as_str()))
        .child_opt(d.readonly.then(|| Element::new("readonly")))
        .child_opt(d.boot_order.map(|o| Element::new("boot").attr("order", o.to_string())))
}

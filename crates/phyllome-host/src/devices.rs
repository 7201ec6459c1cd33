//! The host's PCI and USB devices, and whether a PCI device can be passed
//! through to a VM without hurting the host. Everything is read through a
//! root directory (`/` live, a fixture tree in tests):
//!
//! - `sys/bus/pci/devices/BDF/{vendor,device,class,boot_vga,driver,iommu_group}`;
//! - `sys/kernel/iommu_groups/N/devices/BDF`;
//! - the root file system's controller: `proc/mounts`, then `sys/class/block`
//!   or `sys/block` (through device-mapper `slaves`);
//! - the default route's NIC: `proc/net/route`, `proc/net/ipv6_route`, `sys/class/net`
//!   (through bridge ports and bond/VLAN lower devices);
//! - names from `pci.ids` and `usb.ids` (`usr/share/misc` or `usr/share/hwdata`);
//! - USB devices from `sys/bus/usb/devices`.
//!
//! Passthrough is a last resort: VFIO hands a whole IOMMU group to the VM, so
//! a device is only safe to give away when its group holds nothing else the
//! host needs.

use phyllome_model::hostdev::PciAddress;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::Path;

use crate::facts::at;

fn read_trim(p: &Path) -> Option<String> {
    fs::read_to_string(p).ok().map(|s| s.trim().to_string())
}

fn parse_hex(text: &str) -> Option<u32> {
    u32::from_str_radix(text.trim().trim_start_matches("0x"), 16).ok()
}

fn link_name(p: &Path) -> Option<String> {
    fs::read_link(p).ok().and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
}

// ---------------------------------------------------------------------------
// pci.ids / usb.ids

/// A parsed `pci.ids` or `usb.ids` (same layout: vendors with indented
/// devices, then `C` class sections with indented subclasses).
#[derive(Debug, Default, Clone)]
pub struct IdDb {
    vendors: HashMap<u16, (String, HashMap<u16, String>)>,
    classes: HashMap<u8, (String, HashMap<u8, String>)>,
}

impl IdDb {
    pub fn parse(text: &str) -> IdDb {
        enum Section {
            Vendor(u16),
            Class(u8),
            Other,
        }
        let mut db = IdDb::default();
        let mut section = Section::Other;
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let depth = line.chars().take_while(|c| *c == '\t').count();
            let body = &line[depth..];
            let (id, name) = match body.split_once("  ") {
                Some((id, name)) => (id.trim(), name.trim().to_string()),
                None => (body.trim(), String::new()),
            };
            match depth {
                0 => {
                    section = if let Some(class) = id.strip_prefix("C ") {
                        match u8::from_str_radix(class.trim(), 16) {
                            Ok(c) => {
                                db.classes.insert(c, (name, HashMap::new()));
                                Section::Class(c)
                            }
                            Err(_) => Section::Other,
                        }
                    } else if id.len() == 4 {
                        match u16::from_str_radix(id, 16) {
                            Ok(v) => {
                                db.vendors.insert(v, (name, HashMap::new()));
                                Section::Vendor(v)
                            }
                            Err(_) => Section::Other,
                        }
                    } else {
                        // usb.ids' other tables (AT, HID, L, ...): not needed.
                        Section::Other
                    };
                }
                1 => match section {
                    Section::Vendor(v) => {
                        if let (Ok(d), Some(entry)) = (u16::from_str_radix(id, 16), db.vendors.get_mut(&v)) {
                            // The first entry wins (usb.ids repeats some IDs under later vendors' sections
                            // only when the file is malformed; be safe).
                            entry.1.entry(d).or_insert(name);
                        }
                    }
                    Section::Class(c) => {
                        if let (Ok(s), Some(entry)) = (u8::from_str_radix(id, 16), db.classes.get_mut(&c)) {
                            entry.1.entry(s).or_insert(name);
                        }
                    }
                    Section::Other => {}
                },
                // Subsystems and programming interfaces: not needed.
                _ => {}
            }
        }
        db
    }

    pub fn vendor(&self, vendor: u16) -> Option<&str> {
        self.vendors.get(&vendor).map(|v| v.0.as_str())
    }

    pub fn device(&self, vendor: u16, device: u16) -> Option<&str> {
        self.vendors.get(&vendor).and_then(|v| v.1.get(&device)).map(String::as_str)
    }

    /// The subclass name when known, else the class name.
    pub fn class(&self, class: u8, subclass: u8) -> Option<&str> {
        let c = self.classes.get(&class)?;
        Some(c.1.get(&subclass).map(String::as_str).unwrap_or(c.0.as_str()))
    }

    pub fn is_empty(&self) -> bool {
        self.vendors.is_empty()
    }
}

/// Where distributions keep the ID databases (Debian: misc, Fedora: hwdata).
fn load_ids(root: &Path, file: &str) -> IdDb {
    for dir in ["usr/share/misc", "usr/share/hwdata", "var/lib/usbutils"] {
        if let Ok(text) = fs::read_to_string(at(root, dir).join(file)) {
            return IdDb::parse(&text);
        }
    }
    IdDb::default()
}

pub fn load_pci_ids(root: &Path) -> IdDb {
    load_ids(root, "pci.ids")
}

pub fn load_usb_ids(root: &Path) -> IdDb {
    load_ids(root, "usb.ids")
}

// ---------------------------------------------------------------------------
// What the host cannot give away

/// Every PCI address in a sysfs path, outermost first (`.../0000:00:1d.0/0000:03:00.0/nvme/...`).
pub fn addresses_in_path(path: &str) -> Vec<PciAddress> {
    path.split('/').filter(|c| c.len() == 12).filter_map(|c| PciAddress::parse(c).ok()).collect()
}

/// The block device mounted at `/` (the last mount of `/` wins, as the kernel stacks them).
pub fn root_fs_device(mounts: &str) -> Option<String> {
    mounts.lines().rev().find_map(|l| {
        let mut f = l.split_whitespace();
        let (dev, mnt) = (f.next()?, f.next()?);
        (mnt == "/").then(|| dev.to_string())
    })
}

/// Strips a partition suffix: `nvme0n1p2` -> `nvme0n1`, `sda3` -> `sda`, `mmcblk0p1` -> `mmcblk0`.
fn whole_disk(name: &str) -> Option<&str> {
    let base = name.trim_end_matches(|c: char| c.is_ascii_digit());
    if base.len() == name.len() {
        return None;
    }
    match base.strip_suffix('p') {
        Some(b) if b.ends_with(|c: char| c.is_ascii_digit()) => Some(b),
        _ => Some(base),
    }
}

/// The sysfs link text of a block device (`sys/class/block/NAME`, else `sys/block/NAME`
/// or its whole disk); fixtures may hold these links dangling.
fn block_link(root: &Path, name: &str) -> Option<String> {
    let mut candidates = vec![at(root, "sys/class/block").join(name), at(root, "sys/block").join(name)];
    if let Some(disk) = whole_disk(name) {
        candidates.push(at(root, "sys/block").join(disk));
    }
    candidates.iter().find_map(|p| fs::read_link(p).ok()).map(|t| t.to_string_lossy().into_owned())
}

/// `dm-N` for a device-mapper name (`/dev/mapper/NAME`).
fn dm_by_name(root: &Path, name: &str) -> Option<String> {
    fs::read_dir(at(root, "sys/block"))
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("dm-"))
        .find(|n| read_trim(&at(root, "sys/block").join(n).join("dm/name")).as_deref() == Some(name))
}

/// The PCI controllers under a block device, following device-mapper layers (LUKS, LVM) down.
fn block_controllers(root: &Path, name: &str, depth: usize, out: &mut BTreeSet<PciAddress>) {
    if depth > 8 {
        return;
    }
    // Every disk has a `slaves` directory; only device-mapper and md devices have entries in it.
    let slaves: Vec<String> = fs::read_dir(at(root, "sys/block").join(name).join("slaves"))
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    if !slaves.is_empty() {
        for s in slaves {
            block_controllers(root, &s, depth + 1, out);
        }
        return;
    }
    if let Some(link) = block_link(root, name) {
        // The last PCI address is the controller; the ones before are the bridges to it.
        if let Some(a) = addresses_in_path(&link).last() {
            out.insert(*a);
        }
    }
}

/// The PCI controller(s) of the root file system, and the device it is mounted from.
pub fn root_fs_controllers(root: &Path) -> (Option<String>, BTreeSet<PciAddress>) {
    let mut out = BTreeSet::new();
    let Some(dev) = fs::read_to_string(at(root, "proc/mounts")).ok().and_then(|m| root_fs_device(&m)) else {
        return (None, out);
    };
    let name = if let Some(mapped) = dev.strip_prefix("/dev/mapper/") {
        dm_by_name(root, mapped)
    } else {
        dev.strip_prefix("/dev/").map(str::to_string)
    };
    if let Some(name) = name {
        block_controllers(root, &name, 0, &mut out);
    }
    (Some(dev), out)
}

/// Interfaces carrying a default route, from `/proc/net/route` and `/proc/net/ipv6_route`.
pub fn default_route_interfaces(route: &str, ipv6_route: &str) -> Vec<String> {
    let mut ifaces = Vec::new();
    for line in route.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        // Iface Destination Gateway Flags RefCnt Use Metric Mask ...; flag 0x1 = up.
        if f.len() >= 8 && f[1] == "00000000" && f[7] == "00000000" {
            let up = u32::from_str_radix(f[3], 16).map(|fl| fl & 1 == 1).unwrap_or(true);
            if up && !ifaces.contains(&f[0].to_string()) {
                ifaces.push(f[0].to_string());
            }
        }
    }
    for line in ipv6_route.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        // dest prefixlen src srcprefixlen nexthop metric refcnt use flags iface
        if f.len() == 10 && f[0].chars().all(|c| c == '0') && f[1] == "00" && f[9] != "lo" {
            let iface = f[9].to_string();
            if !ifaces.contains(&iface) {
                ifaces.push(iface);
            }
        }
    }
    ifaces
}

/// The PCI NICs behind an interface (through bridge ports, bonds and VLANs).
fn nic_addresses(root: &Path, iface: &str, depth: usize, out: &mut BTreeSet<PciAddress>) {
    if depth > 8 {
        return;
    }
    let dir = at(root, "sys/class/net").join(iface);
    if let Some(a) = fs::read_link(&dir).ok().and_then(|t| addresses_in_path(&t.to_string_lossy()).last().copied()) {
        out.insert(a);
        return;
    }
    if let Some(a) =
        fs::read_link(dir.join("device")).ok().and_then(|t| addresses_in_path(&t.to_string_lossy()).last().copied())
    {
        out.insert(a);
        return;
    }
    let mut lower: Vec<String> = fs::read_dir(dir.join("brif"))
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    if let Ok(rd) = fs::read_dir(&dir) {
        lower.extend(
            rd.flatten().filter_map(|e| e.file_name().to_string_lossy().strip_prefix("lower_").map(str::to_string)),
        );
    }
    for l in lower {
        nic_addresses(root, &l, depth + 1, out);
    }
}

/// The NICs carrying the default route: (interface, PCI address).
pub fn default_route_nics(root: &Path) -> Vec<(String, PciAddress)> {
    let route = fs::read_to_string(at(root, "proc/net/route")).unwrap_or_default();
    let v6 = fs::read_to_string(at(root, "proc/net/ipv6_route")).unwrap_or_default();
    let mut out = Vec::new();
    for iface in default_route_interfaces(&route, &v6) {
        let mut addrs = BTreeSet::new();
        nic_addresses(root, &iface, 0, &mut addrs);
        out.extend(addrs.into_iter().map(|a| (iface.clone(), a)));
    }
    out
}

// ---------------------------------------------------------------------------
// PCI

/// Whether a PCI device can be given to a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Its IOMMU group holds only this device, its other functions and bridges, none host-critical.
    Isolated,
    /// Its IOMMU group holds other devices, which would leave the host with it.
    Shared,
    /// The host needs it: the boot VGA, the root file system's controller, the default route's NIC.
    HostCritical,
    /// No IOMMU group: the IOMMU is off, so nothing can be passed through.
    NoIommu,
    /// A host or PCI bridge: it stays with the host (VFIO allows that) and is never passed through itself.
    Bridge,
}

impl Verdict {
    pub fn as_str(&self) -> &'static str {
        match self {
            Verdict::Isolated => "isolated",
            Verdict::Shared => "shared",
            Verdict::HostCritical => "host-critical",
            Verdict::NoIommu => "no-iommu",
            Verdict::Bridge => "bridge",
        }
    }
}

/// How another member of a device's IOMMU group relates to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Relation {
    /// Another function of the same physical device (e.g. a GPU's HDMI audio).
    Function,
    /// A PCI bridge or host bridge: stays with the host, harmless to VFIO.
    Bridge,
    /// An unrelated device that would have to leave the host too.
    Device,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupPeer {
    pub address: PciAddress,
    pub description: String,
    pub relation: Relation,
    /// Why the host needs this peer, if it does.
    pub host_critical: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PciDevice {
    pub address: PciAddress,
    /// Hex IDs as lspci prints them (`10de`, `2684`, `030000`).
    pub vendor_id: String,
    pub device_id: String,
    pub class: String,
    pub vendor: String,
    pub device: String,
    pub class_name: String,
    pub driver: Option<String>,
    pub iommu_group: Option<u32>,
    pub boot_vga: bool,
    pub verdict: Verdict,
    /// Why the host needs this device (empty unless host-critical).
    pub host_critical: Vec<String>,
    /// The other members of its IOMMU group.
    pub group: Vec<GroupPeer>,
}

impl PciDevice {
    /// `Vendor Device (class)`, for listings and messages.
    pub fn description(&self) -> String {
        format!("{}: {} {}", self.class_name, self.vendor, self.device)
    }

    fn class_code(&self) -> u32 {
        parse_hex(&self.class).unwrap_or(0)
    }

    /// A host bridge or PCI-to-PCI bridge.
    pub fn is_bridge(&self) -> bool {
        is_bridge_class(self.class_code())
    }

    /// Members of the group that are not this device's functions or bridges.
    pub fn shared_with(&self) -> impl Iterator<Item = &GroupPeer> {
        self.group.iter().filter(|p| p.relation == Relation::Device)
    }

    /// Group members that must go to the VM with it (its other functions and unrelated devices).
    pub fn companions(&self) -> impl Iterator<Item = &GroupPeer> {
        self.group.iter().filter(|p| p.relation != Relation::Bridge)
    }

    /// One line saying why the verdict is what it is.
    pub fn verdict_detail(&self) -> String {
        let peer_list = |peers: Vec<&GroupPeer>| {
            peers
                .iter()
                .map(|p| {
                    let critical = if p.host_critical.is_empty() {
                        String::new()
                    } else {
                        format!(", host-critical: {}", p.host_critical.join("; "))
                    };
                    format!("{} ({}{critical})", p.address, p.description)
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self.verdict {
            Verdict::HostCritical => format!("the host needs it: {}", self.host_critical.join("; ")),
            Verdict::NoIommu => "no IOMMU group: the IOMMU is off, nothing can be passed through".into(),
            Verdict::Bridge => "a bridge stays with the host; pass through the devices behind it".into(),
            Verdict::Shared => {
                let mut peers: Vec<&GroupPeer> = self.shared_with().collect();
                peers.extend(
                    self.group.iter().filter(|p| p.relation == Relation::Function && !p.host_critical.is_empty()),
                );
                format!("IOMMU group {} also holds {}", self.iommu_group.unwrap_or(0), peer_list(peers))
            }
            Verdict::Isolated => {
                let functions: Vec<&GroupPeer> =
                    self.group.iter().filter(|p| p.relation == Relation::Function).collect();
                if functions.is_empty() {
                    format!("alone in IOMMU group {}", self.iommu_group.unwrap_or(0))
                } else {
                    format!(
                        "IOMMU group {} holds only its other functions, which go with it: {}",
                        self.iommu_group.unwrap_or(0),
                        peer_list(functions)
                    )
                }
            }
        }
    }
}

/// What the host loses when a device it needs goes to a VM, from the reason [`read_pci`] gives.
pub fn consequence(reason: &str) -> &'static str {
    if reason.starts_with("boot VGA") {
        "the host's screen goes dark"
    } else if reason.starts_with("controller of the root") {
        "the host loses its root file system and freezes"
    } else if reason.starts_with("NIC of the default route") {
        "the host loses its network connection"
    } else {
        "the host loses a device it needs"
    }
}

fn is_bridge_class(class: u32) -> bool {
    // 0x0600 host bridge, 0x0604 PCI bridge, 0x0609 semi-transparent PCI bridge.
    matches!(class >> 8, 0x0600 | 0x0604 | 0x0609)
}

/// The pure part of the verdict: given the device's own reasons, whether it is a bridge, and its group.
pub fn verdict(group: Option<u32>, own_critical: &[String], bridge: bool, peers: &[GroupPeer]) -> Verdict {
    if !own_critical.is_empty() {
        return Verdict::HostCritical;
    }
    if bridge {
        return Verdict::Bridge;
    }
    if group.is_none() {
        return Verdict::NoIommu;
    }
    let clean = peers.iter().all(|p| match p.relation {
        Relation::Bridge => true,
        Relation::Function => p.host_critical.is_empty(),
        Relation::Device => false,
    });
    if clean {
        Verdict::Isolated
    } else {
        Verdict::Shared
    }
}

/// Every PCI device, with names, drivers, groups and verdicts, sorted by address.
pub fn read_pci(root: &Path) -> Vec<PciDevice> {
    read_pci_with(root, &load_pci_ids(root))
}

/// The IOMMU groups: group number -> member addresses.
pub fn iommu_groups(root: &Path) -> BTreeMap<u32, Vec<PciAddress>> {
    let mut groups = BTreeMap::new();
    let Ok(rd) = fs::read_dir(at(root, "sys/kernel/iommu_groups")) else {
        return groups;
    };
    for e in rd.flatten() {
        let Ok(n) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let mut members: Vec<PciAddress> = fs::read_dir(e.path().join("devices"))
            .map(|rd| rd.flatten().filter_map(|d| PciAddress::parse(&d.file_name().to_string_lossy()).ok()).collect())
            .unwrap_or_default();
        members.sort();
        groups.insert(n, members);
    }
    groups
}

struct RawPci {
    address: PciAddress,
    vendor: u16,
    device: u16,
    class: u32,
    driver: Option<String>,
    group: Option<u32>,
    boot_vga: bool,
}

fn read_raw_pci(root: &Path) -> Vec<RawPci> {
    let dir = at(root, "sys/bus/pci/devices");
    let mut out: Vec<RawPci> = fs::read_dir(&dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let address = PciAddress::parse(&e.file_name().to_string_lossy()).ok()?;
                    let p = e.path();
                    let hex = |f: &str| read_trim(&p.join(f)).and_then(|t| parse_hex(&t));
                    Some(RawPci {
                        address,
                        vendor: hex("vendor").unwrap_or(0xffff) as u16,
                        device: hex("device").unwrap_or(0xffff) as u16,
                        class: hex("class").unwrap_or(0),
                        driver: link_name(&p.join("driver")),
                        group: link_name(&p.join("iommu_group")).and_then(|g| g.parse().ok()),
                        boot_vga: read_trim(&p.join("boot_vga")).as_deref() == Some("1"),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort_by_key(|d| d.address);
    out
}

fn describe(ids: &IdDb, vendor: u16, device: u16, class: u32) -> (String, String, String) {
    let vendor_name = ids.vendor(vendor).map(str::to_string).unwrap_or_else(|| format!("Vendor {vendor:04x}"));
    let device_name = ids.device(vendor, device).map(str::to_string).unwrap_or_else(|| format!("Device {device:04x}"));
    let class_name = ids
        .class((class >> 16) as u8, (class >> 8) as u8)
        .map(str::to_string)
        .unwrap_or_else(|| format!("Class {:04x}", class >> 8));
    (vendor_name, device_name, class_name)
}

pub fn read_pci_with(root: &Path, ids: &IdDb) -> Vec<PciDevice> {
    let raw = read_raw_pci(root);
    let groups = iommu_groups(root);
    // The group of each address: from iommu_groups, else the device's own link.
    let mut group_of: HashMap<PciAddress, u32> = HashMap::new();
    for (n, members) in &groups {
        for a in members {
            group_of.insert(*a, *n);
        }
    }
    for r in &raw {
        if let Some(g) = r.group {
            group_of.entry(r.address).or_insert(g);
        }
    }

    // Why the host needs each device.
    let mut critical: HashMap<PciAddress, Vec<String>> = HashMap::new();
    for r in raw.iter().filter(|r| r.boot_vga) {
        critical.entry(r.address).or_default().push("boot VGA: the host's console and display".into());
    }
    let (root_dev, controllers) = root_fs_controllers(root);
    for a in controllers {
        critical
            .entry(a)
            .or_default()
            .push(format!("controller of the root file system ({})", root_dev.as_deref().unwrap_or("/")));
    }
    for (iface, a) in default_route_nics(root) {
        critical.entry(a).or_default().push(format!("NIC of the default route ({iface})"));
    }

    let by_addr: HashMap<PciAddress, &RawPci> = raw.iter().map(|r| (r.address, r)).collect();
    let short = |a: &PciAddress| -> String {
        match by_addr.get(a) {
            Some(r) => {
                let (v, d, c) = describe(ids, r.vendor, r.device, r.class);
                format!("{c}: {v} {d}")
            }
            None => "not in sys/bus/pci/devices".into(),
        }
    };

    raw.iter()
        .map(|r| {
            let group = group_of.get(&r.address).copied();
            let members: Vec<PciAddress> = group.and_then(|g| groups.get(&g).cloned()).unwrap_or_default();
            let peers: Vec<GroupPeer> = members
                .iter()
                .filter(|a| **a != r.address)
                .map(|a| {
                    let relation = if a.same_slot(&r.address) {
                        Relation::Function
                    } else if by_addr.get(a).is_some_and(|p| is_bridge_class(p.class)) {
                        Relation::Bridge
                    } else {
                        Relation::Device
                    };
                    GroupPeer {
                        address: *a,
                        description: short(a),
                        relation,
                        host_critical: critical.get(a).cloned().unwrap_or_default(),
                    }
                })
                .collect();
            let own = critical.get(&r.address).cloned().unwrap_or_default();
            let (vendor, device, class_name) = describe(ids, r.vendor, r.device, r.class);
            PciDevice {
                address: r.address,
                vendor_id: format!("{:04x}", r.vendor),
                device_id: format!("{:04x}", r.device),
                class: format!("{:06x}", r.class),
                vendor,
                device,
                class_name,
                driver: r.driver.clone(),
                iommu_group: group,
                boot_vga: r.boot_vga,
                verdict: verdict(group, &own, is_bridge_class(r.class), &peers),
                host_critical: own,
                group: peers,
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------
// USB

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsbDevice {
    /// sysfs name: bus, then the port path (`3-1`, `1-1.2`).
    pub bus_path: String,
    pub bus: u32,
    pub device_number: u32,
    pub vendor_id: String,
    pub product_id: String,
    pub vendor: String,
    pub product: String,
}

impl UsbDevice {
    /// The name `phyllome attach` takes.
    pub fn spec(&self) -> String {
        format!("usb:{}:{}", self.vendor_id, self.product_id)
    }
}

/// USB devices (not root hubs, not interfaces), sorted by bus path.
pub fn read_usb(root: &Path) -> Vec<UsbDevice> {
    let ids = load_usb_ids(root);
    let Ok(rd) = fs::read_dir(at(root, "sys/bus/usb/devices")) else {
        return Vec::new();
    };
    let mut out: Vec<UsbDevice> = rd
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            // Root hubs are `usbN`; interfaces are `BUS-PORT:CONFIG.IF`.
            if name.starts_with("usb") || name.contains(':') {
                return None;
            }
            let p = e.path();
            let vendor_num = read_trim(&p.join("idVendor")).and_then(|t| parse_hex(&t))? as u16;
            let product_num = read_trim(&p.join("idProduct")).and_then(|t| parse_hex(&t))? as u16;
            let num = |f: &str| read_trim(&p.join(f)).and_then(|t| t.parse().ok()).unwrap_or(0);
            let vendor = ids
                .vendor(vendor_num)
                .map(str::to_string)
                .or_else(|| read_trim(&p.join("manufacturer")))
                .unwrap_or_else(|| format!("Vendor {vendor_num:04x}"));
            let product = ids
                .device(vendor_num, product_num)
                .map(str::to_string)
                .or_else(|| read_trim(&p.join("product")))
                .unwrap_or_else(|| format!("Device {product_num:04x}"));
            Some(UsbDevice {
                bus: num("busnum"),
                device_number: num("devnum"),
                vendor_id: format!("{vendor_num:04x}"),
                product_id: format!("{product_num:04x}"),
                vendor,
                product,
                bus_path: name,
            })
        })
        .collect();
    out.sort_by_key(|u| natural_key(&u.bus_path));
    out
}

/// `3-10` after `3-6`: compare the numbers in a bus path, not the text.
fn natural_key(path: &str) -> Vec<u32> {
    path.split(['-', '.']).map(|p| p.parse().unwrap_or(u32::MAX)).collect()
}

/// Everything `phyllome devices` shows.
#[derive(Debug, Clone, Serialize)]
pub struct Inventory {
    /// How many IOMMU groups the kernel made (0: the IOMMU is off).
    pub iommu_groups: usize,
    pub pci: Vec<PciDevice>,
    pub usb: Vec<UsbDevice>,
}

pub fn read_devices(root: &Path) -> Inventory {
    Inventory { iommu_groups: iommu_groups(root).len(), pci: read_pci(root), usb: read_usb(root) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDS: &str = "# comment\n10de  NVIDIA Corporation\n\t2684  AD102 [GeForce RTX 4090]\n\t\t1043 889d  ROG\n\
                       1af4  Red Hat, Inc.\n\t1041  Virtio 1.0 network device\n\
                       C 03  Display controller\n\t00  VGA compatible controller\n\t\t00  VGA controller\n\
                       C 06  Bridge\n\t04  PCI bridge\nHID  Descriptor\n\t21  HID\n";

    #[test]
    fn id_database_names_vendors_devices_and_classes() {
        let db = IdDb::parse(IDS);
        assert_eq!(db.vendor(0x10de), Some("NVIDIA Corporation"));
        assert_eq!(db.device(0x10de, 0x2684), Some("AD102 [GeForce RTX 4090]"));
        assert_eq!(db.device(0x1af4, 0x1041), Some("Virtio 1.0 network device"));
        assert_eq!(db.class(0x03, 0x00), Some("VGA compatible controller"));
        assert_eq!(db.class(0x03, 0x80), Some("Display controller"), "unknown subclass falls back to the class");
        assert_eq!(db.class(0x06, 0x04), Some("PCI bridge"));
        assert_eq!(db.vendor(0x0021), None, "usb.ids' HID table is not a vendor");
        assert_eq!(describe(&db, 0x8086, 0x0d57, 0x060000).0, "Vendor 8086");
        assert_eq!(describe(&db, 0x10de, 0x1234, 0x0c0330).1, "Device 1234");
    }

    #[test]
    fn pci_addresses_in_sysfs_paths() {
        let p = "../devices/pci0000:00/0000:00:1d.0/0000:03:00.0/nvme/nvme0/nvme0n1";
        let a = addresses_in_path(p);
        assert_eq!(a.iter().map(|a| a.to_string()).collect::<Vec<_>>(), ["0000:00:1d.0", "0000:03:00.0"]);
        assert!(addresses_in_path("../devices/virtual/net/br0").is_empty());
    }

    #[test]
    fn root_device_and_partitions() {
        let mounts = "rootfs / rootfs rw 0 0\n/dev/nvme0n1p2 / ext4 rw 0 0\nproc /proc proc rw 0 0\n";
        assert_eq!(root_fs_device(mounts).as_deref(), Some("/dev/nvme0n1p2"));
        assert_eq!(whole_disk("nvme0n1p2"), Some("nvme0n1"));
        assert_eq!(whole_disk("sda3"), Some("sda"));
        assert_eq!(whole_disk("mmcblk0p1"), Some("mmcblk0"));
        assert_eq!(whole_disk("vda"), None);
    }

    #[test]
    fn default_routes_v4_and_v6() {
        let v4 = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n\
                  eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                  eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(default_route_interfaces(v4, ""), ["eth0"]);
        let v6 = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00450003   wlan0\n\
                  00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo\n";
        assert_eq!(default_route_interfaces("", v6), ["wlan0"]);
    }

    fn peer(relation: Relation, critical: bool) -> GroupPeer {
        GroupPeer {
            address: PciAddress::parse("0000:00:01.0").unwrap(),
            description: String::new(),
            relation,
            host_critical: if critical { vec!["x".into()] } else { vec![] },
        }
    }

    #[test]
    fn verdict_rules() {
        let none: [String; 0] = [];
        let alone: [GroupPeer; 0] = [];
        assert_eq!(verdict(Some(1), &none, false, &alone), Verdict::Isolated);
        assert_eq!(verdict(None, &none, false, &alone), Verdict::NoIommu);
        assert_eq!(verdict(None, &["boot VGA".into()], false, &alone), Verdict::HostCritical);
        assert_eq!(verdict(Some(1), &none, true, &[peer(Relation::Device, false)]), Verdict::Bridge);
        let ok = [peer(Relation::Bridge, false), peer(Relation::Function, false)];
        assert_eq!(verdict(Some(1), &none, false, &ok), Verdict::Isolated);
        assert_eq!(verdict(Some(1), &none, false, &[peer(Relation::Device, false)]), Verdict::Shared);
        // A function the host needs (a boot GPU's audio function) keeps the group from being isolated.
        assert_eq!(verdict(Some(1), &none, false, &[peer(Relation::Function, true)]), Verdict::Shared);
    }

    #[test]
    fn whole_disk_with_an_empty_slaves_directory() {
        // Real disks have an empty `slaves` directory; only device-mapper devices have entries.
        let root = std::env::temp_dir().join(format!("phyllome-devices-slaves-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("sys/block/vda/slaves")).unwrap();
        fs::create_dir_all(root.join("sys/class/block")).unwrap();
        fs::create_dir_all(root.join("proc")).unwrap();
        fs::write(root.join("proc/mounts"), "/dev/vda / ext4 rw 0 0\n").unwrap();
        std::os::unix::fs::symlink(
            "../../devices/pci0000:00/0000:00:02.0/virtio1/block/vda",
            root.join("sys/class/block/vda"),
        )
        .unwrap();
        let (dev, found) = root_fs_controllers(&root);
        assert_eq!(dev.as_deref(), Some("/dev/vda"));
        assert_eq!(found.into_iter().map(|a| a.to_string()).collect::<Vec<_>>(), ["0000:00:02.0"]);
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn usb_paths_sort_numerically() {
        let mut v = vec!["3-10", "3-6", "1-1.2", "1-1"];
        v.sort_by_key(|p| natural_key(p));
        assert_eq!(v, ["1-1", "1-1.2", "3-6", "3-10"]);
    }
}

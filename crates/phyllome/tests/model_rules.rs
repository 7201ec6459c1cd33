//! The model's host-dependent rules, checked on recorded hosts: what changes
//! between KVM and TCG, what a missing piece of the host does, and how bad
//! input is refused.

use phyllome_engine::model::build::{build, BuildError, NetworkChoice, Request};
use phyllome_engine::model::catalog::Bus;
use phyllome_engine::model::host::KvmState;
use phyllome_engine::model::input::InputError;
use phyllome_engine::model::Host;
use phyllome_engine::vm::disk_ref;
use std::path::Path;

fn host(name: &str) -> Host {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/hosts").join(name);
    phyllome_host::fixture::load(&dir).unwrap()
}

fn req(os: &str) -> Request {
    Request {
        os: os.into(),
        name: "vm1".into(),
        network: NetworkChoice::None,
        disk: Some(disk_ref("vm1", "phyllome", "/pool", phyllome_engine::model::Encryption::Secret)),
        version: "test".into(),
        ..Default::default()
    }
}

fn xml(r: &Request, h: &Host) -> String {
    build(r, h).unwrap().domain.to_xml()
}

#[test]
fn tcg_host_gets_a_qemu_domain_with_maximum_cpu() {
    let x = xml(&req("linux"), &host("debian12-tcg"));
    assert!(x.starts_with("<domain type='qemu'>"), "{x}");
    assert!(x.contains("<cpu mode='maximum'"));
    assert!(!x.contains("kvmclock"));
}

#[test]
fn kvm_host_gets_kvm_with_host_model_and_kvmclock() {
    let x = xml(&req("linux"), &host("amd-kvm"));
    assert!(x.starts_with("<domain type='kvm'>"));
    assert!(x.contains("<cpu mode='host-model' check='partial'>"));
    assert!(x.contains("<timer name='kvmclock' present='yes'/>"));
}

#[test]
fn broken_kvm_falls_back_to_tcg_even_if_libvirt_offers_kvm() {
    let mut h = host("amd-kvm");
    h.facts.kvm = KvmState::Broken;
    let plan = build(&req("windows11"), &h).unwrap();
    let x = plan.domain.to_xml();
    assert!(x.starts_with("<domain type='qemu'>"));
    assert!(!x.contains("hypervclock") && !x.contains("<relaxed"), "KVM-only enlightenments under TCG");
    assert!(plan.warnings.iter().any(|w| w.contains("no usable KVM")));
}

#[test]
fn windows11_on_kvm_gets_enlightenments_secure_boot_tpm_and_no_balloon() {
    let x = xml(&req("windows11"), &host("intel-kvm-rendernode"));
    for want in [
        "<feature enabled='yes' name='secure-boot'/>",
        "<feature enabled='yes' name='enrolled-keys'/>",
        "<smm state='on'/>",
        "<tpm model='tpm-crb'>",
        "<backend type='emulator' version='2.0'/>",
        "<relaxed state='on'/>",
        "<spinlocks state='on' retries='8191'/>",
        "<stimer state='on'>",
        "<clock offset='localtime'>",
        "<timer name='hypervclock' present='yes'/>",
        "<memballoon model='none'/>",
        "<topology sockets='1' dies='1' cores='4' threads='1'/>",
    ] {
        assert!(x.contains(want), "missing {want}");
    }
}

#[test]
fn windows11_without_secure_boot_firmware_or_swtpm_is_refused_with_the_fix() {
    let e = build(&req("windows11"), &host("intel-kvm-no-secboot-no-swtpm")).unwrap_err();
    assert!(matches!(e, BuildError::NoSecureBootFirmware { .. }));
    assert!(e.to_string().contains("apt install ovmf"));
    let mut h = host("amd-kvm");
    h.facts.swtpm = false;
    let e = build(&req("windows11"), &h).unwrap_err();
    assert!(matches!(e, BuildError::NoTpm { .. }), "{e}");
    assert!(e.to_string().contains("swtpm"));
}

#[test]
fn windows10_degrades_with_warnings_where_windows11_refuses() {
    let plan = build(&req("windows10"), &host("intel-kvm-no-secboot-no-swtpm")).unwrap();
    let x = plan.domain.to_xml();
    assert!(x.contains("<feature enabled='no' name='secure-boot'/>"));
    assert!(!x.contains("<tpm"));
    assert!(plan.warnings.iter().any(|w| w.contains("secure boot")));
    assert!(plan.warnings.iter().any(|w| w.contains("no TPM")));
}

#[test]
fn linux_secure_boot_on_request_only() {
    let h = host("amd-kvm");
    assert!(xml(&req("linux"), &h).contains("<feature enabled='no' name='secure-boot'/>"));
    let r = Request { secure_boot: true, ..req("linux") };
    assert!(xml(&r, &h).contains("<feature enabled='yes' name='secure-boot'/>"));
    let e = build(&r, &host("intel-kvm-no-secboot-no-swtpm")).unwrap_err();
    assert!(matches!(e, BuildError::NoSecureBootFirmware { .. }));
}

#[test]
fn virgl_only_with_a_render_node_and_gl_modules() {
    let x = xml(&req("linux"), &host("intel-kvm-rendernode"));
    assert!(x.contains("<acceleration accel3d='yes'/>") && x.contains("rendernode='/dev/dri/renderD128'"));
    let mut h = host("intel-kvm-rendernode");
    h.facts.virgl = false;
    assert!(!xml(&req("linux"), &h).contains("accel3d"));
    assert!(!xml(&req("linux"), &host("amd-kvm")).contains("accel3d"));
    // Windows has no virtio 3D driver: never 3D.
    assert!(!xml(&req("windows11"), &host("intel-kvm-rendernode")).contains("accel3d"));
}

#[test]
fn linux_sound_is_hd_audio_so_its_memory_can_be_saved() {
    // QEMU refuses to save virtio-sound's state: a VM with it has no memory snapshots, save or live
    // migration. Every host gets ich9, with the reason.
    for h in ["amd-kvm", "intel-kvm-rendernode", "debian12-tcg", "debian12-backports-tcg"] {
        assert!(xml(&req("linux"), &host(h)).contains("<sound model='ich9'/>"), "{h}");
    }
    let plan = build(&req("linux"), &host("amd-kvm")).unwrap();
    let why = &plan.choices.iter().find(|c| c.item == "sound").unwrap().why;
    assert!(why.contains("QEMU cannot save its state"), "{why}");
    // Windows keeps ich9 (no in-box virtio-sound driver) everywhere.
    assert!(xml(&req("windows11"), &host("debian12-backports-tcg")).contains("<sound model='ich9'/>"));
}

#[test]
fn uefi_vms_get_a_qcow2_nvram_only_where_libvirt_snapshots_with_it() {
    let new = xml(&req("windows11"), &host("debian12-backports-tcg"));
    assert!(new.contains("<loader secure='yes' format='raw'/>"), "{new}");
    assert!(new.contains("<nvram format='qcow2'>/var/lib/libvirt/qemu/nvram/vm1_VARS.qcow2</nvram>"), "{new}");
    let old = xml(&req("windows11"), &host("debian12-tcg"));
    assert!(!old.contains("<nvram") && old.contains("<loader secure='yes'/>"), "{old}");
    // 10.9 takes UEFI snapshots but cannot revert them: still raw.
    let mut h = host("debian12-backports-tcg");
    h.facts.platform.libvirt = "10.9.0".into();
    assert!(!xml(&req("linux"), &h).contains("<nvram"));
    // BIOS guests have no variable store at all.
    assert!(!xml(&req("legacy"), &host("debian12-backports-tcg")).contains("<nvram"));
}

#[test]
fn windows_drivers_iso_and_sata_install_option() {
    let h = host("amd-kvm");
    // No virtio-win ISO: setup could not see a virtio disk, so the disk is SATA, and the warning says how to do better.
    let plan = build(&req("windows11"), &h).unwrap();
    assert!(plan.domain.to_xml().contains("<target dev='sda' bus='sata'/>"), "{}", plan.domain.to_xml());
    assert!(plan.warnings.iter().any(|w| w.contains("the disk is SATA") && w.contains("--drivers")));
    let disk = plan.choices.iter().find(|c| c.item == "disk").unwrap();
    assert!(disk.choice.starts_with("SATA") && disk.why.contains("no virtio-win driver ISO"), "{disk:?}");
    // Asked for virtio anyway: the user's choice stands, with the warning.
    let plan = build(&Request { disk_bus: Some(Bus::Virtio), ..req("windows11") }, &h).unwrap();
    assert!(plan.domain.to_xml().contains("<target dev='vda' bus='virtio'/>"));
    assert!(plan.warnings.iter().any(|w| w.contains("will not see the disk")));
    let r = Request {
        drivers: Some("/isos/virtio-win.iso".into()),
        iso: Some("/isos/win11.iso".into()),
        ..req("windows11")
    };
    let plan = build(&r, &h).unwrap();
    assert!(plan.warnings.iter().all(|w| !w.contains("virtio-win")));
    let x = plan.domain.to_xml();
    assert!(x.contains("<source file='/isos/virtio-win.iso'>") && x.contains("<target dev='sdb' bus='sata'/>"));
    // Both read-only CDs are given as they are: libvirt must not chown the user's files.
    assert_eq!(x.matches("<seclabel model='dac' relabel='no'/>").count(), 2, "{x}");
    let r = Request { disk_bus: Some(Bus::Sata), ..req("windows11") };
    let plan = build(&r, &h).unwrap();
    assert!(plan.domain.to_xml().contains("<target dev='sda' bus='sata'/>"));
    assert!(plan.warnings.iter().all(|w| !w.contains("virtio-win")));
    let mut found = h.clone();
    found.facts.virtio_win_iso = Some("/usr/share/virtio-win/virtio-win.iso".into());
    assert!(xml(&req("windows10"), &found).contains("/usr/share/virtio-win/virtio-win.iso"));
}

#[test]
fn sizes_say_their_unit_and_are_never_rounded_silently() {
    let h = host("debian12-backports-tcg");
    let with = |memory: Option<&str>, disk: Option<&str>, force: bool| {
        build(
            &Request { memory: memory.map(str::to_string), disk_size: disk.map(str::to_string), force, ..req("linux") },
            &h,
        )
    };
    // A bare number meant MiB for memory and GiB for disks: now it is refused, naming the units.
    for (m, d) in [(Some("512"), None), (None, Some("64"))] {
        let e = with(m, d, false).unwrap_err().to_string();
        assert!(e.contains("has no unit") && e.contains("GB, TB (powers of 1000)"), "{e}");
    }
    // GB is 10^9 bytes: 64GB is not a whole number of GiB, and the error says what to write.
    let e = with(None, Some("64GB"), false).unwrap_err().to_string();
    assert_eq!(e, "disks are made in whole GiB: 64GB is 59.60 GiB; say 59G or 60G");
    let e = with(None, Some("1.5G"), false).unwrap_err().to_string();
    assert!(e.contains("1.5G is 1.50 GiB; say 1G or 2G"), "{e}");
    assert_eq!(with(Some("1.5G"), None, false).unwrap().domain.memory_mib, 1536);
    assert!(with(Some("4GB"), None, false).unwrap_err().to_string().contains("whole MiB"));
    // The OS's minimum disk is advice: --force makes a 2 GiB Linux disk, with a warning.
    let e = with(None, Some("2G"), false).unwrap_err().to_string();
    assert!(e.contains("usually needs a disk of at least 4 GiB") && e.contains("--force"), "{e}");
    let plan = with(None, Some("2G"), true).unwrap();
    assert_eq!(plan.disk_gib, 2);
    assert!(plan.warnings.iter().any(|w| w.contains("--force was given")), "{:?}", plan.warnings);
}

#[test]
fn the_vcpu_explanation_matches_what_the_vm_gets() {
    // Two host CPUs: Windows 11 needs two, which is all of them, not half.
    let plan = build(&req("windows11"), &host("debian12-tcg")).unwrap();
    let c = plan.choices.iter().find(|c| c.item == "vcpus").unwrap();
    assert_eq!(plan.domain.vcpus, 2);
    assert!(c.why.contains("needs at least 2, more than half of the host's 2"), "{c:?}");
    let plan = build(&req("linux"), &host("debian12-tcg")).unwrap();
    let c = plan.choices.iter().find(|c| c.item == "vcpus").unwrap();
    assert_eq!((plan.domain.vcpus, c.why.as_str()), (1, "half of the host's 2 logical CPUs (--cpus to change)"));
}

#[test]
fn macos_needs_the_users_opencore_and_osk() {
    let h = host("amd-kvm");
    assert_eq!(build(&req("macos"), &h).unwrap_err(), BuildError::MissingOpenCore);
    let r = Request { opencore: Some("/oc/OpenCore.qcow2".into()), ..req("macos") };
    assert_eq!(build(&r, &h).unwrap_err(), BuildError::MissingOsk);
    let r = Request { osk: Some("short".into()), ..r };
    assert_eq!(build(&r, &h).unwrap_err(), BuildError::BadOsk(5));
    let r = Request { osk: Some("k".repeat(64)), ..r };
    let x = xml(&r, &h);
    assert!(x.contains("isa-applesmc,osk=") && x.contains("<model fallback='forbid'>Haswell-noTSX</model>"));
    assert!(x.contains("<source file='/oc/OpenCore.qcow2'/>"));
    // OpenCore and osk are refused for other guests.
    let r = Request { opencore: Some("/oc.img".into()), ..req("linux") };
    assert!(matches!(build(&r, &h), Err(BuildError::OptionNotForOs("opencore", _))));
}

#[test]
fn legacy_gets_i440fx_bios_ide_e1000() {
    let r = Request { network: NetworkChoice::User, iso: Some("/isos/reactos.iso".into()), ..req("legacy") };
    let x = xml(&r, &host("amd-kvm"));
    assert!(x.contains("machine='pc'") && !x.contains("firmware='efi'"));
    assert!(x.contains("<target dev='hda' bus='ide'/>") && x.contains("<target dev='hdb' bus='ide'/>"));
    assert!(x.contains("<model type='e1000'/>") && x.contains("<model type='vga'"));
    assert!(x.contains("<vcpu placement='static'>1</vcpu>"));
}

#[test]
fn defaults_are_sized_from_the_host_and_capped() {
    let small = host("debian12-tcg"); // 2 CPUs, ~23.5 GiB
    let p = build(&req("linux"), &small).unwrap();
    assert_eq!((p.domain.vcpus, p.domain.memory_mib), (1, 4096));
    let big = host("amd-kvm"); // 32 CPUs
    let p = build(&req("linux"), &big).unwrap();
    assert_eq!(p.domain.vcpus, 8);
    let mut tiny = small.clone();
    tiny.facts.memory_mib = 3000;
    let p = build(&req("linux"), &tiny).unwrap();
    assert_eq!(p.domain.memory_mib, 1024, "half of the host, rounded down to 512 MiB");
    let e = build(&req("windows11"), &tiny).unwrap_err();
    assert!(matches!(e, BuildError::HostTooSmall { .. }), "{e}");
}

#[test]
fn bad_input_gets_clear_errors() {
    let h = host("debian12-tcg");
    let e = build(&req("plan9"), &h).unwrap_err();
    assert!(e.to_string().contains("unknown OS id \"plan9\"") && e.to_string().contains("windows11"));
    for (name, want) in [("a<b>", "contains '<'"), ("x'y", "contains '\\''"), ("a/b", "contains '/'"), ("", "empty")] {
        let e = build(&Request { name: name.into(), ..req("linux") }, &h).unwrap_err();
        assert!(e.to_string().contains(want), "{name}: {e}");
    }
    let e = build(&Request { name: "n".repeat(200), ..req("linux") }, &h).unwrap_err();
    assert_eq!(e, BuildError::Input(InputError::NameTooLong(200)));
    let sized = |memory: Option<&str>, disk: Option<&str>, cpus: Option<u32>| {
        build(&Request { memory: memory.map(Into::into), disk_size: disk.map(Into::into), cpus, ..req("linux") }, &h)
            .unwrap_err()
            .to_string()
    };
    assert!(sized(Some("0M"), None, None).contains("zero"));
    assert!(sized(Some("lots"), None, None).contains("not a size"));
    assert!(sized(Some("64T"), None, None).contains("more than this host's"));
    assert!(sized(Some("99999999999999999999999T"), None, None).contains("too large"));
    assert!(sized(Some("100M"), None, None).contains("at least 512 MiB"));
    assert!(sized(None, Some("1000000T"), None).contains("larger than"));
    assert!(sized(None, Some("1G"), None).contains("at least 4 GiB"));
    assert!(sized(None, None, Some(0)).contains("at least 1"));
    assert!(sized(None, None, Some(64)).contains("logical CPUs"));
    let e = build(&Request { iso: Some("relative.iso".into()), ..req("linux") }, &h).unwrap_err();
    assert!(e.to_string().contains("must be absolute"));
}

#[test]
fn paths_with_xml_metacharacters_round_trip() {
    let iso = "/isos/it's <my> \"iso\" & more.iso";
    let x = xml(&Request { iso: Some(iso.into()), ..req("linux") }, &host("amd-kvm"));
    let doc = roxmltree::Document::parse(&x).unwrap();
    let found = doc.descendants().filter(|n| n.has_tag_name("source")).filter_map(|n| n.attribute("file")).next();
    assert_eq!(found, Some(iso));
}

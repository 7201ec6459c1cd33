//! Uploading installer media to `phyllome serve`: streamed to disk with
//! constant memory, refused before writing when space is short, names made
//! safe and kept inside the ISO folder, the image checked to be an ISO, a
//! SHA-256 given back, and nothing left by a refusal.

mod web_common;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use web_common::*;

/// The ISO folder of the server under test, removed at the end.
struct Folder(std::path::PathBuf);

impl Drop for Folder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn token(server: &Server) -> String {
    let out = phyllome().args(["user", "token", USER, "--state-dir"]).arg(&server.state).output().unwrap();
    assert!(out.status.success());
    format!("Bearer {}", String::from_utf8_lossy(&out.stdout).trim())
}

/// PUTs `len` bytes made by `fill` (called per 1 MiB block) on a raw connection.
fn put_stream(addr: &str, path: &str, auth: &str, len: u64, mut fill: impl FnMut(u64, &mut [u8])) -> Resp {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(300))).unwrap();
    let head = format!(
        "PUT {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: {auth}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {len}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).unwrap();
    let mut block = vec![0u8; 1 << 20];
    let mut sent = 0u64;
    while sent < len {
        let n = (len - sent).min(block.len() as u64) as usize;
        fill(sent, &mut block[..n]);
        if s.write_all(&block[..n]).is_err() {
            break; // the server answered early and closed
        }
        sent += n as u64;
    }
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.as_bytes().to_vec()).unwrap_or_default();
    Resp { status, headers: vec![], body, ended: true }
}

fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap()
}

fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

#[test]
fn uploads_stream_to_disk_with_constant_memory_and_refusals_leave_nothing() {
    require_guest();
    let folder = Folder(temp_dir("media"));
    let state = temp_dir("media-state");
    assert!(add_user(&state, USER, PASSWORD).status.success());
    let server = Server::start_with_media(&state, &folder.0, &[]);
    let auth = token(&server);

    // A real ISO of the test guest (grub-mkrescue), with a Debian volume id.
    let iso = temp_dir("media-src").join("guest.iso");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/build-test-iso.sh");
    assert!(Command::new("bash").arg(script).arg(&iso).arg("Debian 12.8.0 amd64 n").status().unwrap().success());
    let image = std::fs::read(&iso).unwrap();
    let r = put_stream(&server.addr, "/api/v1/media/My%20Debian%20(12).iso", &auth, image.len() as u64, |at, b| {
        b.copy_from_slice(&image[at as usize..at as usize + b.len()])
    });
    assert_eq!(r.status, 201, "{}", r.text());
    let v = r.json();
    assert_eq!(v["name"], "My_Debian__12_.iso", "the name is made safe");
    let sum = Command::new("sha256sum").arg(&iso).output().unwrap();
    assert_eq!(v["sha256"].as_str().unwrap(), String::from_utf8_lossy(&sum.stdout).split_whitespace().next().unwrap());
    assert_eq!((v["os"].as_str(), v["os_name"].as_str()), (Some("linux"), Some("Debian 12")));
    assert_eq!(std::fs::read(folder.0.join("My_Debian__12_.iso")).unwrap(), image);
    let s = server.admin();
    let listed = s.get("/api/v1/media").json();
    let row = listed["files"].as_array().unwrap().iter().find(|f| f["name"] == "My_Debian__12_.iso").unwrap().clone();
    assert_eq!(row["os_name"], "Debian 12", "{row}");
    assert_eq!(row["boot"], serde_json::json!({"bios": true, "uefi": true}));

    // Refusals, each leaving the folder as it was.
    let before = files(&folder.0);
    let again = put_stream(&server.addr, "/api/v1/media/My_Debian__12_.iso", &auth, 4096, |_, b| b.fill(0));
    assert_eq!(again.status, 409, "a name is never overwritten: {}", again.text());
    let junk = put_stream(&server.addr, "/api/v1/media/junk.iso", &auth, 3 << 20, |_, b| b.fill(0x41));
    assert_eq!(junk.status, 400, "not an ISO once complete: {}", junk.text());
    assert!(junk.text().contains("not an ISO"), "{}", junk.text());
    let huge = put_stream(&server.addr, "/api/v1/media/huge.iso", &auth, 1 << 50, |_, b| b.fill(0));
    assert_eq!(huge.status, 507, "refused for space before a byte is written: {}", huge.text());
    let escape = put_stream(&server.addr, "/api/v1/media/..%2F..%2Fetc%2Fx.iso", &auth, 4096, |_, b| b.fill(0));
    assert!(escape.status == 400 || escape.status == 404, "{} {}", escape.status, escape.text());
    assert!(!Path::new("/etc/x.iso").exists() && !folder.0.parent().unwrap().join("x.iso").exists());
    let txt = put_stream(&server.addr, "/api/v1/media/notes.txt", &auth, 10, |_, b| b.fill(b'a'));
    assert_eq!(txt.status, 400, "{}", txt.text());
    // No Content-Length: refused (a chunked body could not be checked for space first).
    let chunked = http(
        &server.addr,
        "PUT",
        "/api/v1/media/c.iso",
        &[("Authorization", &auth), ("Transfer-Encoding", "chunked")],
        None,
    );
    assert_eq!(chunked.status, 411, "{}", chunked.text());
    // A browser session needs the CSRF token for it, as for every change.
    let no_csrf =
        http(&server.addr, "PUT", "/api/v1/media/x.iso", &[("Cookie", &s.cookie), ("Content-Length", "0")], None);
    assert_eq!(no_csrf.status, 403);
    assert_eq!(files(&folder.0), before, "no partial or refused file is left");

    // 4 GiB streamed: the server's peak memory does not grow with it.
    let pid = server.pid();
    let hwm_before = vm_hwm_kib(pid);
    let big = 4u64 << 30;
    let r = put_stream(&server.addr, "/api/v1/media/big.iso", &auth, big, |at, b| {
        b.fill(0);
        // The ISO's first 64 KiB (its volume descriptors), then zeros.
        if at == 0 {
            b[..65536].copy_from_slice(&image[..65536]);
        }
    });
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(std::fs::metadata(folder.0.join("big.iso")).unwrap().len(), big);
    let grown = vm_hwm_kib(pid).saturating_sub(hwm_before);
    assert!(grown < 32 * 1024, "peak RSS grew {grown} KiB over a 4 GiB upload");
    std::fs::remove_file(folder.0.join("big.iso")).unwrap();

    // Delete through the API; a VM using an ISO keeps it.
    let vm = TestVm::new("media-user");
    let out = phyllome()
        .args(["create", &vm.0, "--os", "linux", "--memory", "512M", "--disk-size", "4G", "--network", "none", "--iso"])
        .arg(folder.0.join("My_Debian__12_.iso"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let busy = s.send("DELETE", "/api/v1/media/My_Debian__12_.iso", None);
    assert_eq!(busy.status, 409, "{}", busy.text());
    assert!(busy.text().contains(&vm.0));
    assert!(phyllome().args(["delete", &vm.0]).status().unwrap().success());
    let gone = s.send("DELETE", "/api/v1/media/My_Debian__12_.iso", None);
    assert_eq!(gone.status, 200, "{}", gone.text());
    assert_eq!(s.send("DELETE", "/api/v1/media/My_Debian__12_.iso", None).status, 404);
    assert!(files(&folder.0).is_empty());
    let _ = std::fs::remove_dir_all(iso.parent().unwrap());
}

/// A small tmpfs mounted on a folder of its own, unmounted and removed however the test ends.
struct SmallFs(std::path::PathBuf);

impl SmallFs {
    fn mount(tag: &str, mib: u64) -> SmallFs {
        let dir = temp_dir(tag);
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m,mode=0755"), "tmpfs"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(st.success(), "cannot mount a tmpfs at {}", dir.display());
        SmallFs(dir)
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn concurrent_uploads_hold_their_space_and_a_full_disk_is_a_clean_507() {
    // An ISO's volume descriptors (xorriso), then zeros: an image that reads as an ISO.
    let src = temp_dir("media-head");
    std::fs::create_dir_all(src.join("tree")).unwrap();
    std::fs::write(src.join("tree/README.TXT"), "hello\n").unwrap();
    let iso = src.join("head.iso");
    let made = Command::new("xorriso")
        .args(["-as", "mkisofs", "-quiet", "-V", "Debian 12.8.0 amd64 n", "-o"])
        .arg(&iso)
        .arg(src.join("tree"))
        .status()
        .unwrap();
    assert!(made.success());
    let head = std::fs::read(&iso).unwrap()[..65536].to_vec();
    let fs = SmallFs::mount("media-small", 128);
    let state = temp_dir("media-small-state");
    assert!(add_user(&state, USER, PASSWORD).status.success());
    let server = Server::start_with_media(&state, &fs.0, &[]);
    let auth = token(&server);

    // Three 50 MiB uploads at once into 128 MiB (64 MiB of it kept spare): each holds the head of its
    // request for a second, so all three are checked before any byte lands. One fits; the others are
    // refused for space before writing, naming the reserve and what the others hold.
    let len = 50u64 << 20;
    let uploads: Vec<_> = (0..3)
        .map(|i| {
            let (addr, auth, head) = (server.addr.clone(), auth.clone(), head.clone());
            std::thread::spawn(move || {
                put_stream(&addr, &format!("/api/v1/media/up{i}.iso"), &auth, len, |at, b| {
                    if at == 0 {
                        std::thread::sleep(std::time::Duration::from_millis(1500));
                    }
                    b.fill(0);
                    if at == 0 {
                        b[..head.len()].copy_from_slice(&head);
                    }
                })
            })
        })
        .collect();
    let answers: Vec<Resp> = uploads.into_iter().map(|t| t.join().unwrap()).collect();
    let statuses: Vec<u16> = answers.iter().map(|r| r.status).collect();
    let bodies: Vec<String> = answers.iter().map(Resp::text).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 1, "{statuses:?} {bodies:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 507).count(), 2, "{statuses:?} {bodies:?}");
    for r in answers.iter().filter(|r| r.status == 507) {
        let v = r.json();
        assert_eq!(v["kind"], "no-space", "the refusal's kind matches its status: {v}");
        let msg = v["error"].as_str().unwrap();
        assert!(msg.contains("spare") && msg.contains("held for the copies under way"), "{msg}");
        assert!(!msg.contains(".part"), "{msg}");
    }
    let landed: Vec<String> = files(&fs.0);
    assert_eq!(landed.len(), 1, "one ISO and no partial file: {landed:?}");
    std::fs::remove_file(fs.0.join(&landed[0])).unwrap();

    // A refusal for space: its own kind, the reserve named (1 MiB does not fit in 64 MiB spare... of 64 MiB).
    let filler = fs.0.join(".filler");
    let free_now = |p: &Path| {
        let out = Command::new("stat").args(["-f", "-c", "%a %S"]).arg(p).output().unwrap();
        let t = String::from_utf8_lossy(&out.stdout).to_string();
        let mut it = t.split_whitespace().map(|v| v.parse::<u64>().unwrap());
        it.next().unwrap() * it.next().unwrap()
    };
    std::fs::write(&filler, vec![1u8; (free_now(&fs.0) - (64 << 20)) as usize]).unwrap();
    let r = put_stream(&server.addr, "/api/v1/media/small.iso", &auth, 1 << 20, |_, b| b.fill(0));
    assert_eq!(r.status, 507, "{}", r.text());
    let v = r.json();
    assert_eq!(v["kind"], "no-space", "{v}");
    assert!(v["error"].as_str().unwrap().contains("keeps 64 MiB of it spare"), "{v}");
    std::fs::remove_file(&filler).unwrap();

    // Out of space on the way (something else filled the disk after the check): 507, said cleanly,
    // and the partial copy is gone.
    let fill_at = filler.clone();
    let dir = fs.0.clone();
    let r = put_stream(&server.addr, "/api/v1/media/late.iso", &auth, 40 << 20, move |at, b| {
        if at == 0 {
            // Checked and held by now: fill the disk behind its back.
            std::thread::sleep(std::time::Duration::from_millis(800));
            let _ = std::fs::write(&fill_at, vec![1u8; (free_now(&dir) - (4 << 20)) as usize]);
        }
        b.fill(0);
        if at == 0 {
            b[..head.len()].copy_from_slice(&head);
        }
    });
    assert_eq!(r.status, 507, "{}", r.text());
    let v = r.json();
    assert_eq!(v["kind"], "no-space", "{v}");
    let msg = v["error"].as_str().unwrap();
    assert!(msg.contains("filled up") && !msg.contains(".part") && !msg.contains(&*fs.0.to_string_lossy()), "{msg}");
    std::fs::remove_file(&filler).unwrap();
    assert!(files(&fs.0).is_empty(), "no partial file is left: {:?}", files(&fs.0));
    drop(server);
    let _ = std::fs::remove_dir_all(&src);
}

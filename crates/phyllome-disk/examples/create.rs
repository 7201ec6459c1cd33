//! `create PATH SIZE_GIB`: writes a LUKS-encrypted qcow2 keyed by the
//! passphrase read from standard input, as `phyllome create` does for
//! random-key disks. For benchmarks (scripts/bench-disk.sh) against `qemu-img`.

use std::io::Read;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(path), Some(gib)) = (args.get(1), args.get(2).and_then(|g| g.parse::<u64>().ok())) else {
        eprintln!("usage: create PATH SIZE_GIB < passphrase");
        std::process::exit(2);
    };
    let mut key = Vec::new();
    std::io::stdin().read_to_end(&mut key).expect("read the passphrase");
    if let Err(e) = phyllome_disk::create(std::path::Path::new(path), gib << 30, &key, phyllome_disk::Cost::RANDOM_KEY)
    {
        eprintln!("create: {e}");
        std::process::exit(1);
    }
}

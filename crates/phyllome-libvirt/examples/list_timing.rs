//! Where `phyllome list`'s time goes: the listings with each XML, then each disk's size.
fn main() {
    let lv = phyllome_libvirt::Libvirt::connect("qemu:///system").unwrap();
    let t = std::time::Instant::now();
    let all = lv.list_all().unwrap();
    let listed = t.elapsed();
    let t = std::time::Instant::now();
    let asks: Vec<_> = all.iter().map(|d| (d, "vda")).collect();
    let n = phyllome_libvirt::Listed::capacities(&asks).iter().filter(|c| c.is_some()).count();
    println!("{} domains: listings+XML {:?}, block info ({n} disks) {:?}", all.len(), listed, t.elapsed());
}

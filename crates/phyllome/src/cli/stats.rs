//! `phyllome stats` and `phyllome top`: what the running VMs use.

use super::render::human;
use super::Fallible;
use clap::Args;
use phyllome_engine::stats::{self, Sampler, StatsReport, VmStats};
use phyllome_engine::text::printable;
use phyllome_libvirt::Libvirt;
use std::io::Write;
use std::time::Duration;

#[derive(Args)]
pub struct StatsArgs {
    /// VMs to show (default: every running VM).
    pub vms: Vec<String>,
    /// Print JSON (with --watch, one JSON object per line).
    #[arg(long)]
    pub json: bool,
    /// Keep printing, every --interval seconds, until interrupted.
    #[arg(long)]
    pub watch: bool,
    /// Seconds between the two samples rates come from (and between reports with --watch).
    #[arg(long, default_value_t = 1.0, value_parser = interval)]
    pub interval: f64,
}

#[derive(Args)]
pub struct TopArgs {
    /// Seconds between refreshes.
    #[arg(long, default_value_t = 2.0, value_parser = interval)]
    pub interval: f64,
}

fn interval(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(0.1..=3600.0).contains(&v) {
        return Err("use between 0.1 and 3600 seconds".into());
    }
    Ok(v)
}

pub fn stats(uri: &str, args: StatsArgs) -> Fallible {
    let lv = Libvirt::connect(uri)?;
    let every = Duration::from_secs_f64(args.interval);
    if !args.watch {
        let r = stats::measure(&lv, &args.vms, every)?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&r)?);
        } else {
            print!("{}", table(&r));
        }
        return Ok(());
    }
    let mut sampler = Sampler::new(&lv)?;
    let mut prev = sampler.sample(&lv)?;
    loop {
        std::thread::sleep(every);
        let cur = sampler.sample(&lv)?;
        let r = stats::select(&lv, stats::report(&sampler.host, Some(&prev), &cur), &args.vms)?;
        if args.json {
            println!("{}", serde_json::to_string(&r)?);
        } else {
            println!("{}", table(&r));
        }
        std::io::stdout().flush()?;
        prev = cur;
    }
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map(f).unwrap_or_else(|| "-".into())
}

fn uptime(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d{h:02}h")
    } else if h > 0 {
        format!("{h}h{m:02}m")
    } else {
        format!("{m}m{s:02}s")
    }
}

/// The host's line: what the running VMs take of it.
pub fn host_line(r: &StatsReport) -> String {
    let h = &r.host;
    format!(
        "{}: {} running; memory {} of {} committed; {} vCPUs on {} CPUs; CPU {}",
        printable(&h.hostname),
        h.vms_running,
        human(h.memory_committed_bytes as f64),
        human(h.memory_bytes as f64),
        h.vcpus_committed,
        h.cpus,
        opt(h.cpu_percent, |c| format!("{c:.0}%")),
    )
}

pub const HEADER: [&str; 11] = [
    "NAME", "STATE", "CPU%", "STEAL%", "MEM USED", "ASSIGNED", "HOST RSS", "DISK R/s", "DISK W/s", "NET RX/s",
    "NET TX/s",
];

/// One VM's cells, in [`HEADER`]'s order, and its uptime.
pub fn cells(v: &VmStats) -> Vec<String> {
    let m = &v.memory;
    let bytes = |b: Option<u64>| opt(b.map(|b| b as f64), human);
    let rate = |b: Option<f64>| opt(b, |b| format!("{}/s", human(b)));
    let mut c = vec![
        printable(&v.name).into_owned(),
        v.state.to_string(),
        opt(v.cpu_percent, |c| format!("{c:.1}")),
        opt(v.steal_percent, |c| format!("{c:.1}")),
        bytes(m.used_bytes),
        bytes(m.assigned_bytes),
        bytes(m.host_rss_bytes),
        rate(v.disk.read_bytes_per_sec),
        rate(v.disk.write_bytes_per_sec),
        rate(v.network.rx_bytes_per_sec),
        rate(v.network.tx_bytes_per_sec),
    ];
    c.push(v.uptime_secs.map(uptime).unwrap_or_else(|| "-".into()));
    c
}

pub fn table(r: &StatsReport) -> String {
    let mut out = format!("{}\n", host_line(r));
    if r.vms.is_empty() {
        out.push_str("no VM is running\n");
        return out;
    }
    let mut rows: Vec<Vec<String>> = vec![HEADER.iter().map(|h| h.to_string()).chain(["UPTIME".into()]).collect()];
    rows.extend(r.vms.iter().map(cells));
    out.push_str(&layout(&rows, usize::MAX).join("\n"));
    out.push('\n');
    let silent: Vec<_> = r.vms.iter().filter(|v| v.state != "shut off" && v.memory.note.is_some()).collect();
    if !silent.is_empty() {
        let names: Vec<_> = silent.iter().map(|v| printable(&v.name).into_owned()).collect();
        out.push_str(&format!("memory used unknown for {}: {}\n", names.join(", "), stats::NO_GUEST_MEMORY));
    }
    if let Some(line) = stuck_line(r) {
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// The VMs whose QEMU does not answer, and what that means, when there are some.
fn stuck_line(r: &StatsReport) -> Option<String> {
    let stuck: Vec<_> = r.vms.iter().filter(|v| v.state == "stuck").map(|v| printable(&v.name).into_owned()).collect();
    (!stuck.is_empty()).then(|| format!("stuck: {}: {}", stuck.join(", "), stats::STUCK))
}

/// Aligns rows in columns (the name left, figures right), each line cut to `width` characters.
fn layout(rows: &[Vec<String>], width: usize) -> Vec<String> {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let w: Vec<usize> =
        (0..cols).map(|i| rows.iter().filter_map(|r| r.get(i)).map(|c| c.chars().count()).max().unwrap_or(0)).collect();
    rows.iter()
        .map(|r| {
            let line: Vec<String> = r
                .iter()
                .enumerate()
                .map(|(i, c)| if i < 2 { format!("{c:<w$}", w = w[i]) } else { format!("{c:>w$}", w = w[i]) })
                .collect();
            let line = line.join("  ").trim_end().to_string();
            line.chars().take(width).collect()
        })
        .collect()
}

#[derive(Clone, Copy, PartialEq)]
enum SortBy {
    Cpu,
    Memory,
    Disk,
    Network,
    Name,
}

fn sort(vms: &mut [VmStats], by: SortBy) {
    let key = |v: &VmStats| -> f64 {
        match by {
            SortBy::Cpu => v.cpu_percent.unwrap_or(0.0),
            SortBy::Memory => v.memory.host_rss_bytes.unwrap_or(0) as f64,
            SortBy::Disk => v.disk.read_bytes_per_sec.unwrap_or(0.0) + v.disk.write_bytes_per_sec.unwrap_or(0.0),
            SortBy::Network => v.network.rx_bytes_per_sec.unwrap_or(0.0) + v.network.tx_bytes_per_sec.unwrap_or(0.0),
            SortBy::Name => 0.0,
        }
    };
    if by == SortBy::Name {
        vms.sort_by(|a, b| a.name.cmp(&b.name));
    } else {
        vms.sort_by(|a, b| key(b).total_cmp(&key(a)).then_with(|| a.name.cmp(&b.name)));
    }
}

/// Puts the terminal back however `top` ends.
struct Screen;

impl Screen {
    fn enter() -> std::io::Result<Screen> {
        crossterm::terminal::enable_raw_mode()?;
        let s = Screen;
        crossterm::execute!(std::io::stdout(), crossterm::terminal::EnterAlternateScreen, crossterm::cursor::Hide)?;
        Ok(s)
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let _ =
            crossterm::execute!(std::io::stdout(), crossterm::cursor::Show, crossterm::terminal::LeaveAlternateScreen);
        let _ = crossterm::terminal::disable_raw_mode();
    }
}

/// `phyllome top`: a live view of the running VMs, busiest first; `q` quits.
pub fn top(uri: &str, args: TopArgs) -> Fallible {
    use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
    use std::io::IsTerminal;
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        return Err("phyllome top needs a terminal: use phyllome stats --watch (or --json) to print the figures".into());
    }
    let lv = Libvirt::connect(uri)?;
    let mut sampler = Sampler::new(&lv)?;
    let every = Duration::from_secs_f64(args.interval);
    let mut prev = sampler.sample(&lv)?;
    // A first picture soon, then one every interval.
    let mut wait = Duration::from_millis(500).min(every);
    let mut by = SortBy::Cpu;
    let mut last: Option<StatsReport> = None;
    let _screen = Screen::enter()?;
    loop {
        let deadline = std::time::Instant::now() + wait;
        let mut redraw = false;
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            if !event::poll(left)? {
                break;
            }
            match event::read()? {
                Event::Key(k) if k.kind != KeyEventKind::Release => match k.code {
                    KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                    KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => return Ok(()),
                    KeyCode::Char('c') => by = SortBy::Cpu,
                    KeyCode::Char('m') => by = SortBy::Memory,
                    KeyCode::Char('d') => by = SortBy::Disk,
                    KeyCode::Char('n') => by = SortBy::Network,
                    KeyCode::Char('a') => by = SortBy::Name,
                    _ => continue,
                },
                Event::Resize(..) => {}
                _ => continue,
            }
            redraw = true;
            break;
        }
        if !redraw {
            let cur = sampler.sample(&lv)?;
            last = Some(stats::report(&sampler.host, Some(&prev), &cur));
            prev = cur;
            wait = every;
        }
        if let Some(r) = last.as_mut() {
            sort(&mut r.vms, by);
            draw(r, by)?;
        }
    }
}

fn draw(r: &StatsReport, by: SortBy) -> std::io::Result<()> {
    use crossterm::{cursor, queue, style, terminal};
    // A terminal that reports no size (a pty nobody sized) gets a usual one.
    let (cols, lines) = terminal::size().ok().filter(|&(c, l)| c > 0 && l > 0).unwrap_or((120, 30));
    let (cols, lines) = (cols as usize, lines as usize);
    let sorted = match by {
        SortBy::Cpu => "CPU",
        SortBy::Memory => "host memory",
        SortBy::Disk => "disk",
        SortBy::Network => "network",
        SortBy::Name => "name",
    };
    let mut text = vec![
        host_line(r).chars().take(cols).collect::<String>(),
        format!("sorted by {sorted}: c CPU, m memory, d disk, n network, a name; q quits").chars().take(cols).collect(),
        String::new(),
    ];
    let mut rows: Vec<Vec<String>> = vec![HEADER.iter().map(|h| h.to_string()).chain(["UPTIME".into()]).collect()];
    rows.extend(r.vms.iter().map(cells));
    if r.vms.is_empty() {
        text.push("no VM is running".into());
    } else {
        text.extend(layout(&rows, cols));
        text.extend(stuck_line(r).map(|l| l.chars().take(cols).collect()));
    }
    let mut out = std::io::stdout();
    queue!(out, cursor::MoveTo(0, 0), terminal::Clear(terminal::ClearType::All))?;
    for (i, line) in text.iter().take(lines).enumerate() {
        queue!(out, cursor::MoveTo(0, i as u16), style::Print(line))?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptimes_read_short() {
        assert_eq!(uptime(59), "0m59s");
        assert_eq!(uptime(3 * 3600 + 120), "3h02m");
        assert_eq!(uptime(2 * 86400 + 3600), "2d01h");
    }

    #[test]
    fn columns_align_and_fit_the_terminal() {
        let rows = vec![
            vec!["NAME".to_string(), "STATE".into(), "CPU%".into()],
            vec!["a-long-name".into(), "running".into(), "100.0".into()],
        ];
        let l = layout(&rows, usize::MAX);
        assert_eq!(l[0], "NAME         STATE     CPU%");
        assert_eq!(l[1], "a-long-name  running  100.0");
        assert_eq!(layout(&rows, 10)[1], "a-long-nam");
    }
}

//! The QEMU harness: boots a Cairn image on the qemu-virt board as a person would power a plug
//! (from its disk, through u-boot), reads the serial console, talks QMP (QEMU's control
//! protocol: power button, reset) and the board's front panel (a virtio-serial port).
//!
//! Every wait is bounded; a QEMU left running is killed when its [`Qemu`] is dropped.
//! [`browser`] drives the web UI in a real browser; [`https`] talks to it without one.

pub mod browser;
pub mod https;

use anyhow::{bail, Context};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Generous bounds for a 2-core CI machine emulating ARM in software: power-on to ready…
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(90);
/// … and a shutdown request to QEMU's exit.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(60);

/// Where `scripts/image` puts images.
pub fn images_dir() -> PathBuf {
    std::env::var_os("CAIRN_IMAGES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/images"))
}

/// Writes a benchmark's figures to `out` as pretty JSON (making its folder) and prints them.
pub fn write_bench(out: &str, figures: &serde_json::Value) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(figures)?;
    if let Some(parent) = Path::new(out).parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(out, format!("{text}\n"))?;
    println!("{text}");
    Ok(())
}

/// Writes a benchmark's figures into `out` beside those already there (another example may
/// fill the same file): `figures`' keys replace theirs, objects (`targets`) merged key by key.
pub fn merge_bench(out: &str, figures: &serde_json::Value) -> anyhow::Result<()> {
    fn merge(into: &mut serde_json::Value, from: &serde_json::Value) {
        match (into, from) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k.clone()).or_insert(serde_json::Value::Null), v);
                }
            }
            (into, from) => *into = from.clone(),
        }
    }
    let mut all = match std::fs::read(out) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("{out}: not JSON: move it away or fix it"))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => serde_json::json!({}),
        Err(e) => return Err(e).with_context(|| format!("{out}: reading")),
    };
    anyhow::ensure!(all.is_object(), "{out}: not a JSON object");
    merge(&mut all, figures);
    write_bench(out, &all)
}

/// A TCP port free on the host's loopback right now (the kernel just handed it out: free
/// unless another process takes it before it is used).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// An image by file name in [`images_dir`], with a clear error if it was not built.
pub fn image(name: &str) -> anyhow::Result<PathBuf> {
    let p = images_dir().join(name);
    anyhow::ensure!(
        p.is_file(),
        "{} is missing: build it with scripts/image (scripts/test does)",
        p.display()
    );
    Ok(p)
}

/// How to start the virtual board.
#[derive(Clone, Debug)]
pub struct Config {
    /// The disk image; it is copied, so the original stays pristine.
    pub image: PathBuf,
    /// Grow the copy to this many bytes (a bigger "SD card").
    pub disk_bytes: Option<u64>,
    /// The guest's RAM, in MiB.
    pub memory_mib: u32,
    /// Host TCP port forwarded to the guest's 443.
    pub https_port: Option<u16>,
    /// The board's Ethernet (see [`Ethernet`]).
    pub ethernet: Ethernet,
    /// Further host TCP ports (on 127.0.0.1) forwarded to guest ports: `(host, guest)`.
    pub tcp_forwards: Vec<(u16, u16)>,
    /// Reset instead of exit on a guest reboot (a real board reboots).
    pub reboot: bool,
    /// Where the serial console goes.
    pub console: Console,
    /// Let the user-mode network reach beyond this host (a plug at home is online); tests keep
    /// the guest off every network but its forwards.
    pub internet: bool,
    /// A second disk (the benchmarks' card), after the board's own.
    pub second_disk: Option<SecondDisk>,
    /// The emulated machine.
    pub machine: Machine,
}

/// Which machine QEMU emulates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Machine {
    /// `-M virt`: the qemu-virt board (u-boot from Debian's u-boot-qemu as `-bios`).
    Virt,
    /// `-M raspi3b`: a Raspberry Pi 3 B, booting the u-boot.bin on the card's own boot
    /// partition (what its GPU firmware would start; QEMU does not run that firmware) from
    /// an SD card, with QEMU's usb-net on its USB port as the Ethernet.
    Raspi3b,
    /// `-M raspi4b`: a Raspberry Pi 4 B, booted like [`Machine::Raspi3b`], with the DTB of
    /// the card's boot partition given to QEMU as the GPU firmware would hand it to u-boot
    /// (QEMU models no GENET and no PCIe: the Ethernet is usb-net on the SoC's DWC2 port).
    Raspi4b,
    /// `-M bpim2u`: a Banana Pi M2 Ultra (Allwinner R40), whose emulated boot ROM loads the
    /// SPL from 8 KiB into the SD card, as the real one does: no firmware from the host.
    /// Its Ethernet is QEMU's model of the R40's GMAC.
    Bpim2u,
}

/// A second virtio disk: a raw file on the host that the guest finds by its serial number
/// (`/sys/block/*/serial`), with QEMU's block throttling standing in for a card's limits. No
/// host cache (`cache=none`: `O_DIRECT`, and the guest's flushes reach the host's disk), so
/// the guest's syncs cost what they cost on a disk.
#[derive(Clone, Debug)]
pub struct SecondDisk {
    /// The raw image (its size is the disk's).
    pub file: PathBuf,
    /// What the guest reads in `/sys/block/*/serial` (at most 20 bytes).
    pub serial: String,
    /// The limits; 0 means none.
    pub throttle: Throttle,
}

/// QEMU's block throttling (`throttling.*` of `-drive`): bytes and requests per second, each
/// 0 for no limit. A request counts as one I/O whatever its size (no `iops-size`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Throttle {
    /// Bytes read per second.
    pub bps_read: u64,
    /// Bytes written per second.
    pub bps_write: u64,
    /// Read requests per second.
    pub iops_read: u64,
    /// Write requests per second.
    pub iops_write: u64,
}

impl Throttle {
    /// The `-drive` options, each with its leading comma.
    fn drive_options(&self) -> String {
        [
            ("bps-read", self.bps_read),
            ("bps-write", self.bps_write),
            ("iops-read", self.iops_read),
            ("iops-write", self.iops_write),
        ]
        .iter()
        .filter(|(_, v)| *v > 0)
        .map(|(k, v)| format!(",throttling.{k}={v}"))
        .collect()
    }
}

/// Where the board's serial console is connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Console {
    /// Read by the harness: QEMU's stdout is a pipe, its stdin empty, no monitor.
    Piped,
    /// A person's terminal (`scripts/run`): console and QEMU's monitor share stdio
    /// (Ctrl-A X quits, Ctrl-A C switches to the monitor).
    Terminal,
}

/// The files a running board uses on the host.
#[derive(Clone, Debug)]
pub struct Files {
    /// The board's disk, written in place.
    pub disk: PathBuf,
    /// The front panel's socket (virtio-serial `cairn.panel`).
    pub panel: PathBuf,
    /// QEMU's control socket (QMP): the power button, reset, hot-plugging.
    pub qmp: PathBuf,
    /// u-boot's environment flash bank (built by `scripts/image`).
    pub uboot_env: PathBuf,
}

impl Files {
    /// The board's files in `dir`, with its disk at `disk`.
    pub fn in_dir(dir: &Path, disk: PathBuf) -> Files {
        Files {
            disk,
            panel: dir.join("panel.sock"),
            qmp: dir.join("qmp.sock"),
            uboot_env: images_dir().join("qemu-virt-uboot-env.bin"),
        }
    }
}

impl Config {
    /// Boots `image` as the tests do: 256 MiB, user-mode network without internet, console
    /// piped to the harness, exit on reboot.
    pub fn new(image: PathBuf) -> Config {
        Config {
            image,
            disk_bytes: None,
            memory_mib: 256,
            https_port: None,
            ethernet: Ethernet::User,
            tcp_forwards: Vec::new(),
            reboot: false,
            console: Console::Piped,
            internet: false,
            second_disk: None,
            machine: Machine::Virt,
        }
    }
}

/// What the board's Ethernet port is plugged into.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ethernet {
    /// Nothing: no network interface at all.
    None,
    /// QEMU's user-mode network: its DHCP server leases 10.0.2.15/24 (router 10.0.2.2, DNS
    /// 10.0.2.3). `restrict=on` keeps the guest off every network outside it; the forwards
    /// still reach the guest.
    User,
    /// A cable to one other board on this host: Ethernet frames as UDP datagrams between two
    /// ports of the host's loopback (`-netdev dgram`, no root needed). No DHCP server is on it:
    /// the boards take link-local addresses.
    Cable {
        /// This board's end: the UDP port it receives on.
        local_port: u16,
        /// The other board's end.
        remote_port: u16,
        /// This board's MAC address, distinct per board (`52:54:00:…`).
        mac: String,
    },
    /// A tap device of a [`PrivateLan`]: a LAN shared by several boards and the host (its
    /// browser, its scripts), with no DHCP server (link-local addresses).
    Tap {
        /// The tap device, made by [`PrivateLan::new`].
        ifname: String,
        /// This board's MAC address, distinct per board (`52:54:00:…`).
        mac: String,
    },
}

/// A LAN of its own for one test: the calling thread moves into a new network namespace (so
/// nothing of the host's network is touched, and nothing outside can reach in), where a bridge
/// joins `taps` tap devices (one per board, [`Ethernet::Tap`]) and gives the host the address
/// [`PrivateLan::HOST`]. Every process the thread starts afterwards (QEMU, the browser) is on
/// it; the namespace goes when they and the thread are gone. Needs root (the tests run as
/// root) and iproute2.
pub struct PrivateLan {
    /// The taps' names, in order.
    pub taps: Vec<String>,
}

impl PrivateLan {
    /// The host's address on the LAN (link-local, like the boards' own).
    pub const HOST: &'static str = "169.254.0.1";

    /// Makes the LAN with `taps` tap devices; see [`PrivateLan`].
    pub fn new(taps: usize) -> anyhow::Result<PrivateLan> {
        // SAFETY: unshare(2) with a flag only changes this thread's namespaces.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            anyhow::bail!(
                "a network namespace of its own: {} (the tests need root)",
                std::io::Error::last_os_error()
            );
        }
        let ip = |args: &[&str]| -> anyhow::Result<()> {
            let out = Command::new("ip")
                .args(args)
                .output()
                .context("running ip (iproute2)")?;
            anyhow::ensure!(
                out.status.success(),
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
            Ok(())
        };
        ip(&["link", "set", "lo", "up"])?;
        ip(&["link", "add", "lan", "type", "bridge"])?;
        let taps: Vec<String> = (0..taps).map(|i| format!("tap{i}")).collect();
        for t in &taps {
            ip(&["tuntap", "add", "dev", t, "mode", "tap"])?;
            ip(&["link", "set", t, "master", "lan"])?;
            ip(&["link", "set", t, "up"])?;
        }
        ip(&["addr", "add", &format!("{}/16", Self::HOST), "dev", "lan"])?;
        ip(&["link", "set", "lan", "up"])?;
        Ok(PrivateLan { taps })
    }
}

/// Console lines seen so far, with when they arrived.
#[derive(Default)]
struct ConsoleLines {
    lines: Vec<(Instant, String)>,
    closed: bool,
}

/// A running virtual board.
pub struct Qemu {
    child: Child,
    console: Arc<(Mutex<ConsoleLines>, Condvar)>,
    dir: tempfile::TempDir,
    qmp: Option<Qmp>,
    /// When QEMU was started (console lines are timed from it).
    pub started: Instant,
}

/// The u-boot binary Debian's u-boot-qemu ships.
pub const UBOOT: &str = "/usr/lib/u-boot/qemu_arm64/u-boot.bin";

impl Qemu {
    /// Copies the image into a fresh directory and boots it.
    pub fn boot(cfg: &Config) -> anyhow::Result<Qemu> {
        let dir = tempfile::tempdir()?;
        let disk = dir.path().join("disk.img");
        std::fs::copy(&cfg.image, &disk)
            .with_context(|| format!("copying {}", cfg.image.display()))?;
        if let Some(n) = cfg.disk_bytes {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&disk)?
                .set_len(n)?;
        }
        Self::boot_disk(cfg, dir, disk)
    }

    /// Boots again from the disk a previous (now exited) run left behind.
    pub fn reboot_from(previous: Qemu, cfg: &Config) -> anyhow::Result<Qemu> {
        let mut previous = previous;
        let _ = previous.child.kill();
        let _ = previous.child.wait();
        let dir = std::mem::replace(&mut previous.dir, tempfile::tempdir()?);
        let disk = dir.path().join("disk.img");
        Self::boot_disk(cfg, dir, disk)
    }

    fn boot_disk(cfg: &Config, dir: tempfile::TempDir, disk: PathBuf) -> anyhow::Result<Qemu> {
        let files = Files::in_dir(dir.path(), disk);
        let qmp = files.qmp.clone();
        let mut cmd = command(cfg, &files)?;
        // Any byte on u-boot's stdin would stop autoboot: give it none.
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let started = Instant::now();
        let mut child = cmd.spawn().context("starting QEMU (run scripts/setup)")?;
        let out = child.stdout.take().unwrap();
        let console = Arc::new((Mutex::new(ConsoleLines::default()), Condvar::new()));
        let c = console.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(out);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                        if std::env::var_os("CAIRN_CONSOLE").is_some() {
                            eprintln!("console: {:7.2} {line}", started.elapsed().as_secs_f64());
                        }
                        c.0.lock().unwrap().lines.push((Instant::now(), line));
                        c.1.notify_all();
                    }
                }
            }
            c.0.lock().unwrap().closed = true;
            c.1.notify_all();
        });
        let mut q = Qemu {
            child,
            console,
            dir,
            qmp: None,
            started,
        };
        q.qmp = Some(Qmp::connect(&qmp)?);
        if matches!(cfg.machine, Machine::Raspi3b | Machine::Raspi4b)
            && matches!(cfg.ethernet, Ethernet::User)
        {
            q.plug_usb_net_into_linux()?;
        }
        Ok(q)
    }

    /// Plugs the Pi's usb-net in once Linux's USB host runs. The Pi 3 card's u-boot enumerates
    /// USB before it boots (its `preboot` runs `usb start`) and acknowledges the connection; the
    /// real controller reports the device to Linux again after the core soft reset Linux's
    /// dwc2 driver does, but QEMU's DWC2 model does not implement that reset, so a device
    /// present from power-on stays "Not connected" to Linux. Plugged in while Linux's root hub
    /// watches its port, it is seen as a person plugging a cable in would be (earlier, at
    /// u-boot's "Starting kernel", it raced u-boot's own USB teardown). The Pi 4's u-boot looks
    /// for USB behind PCIe only, which raspi4b lacks; its usb-net is plugged in the same way.
    fn plug_usb_net_into_linux(&mut self) -> anyhow::Result<()> {
        self.wait_line(RPI_ROOT_HUB, LINUX_USB_TIMEOUT)
            .context("waiting for Linux's USB root hub, to plug usb-net in")?;
        self.qmp(
            "device_add",
            serde_json::json!({"driver": "usb-net", "id": "lan", "netdev": "lan", "mac": RPI_MAC}),
        )?;
        Ok(())
    }

    /// Runs a QMP command and returns its `return` value.
    pub fn qmp(
        &mut self,
        command: &str,
        arguments: serde_json::Value,
    ) -> anyhow::Result<serde_json::Value> {
        self.qmp
            .as_mut()
            .context("QMP not connected")?
            .execute(command, arguments)
    }

    /// Presses the board's power button (QEMU pulses the PL061 line wired to it).
    pub fn power_button(&mut self) -> anyhow::Result<()> {
        self.qmp("system_powerdown", serde_json::json!({}))
            .map(|_| ())
    }

    /// Waits for a console line containing `needle` (after line index `from`); returns
    /// its index and text.
    pub fn wait_line_from(
        &self,
        from: usize,
        needle: &str,
        timeout: Duration,
    ) -> anyhow::Result<(usize, String)> {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.console;
        let mut c = lock.lock().unwrap();
        loop {
            if let Some(i) = c
                .lines
                .iter()
                .skip(from)
                .position(|(_, l)| l.contains(needle))
            {
                return Ok((from + i, c.lines[from + i].1.clone()));
            }
            let now = Instant::now();
            if c.closed || now >= deadline {
                let tail: Vec<_> = c
                    .lines
                    .iter()
                    .rev()
                    .take(25)
                    .rev()
                    .map(|(_, l)| l.as_str())
                    .collect();
                bail!(
                    "no console line with '{needle}' {}; last lines:\n{}",
                    if c.closed {
                        "before QEMU exited"
                    } else {
                        "in time"
                    },
                    tail.join("\n")
                );
            }
            c = cv.wait_timeout(c, deadline - now).unwrap().0;
        }
    }

    /// Waits for a console line containing `needle`, from the first line on; returns its text.
    pub fn wait_line(&self, needle: &str, timeout: Duration) -> anyhow::Result<String> {
        self.wait_line_from(0, needle, timeout).map(|(_, l)| l)
    }

    /// Time from QEMU's start to the first console line containing `needle`, if seen.
    pub fn time_of(&self, needle: &str) -> Option<Duration> {
        let c = self.console.0.lock().unwrap();
        c.lines
            .iter()
            .find(|(_, l)| l.contains(needle))
            .map(|(t, _)| *t - self.started)
    }

    /// All console lines so far.
    pub fn console(&self) -> Vec<String> {
        self.console
            .0
            .lock()
            .unwrap()
            .lines
            .iter()
            .map(|(_, l)| l.clone())
            .collect()
    }

    /// Console lines so far (a `from` for [`Qemu::wait_line_from`] that skips them).
    pub fn line_count(&self) -> usize {
        self.console.0.lock().unwrap().lines.len()
    }

    /// Waits for QEMU to exit by itself (it is never killed here).
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait()? {
                return Ok(s);
            }
            if Instant::now() >= deadline {
                let tail = self.console();
                let tail = tail[tail.len().saturating_sub(20)..].join("\n");
                bail!("QEMU did not exit within {timeout:?}; last console lines:\n{tail}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The copy of the disk this board runs from.
    pub fn disk(&self) -> PathBuf {
        self.dir.path().join("disk.img")
    }

    /// What raspi4b's first UART (the PL011) got so far: the Pi 4's u-boot prints its banner
    /// there before it moves to the mini UART of the console (on a real Pi 4 that PL011 drives
    /// Bluetooth).
    pub fn pl011_output(&self) -> anyhow::Result<String> {
        let log = self.disk().with_file_name(PL011_LOG);
        std::fs::read_to_string(&log).with_context(|| log.display().to_string())
    }

    /// The front panel's socket (virtio-serial `cairn.panel`).
    pub fn panel_socket(&self) -> PathBuf {
        self.dir.path().join("panel.sock")
    }

    /// Connects to the front panel (waiting up to 10 s for QEMU to open its socket).
    pub fn panel(&self) -> anyhow::Result<cairn_bsp::panel::PanelLink> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let stream = loop {
            match UnixStream::connect(self.panel_socket()) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => {
                    return Err(e).context("connecting to the front panel")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        Ok(cairn_bsp::panel::PanelLink::new(
            stream.try_clone()?,
            stream,
        )?)
    }

    /// Pulls the power: no shutdown, QEMU is killed at once.
    pub fn pull_power(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The QEMU command line of the qemu-virt board: the one source of it, for the tests and for
/// `scripts/run` (`cairn-hil run`). Boots from the disk through u-boot, as a plug boots from
/// its card.
pub fn command(cfg: &Config, files: &Files) -> anyhow::Result<Command> {
    match cfg.machine {
        Machine::Raspi3b | Machine::Raspi4b => return raspi_command(cfg, files),
        Machine::Bpim2u => return bpim2u_command(cfg, files),
        Machine::Virt => {}
    }
    anyhow::ensure!(
        files.uboot_env.is_file(),
        "{} is missing: build it with scripts/image",
        files.uboot_env.display()
    );
    let mut cmd = Command::new("qemu-system-aarch64");
    // Profiling the guest from the host: QEMU names the code it translated by guest address
    // in /tmp/perf-PID.map, which `perf report` reads (README, "Where the emulated CPU goes").
    if std::env::var_os("CAIRN_QEMU_PERFMAP").is_some() {
        cmd.arg("-perfmap");
    }
    cmd.args(["-M", "virt,acpi=off", "-cpu", "cortex-a53", "-smp", "1"])
        .args(["-m", &cfg.memory_mib.to_string()])
        .args(["-display", "none"]);
    match cfg.console {
        Console::Piped => cmd.args(["-serial", "stdio", "-monitor", "none"]),
        Console::Terminal => cmd.args(["-serial", "mon:stdio"]),
    };
    cmd.args(["-bios", UBOOT])
        .arg("-drive")
        .arg(format!(
            "if=pflash,unit=1,format=raw,readonly=on,file={}",
            files.uboot_env.display()
        ))
        .arg("-drive")
        .arg(format!(
            "if=none,file={},format=raw,id=hd0",
            files.disk.display()
        ));
    // QEMU gives each later virtio-mmio device a lower address, and u-boot and Linux number
    // disks from the lowest: the second disk's device goes first so the board's own disk stays
    // `virtio 0` and `/dev/vda`.
    if let Some(d) = &cfg.second_disk {
        anyhow::ensure!(
            d.serial.len() <= 20 && !d.serial.contains(','),
            "a disk serial of at most 20 bytes without commas: {:?}",
            d.serial
        );
        cmd.arg("-drive")
            .arg(format!(
                "if=none,file={},format=raw,id=hd1,cache=none,aio=threads{}",
                d.file.display(),
                d.throttle.drive_options()
            ))
            .arg("-device")
            .arg(format!("virtio-blk-device,drive=hd1,serial={}", d.serial));
    }
    cmd.args(["-device", "virtio-blk-device,drive=hd0"])
        .args(["-device", "virtio-rng-device"])
        .args(["-device", "i6300esb"])
        .args(["-device", "virtio-serial-device"])
        .arg("-chardev")
        .arg(format!(
            "socket,id=panel,path={},server=on,wait=off",
            files.panel.display()
        ))
        .args(["-device", "virtserialport,chardev=panel,name=cairn.panel"])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", files.qmp.display()));
    let forwards: String = cfg
        .https_port
        .map(|p| (p, 443))
        .into_iter()
        .chain(cfg.tcp_forwards.iter().copied())
        .map(|(h, g)| format!(",hostfwd=tcp:127.0.0.1:{h}-:{g}"))
        .collect();
    let restrict = if cfg.internet { "off" } else { "on" };
    match &cfg.ethernet {
        Ethernet::None => cmd.args(["-nic", "none"]),
        // `-netdev` + `-device`: `-nic model=virtio-net-device` is silently dropped on the
        // virt machine, which only places PCI NICs itself.
        Ethernet::User => cmd
            .arg("-netdev")
            .arg(format!("user,id=lan,restrict={restrict}{forwards}"))
            .args(["-device", "virtio-net-device,netdev=lan"]),
        Ethernet::Cable {
            local_port,
            remote_port,
            mac,
        } => cmd
            .arg("-netdev")
            .arg(format!(
                "dgram,id=lan,local.type=inet,local.host=127.0.0.1,local.port={local_port},\
                 remote.type=inet,remote.host=127.0.0.1,remote.port={remote_port}"
            ))
            .arg("-device")
            .arg(format!("virtio-net-device,netdev=lan,mac={mac}")),
        Ethernet::Tap { ifname, mac } => cmd
            .arg("-netdev")
            .arg(format!(
                "tap,id=lan,ifname={ifname},script=no,downscript=no"
            ))
            .arg("-device")
            .arg(format!("virtio-net-device,netdev=lan,mac={mac}")),
    };
    if !cfg.reboot {
        cmd.arg("-no-reboot");
    }
    Ok(cmd)
}

/// What the boards booting from an emulated SD card take: one card of a size QEMU accepts,
/// no forwards (not needed so far).
fn check_sd_board(machine: &str, cfg: &Config, files: &Files) -> anyhow::Result<()> {
    anyhow::ensure!(
        cfg.second_disk.is_none() && cfg.tcp_forwards.is_empty() && cfg.https_port.is_none(),
        "{machine}: one SD card, no forwards (not needed so far)"
    );
    let size = std::fs::metadata(&files.disk)?.len();
    anyhow::ensure!(
        size.is_power_of_two(),
        "{machine}: QEMU takes SD cards of a power-of-two size only ({} is {size} bytes): set disk_bytes",
        files.disk.display()
    );
    Ok(())
}

/// The console on the (next) serial port, the card on the SD controller, QMP.
fn sd_board_console_and_card(cmd: &mut Command, cfg: &Config, files: &Files) {
    match cfg.console {
        Console::Piped => cmd.args(["-serial", "stdio", "-monitor", "none"]),
        Console::Terminal => cmd.args(["-serial", "mon:stdio"]),
    };
    cmd.arg("-drive")
        .arg(format!("if=sd,format=raw,file={}", files.disk.display()))
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", files.qmp.display()));
}

/// From power-on to Linux's USB root hub on the Pis (u-boot enumerates USB first).
const LINUX_USB_TIMEOUT: Duration = Duration::from_secs(150);

/// Linux's line once the dwc2 controller's root hub watches its one port.
const RPI_ROOT_HUB: &str = "hub 1-0:1.0: 1 port detected";

/// The Raspberry Pi 3's MAC address prefix (the Raspberry Pi Foundation's OUI): a globally
/// administered address, so that Linux names QEMU's usb-net `eth0` as the Pi's own Ethernet
/// (a locally administered one would make it `usb0`).
const RPI_MAC: &str = "b8:27:eb:00:00:01";

/// Where raspi4b's PL011 writes, beside the disk ([`Qemu::pl011_output`]).
const PL011_LOG: &str = "pl011.log";

/// The Pi 4's device tree on its boot partition: what its GPU firmware reads (`config.txt`'s
/// `device_tree=`) and hands to u-boot.
const RPI4_DTB: &str = "bcm2711-rpi-4-b.dtb";

/// The raspi3b/raspi4b command line: the u-boot.bin of the card's boot partition as `-kernel`
/// (QEMU starts it as the GPU firmware would; on raspi4b with the boot partition's DTB, which
/// that firmware would load), the card on the SD controller, the console on the mini UART
/// (the second serial port), the network on usb-net (plugged in once Linux's USB runs). The
/// machine has its fixed memory; `memory_mib` does not apply.
fn raspi_command(cfg: &Config, files: &Files) -> anyhow::Result<Command> {
    let machine = match cfg.machine {
        Machine::Raspi4b => "raspi4b",
        _ => "raspi3b",
    };
    check_sd_board(machine, cfg, files)?;
    let boot_fat = fat_of(&files.disk, 1)?;
    let uboot_file = files.disk.with_file_name("u-boot.bin");
    std::fs::write(&uboot_file, fat_read(&boot_fat, "u-boot.bin")?)?;
    let mut cmd = Command::new("qemu-system-aarch64");
    cmd.args(["-M", machine, "-display", "none"])
        .arg("-kernel")
        .arg(&uboot_file)
        .arg("-serial");
    if cfg.machine == Machine::Raspi4b {
        let pl011 = files.disk.with_file_name(PL011_LOG);
        cmd.arg(format!("file:{}", pl011.display()));
        // raspi4b's u-boot stops silently without a device tree from the "firmware".
        let dtb_file = files.disk.with_file_name(format!("firmware-{RPI4_DTB}"));
        std::fs::write(&dtb_file, fat_read(&boot_fat, RPI4_DTB)?)?;
        cmd.arg("-dtb").arg(dtb_file);
    } else {
        cmd.arg("null");
    }
    sd_board_console_and_card(&mut cmd, cfg, files);
    let restrict = if cfg.internet { "off" } else { "on" };
    match &cfg.ethernet {
        Ethernet::None => {}
        Ethernet::User => {
            cmd.arg("-netdev")
                .arg(format!("user,id=lan,restrict={restrict}"));
            // The usb-net device itself is plugged in later (`Qemu::plug_usb_net_into_linux`
            // says why).
        }
        other => anyhow::bail!("{machine}: {other:?} is not wired up (not needed so far)"),
    }
    if !cfg.reboot {
        cmd.arg("-no-reboot");
    }
    Ok(cmd)
}

/// The bpim2u command line: the card on the SD controller and nothing else to boot from (the
/// boot ROM reads the SPL from the card), the console on UART0, the network on the GMAC. The
/// machine has its fixed 1 GiB and four cores; `memory_mib` does not apply.
fn bpim2u_command(cfg: &Config, files: &Files) -> anyhow::Result<Command> {
    check_sd_board("bpim2u", cfg, files)?;
    let mut cmd = Command::new("qemu-system-arm");
    cmd.args(["-M", "bpim2u", "-display", "none"]);
    sd_board_console_and_card(&mut cmd, cfg, files);
    let restrict = if cfg.internet { "off" } else { "on" };
    match &cfg.ethernet {
        Ethernet::None => cmd.args(["-nic", "none"]),
        Ethernet::User => cmd
            .arg("-nic")
            .arg(format!("user,model=gmac,restrict={restrict}")),
        other => anyhow::bail!("bpim2u: {other:?} is not wired up (not needed so far)"),
    };
    if !cfg.reboot {
        cmd.arg("-no-reboot");
    }
    Ok(cmd)
}

impl Drop for Qemu {
    fn drop(&mut self) {
        self.pull_power();
    }
}

/// A connection to QEMU's control socket (QMP).
pub struct Qmp(BufReader<UnixStream>);

impl Qmp {
    /// Connects (waiting up to 10 s for QEMU to open the socket) and enters command mode.
    pub fn connect(path: &Path) -> anyhow::Result<Qmp> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => return Err(e).context("connecting to QMP"),
            }
        };
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut q = Qmp(BufReader::new(stream));
        let mut greeting = String::new();
        q.0.read_line(&mut greeting)?;
        q.execute("qmp_capabilities", serde_json::json!({}))?;
        Ok(q)
    }

    /// Runs a QMP command and returns its `return` value.
    pub fn execute(
        &mut self,
        command: &str,
        arguments: serde_json::Value,
    ) -> anyhow::Result<serde_json::Value> {
        let msg = serde_json::json!({ "execute": command, "arguments": arguments });
        writeln!(self.0.get_mut(), "{msg}")?;
        loop {
            let mut line = String::new();
            anyhow::ensure!(
                self.0.read_line(&mut line)? > 0,
                "QMP closed during {command}"
            );
            let v: serde_json::Value = serde_json::from_str(&line)?;
            if let Some(ret) = v.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = v.get("error") {
                bail!("QMP {command}: {err}");
            }
            // else an asynchronous event: skip
        }
    }
}

/// Runs `hil-tests/clients/SCRIPT` (the host's Debian Python with a client library nobody here
/// wrote: slixmpp, Mastodon.py) with `args`, at most `bound`, and returns the one JSON object
/// it prints of what it saw (`{"error": …}` when it failed: the caller may want logs first).
pub fn run_client(
    script: &str,
    args: &[&str],
    bound: Duration,
) -> anyhow::Result<serde_json::Value> {
    use std::io::Read;
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("clients")
        .join(script);
    let mut child = Command::new("/usr/bin/python3")
        .arg(&path)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .context("python3 with the client libraries (scripts/setup installs them)")?;
    let start = Instant::now();
    while child.try_wait()?.is_none() {
        if start.elapsed() > bound {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{script} took over {bound:?}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let mut out = String::new();
    child
        .stdout
        .take()
        .context("no stdout")?
        .read_to_string(&mut out)?;
    serde_json::from_str(out.trim())
        .with_context(|| format!("{script}'s report is not JSON: {out}"))
}

/// A self-signed certificate for `domain` (P-256, valid 30 days: ejabberd sets a timer for the
/// expiry, which Erlang refuses beyond a few years), made by openssl as a third-party server's
/// administrator would: `cert.pem` and `key.pem` in `dir`.
pub fn self_signed(dir: &Path, domain: &str) -> anyhow::Result<()> {
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "30", "-subj"])
        .arg(format!("/CN={domain}"))
        .arg("-addext")
        .arg(format!("subjectAltName=DNS:{domain}"))
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .output()
        .context("openssl")?;
    anyhow::ensure!(
        out.status.success(),
        "openssl req: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Partition `n` (1-based) of an MBR disk image.
pub fn partition(disk: &Path, n: u32) -> anyhow::Result<cairn_bsp::mbr::Partition> {
    use std::os::unix::fs::FileExt;
    let mut sector = [0u8; 512];
    std::fs::File::open(disk)?.read_exact_at(&mut sector, 0)?;
    cairn_bsp::mbr::partition(&sector, n).with_context(|| disk.display().to_string())
}

/// Reads a disk image's data partition size from its MBR (entry 2) and its ext4 size from the
/// superblock: what `fdisk -l` and `dumpe2fs` would tell a person, in bytes.
pub fn data_partition_sizes(disk: &Path) -> anyhow::Result<(u64, u64)> {
    use std::os::unix::fs::FileExt;
    let data = partition(disk, 2)?;
    let mut sb = [0u8; 1024];
    std::fs::File::open(disk)?.read_exact_at(&mut sb, data.offset() + 1024)?;
    anyhow::ensure!(
        u16::from_le_bytes([sb[56], sb[57]]) == 0xEF53,
        "no ext4 on partition 2"
    );
    let blocks = u32::from_le_bytes(sb[4..8].try_into()?) as u64;
    let block = 1024u64 << u32::from_le_bytes(sb[24..28].try_into()?);
    Ok((data.bytes(), blocks * block))
}

/// A line channel to the test image's `crasher` fixture inside the guest: a virtio-serial port
/// (`cairn.test`) plugged in through QMP. Through it a test crashes the fixture, asks for
/// PID 1's memory and open files, and runs `cairn ctl` inside the guest.
pub struct FixturePort {
    _dir: tempfile::TempDir,
    reader: BufReader<UnixStream>,
    /// The peak RSS (KiB) the guest reported with the last [`FixturePort::update`].
    pub update_maxrss_kib: Option<u64>,
}

/// How long a fixture answer may take on a loaded CI machine.
pub const FIXTURE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `cairn update apply` may take in the guest (TCG, a loaded CI machine).
pub const UPDATE_TIMEOUT: Duration = Duration::from_secs(600);

impl FixturePort {
    /// Hot-plugs the virtio-serial port `cairn.test` and connects to it.
    pub fn plug(q: &mut Qemu) -> anyhow::Result<FixturePort> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("test.sock");
        q.qmp(
            "chardev-add",
            serde_json::json!({"id": "test", "backend": {"type": "socket", "data": {
                "addr": {"type": "unix", "data": {"path": path}},
                "server": true, "wait": false}}}),
        )?;
        q.qmp(
            "device_add",
            serde_json::json!({"driver": "virtserialport", "chardev": "test", "name": "cairn.test", "id": "testport"}),
        )?;
        let stream = UnixStream::connect(&path).context("connecting to the cairn.test port")?;
        stream.set_read_timeout(Some(FIXTURE_TIMEOUT))?;
        Ok(FixturePort {
            _dir: dir,
            reader: BufReader::new(stream),
            update_maxrss_kib: None,
        })
    }

    /// Sends one command line.
    pub fn send(&mut self, line: &str) -> anyhow::Result<()> {
        writeln!(self.reader.get_mut(), "{line}").context("writing to the cairn.test port")
    }

    fn read_line(&mut self, waiting_for: &str) -> anyhow::Result<String> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .with_context(|| format!("no {waiting_for:?} from the guest"))?;
        anyhow::ensure!(n > 0, "the port closed while waiting for {waiting_for:?}");
        Ok(line.trim_end().to_string())
    }

    /// The rest (trimmed) of the next line starting with `prefix`; other lines are skipped.
    pub fn expect(&mut self, prefix: &str) -> anyhow::Result<String> {
        let deadline = Instant::now() + FIXTURE_TIMEOUT;
        loop {
            anyhow::ensure!(Instant::now() < deadline, "no {prefix:?} from the guest");
            let line = self.read_line(prefix)?;
            if let Some(rest) = line.strip_prefix(prefix) {
                return Ok(rest.trim().to_string());
            }
        }
    }

    /// [`expect`](FixturePort::expect) for an answer that takes up to `timeout` (a benchmark's).
    pub fn expect_within(&mut self, prefix: &str, timeout: Duration) -> anyhow::Result<String> {
        self.reader.get_ref().set_read_timeout(Some(timeout))?;
        let deadline = Instant::now() + timeout;
        let answer = loop {
            if Instant::now() >= deadline {
                break Err(anyhow::anyhow!(
                    "no {prefix:?} from the guest within {timeout:?}"
                ));
            }
            match self.read_line(prefix) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        break Ok(rest.trim().to_string());
                    }
                }
                Err(e) => break Err(e),
            }
        };
        self.reader
            .get_ref()
            .set_read_timeout(Some(FIXTURE_TIMEOUT))?;
        answer
    }

    /// The fixture's next answer within `timeout`, its "started" line (sent when the port is
    /// plugged in) skipped.
    pub fn answer(&mut self, timeout: Duration) -> anyhow::Result<String> {
        loop {
            let line = self.expect_within("", timeout)?;
            if line != "started" && !line.starts_with("started ") {
                return Ok(line);
            }
        }
    }

    /// The `NAME: N kB` fields `names` (each with its colon) of a guest file such as
    /// `/proc/PID/status` or `/proc/meminfo`, KiB, in the order asked.
    pub fn kib_fields(&mut self, path: &str, names: &[&str]) -> anyhow::Result<Vec<u64>> {
        self.send(&format!("read {path}"))?;
        let text = self.expect("file")?;
        names
            .iter()
            .map(|name| {
                text.split(name)
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next())
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| anyhow::anyhow!("no {name} in {path}: {text}"))
            })
            .collect()
    }

    /// Runs `cairn ctl ARGS` in the guest; returns its output and exit code.
    pub fn ctl(&mut self, args: &str) -> anyhow::Result<(String, i32)> {
        self.send(&format!("ctl {args}"))?;
        let mut out = String::new();
        loop {
            let line = self.read_line("ctl-done")?;
            if let Some(l) = line.strip_prefix("ctl-out ") {
                out.push_str(l);
                out.push('\n');
            } else if let Some(code) = line.strip_prefix("ctl-done ") {
                return Ok((out, code.trim().parse()?));
            }
        }
    }

    /// Runs `cairn update ARGS` in the guest; with `from` = (device, offset, bytes), its
    /// standard input is those bytes of the guest's device (a bundle on a disk the test
    /// attached). Returns its output and exit code.
    pub fn update(
        &mut self,
        args: &str,
        from: Option<(&str, u64, u64)>,
    ) -> anyhow::Result<(String, i32)> {
        match from {
            Some((dev, at, n)) => self.send(&format!("update-from {dev} {at} {n} {args}"))?,
            None => self.send(&format!("update {args}"))?,
        }
        // An install writes and reads back the whole slot without a word in between.
        self.reader
            .get_ref()
            .set_read_timeout(Some(UPDATE_TIMEOUT))?;
        let mut out = String::new();
        let answer = loop {
            let line = match self.read_line("ctl-done") {
                Ok(l) => l,
                Err(e) => break Err(e),
            };
            if let Some(l) = line.strip_prefix("ctl-out ") {
                out.push_str(l);
                out.push('\n');
            } else if let Some(kib) = line.strip_prefix("ctl-maxrss ") {
                self.update_maxrss_kib = kib.trim().parse().ok();
            } else if let Some(code) = line.strip_prefix("ctl-done ") {
                break code.trim().parse().map_err(anyhow::Error::from);
            }
        };
        self.reader
            .get_ref()
            .set_read_timeout(Some(FIXTURE_TIMEOUT))?;
        Ok((out, answer?))
    }

    /// Runs `cairn bench ARGS` in the guest (test images); returns its output lines and exit
    /// code. Waits at most `timeout` in all.
    pub fn bench(&mut self, args: &str, timeout: Duration) -> anyhow::Result<(Vec<String>, i32)> {
        self.bench_start(args)?;
        self.bench_finish(args, timeout)
    }

    /// Starts `cairn bench ARGS` in the guest without waiting for it (a TCP sink that another
    /// plug's bench then sends to); [`FixturePort::bench_finish`] collects it.
    pub fn bench_start(&mut self, args: &str) -> anyhow::Result<()> {
        self.send(&format!("bench {args}"))
    }

    /// The output lines and exit code of the `cairn bench ARGS` started last, waiting at most
    /// `timeout`.
    pub fn bench_finish(
        &mut self,
        args: &str,
        timeout: Duration,
    ) -> anyhow::Result<(Vec<String>, i32)> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        let answer = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break Err(anyhow::anyhow!(
                    "cairn bench {args}: no end within {timeout:?}"
                ));
            }
            self.reader.get_ref().set_read_timeout(Some(left))?;
            let line = match self.read_line("bench-done") {
                Ok(l) => l,
                Err(e) => break Err(e),
            };
            if let Some(l) = line.strip_prefix("bench-out ") {
                out.push(l.to_string());
            } else if let Some(code) = line.strip_prefix("bench-done ") {
                break code.trim().parse().map_err(anyhow::Error::from);
            }
        };
        self.reader
            .get_ref()
            .set_read_timeout(Some(FIXTURE_TIMEOUT))?;
        Ok((out, answer?))
    }

    /// `cairn ctl status --json` in the guest: one object per service.
    pub fn status(&mut self) -> anyhow::Result<Vec<serde_json::Value>> {
        let (out, code) = self.ctl("status --json")?;
        anyhow::ensure!(code == 0, "cairn ctl status failed ({code}): {out}");
        let v: serde_json::Value = serde_json::from_str(&out)?;
        v.as_array()
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("status is not a list: {out}"))
    }
}

/// The entry of `name` in a `cairn ctl status --json` answer.
pub fn service<'a>(
    status: &'a [serde_json::Value],
    name: &str,
) -> anyhow::Result<&'a serde_json::Value> {
    status
        .iter()
        .find(|s| s["name"] == name)
        .ok_or_else(|| anyhow::anyhow!("no service {name} in {status:?}"))
}

/// `image` copied into `dir` (`disk.img`) with slot B as an install leaves it: slot A's
/// bytes, `words` (if any) added to its kernel command line, a record of build `build`, and
/// "try once" in the boot state. Returns the copy's path.
pub fn slot_b_on_trial(
    image: &Path,
    dir: &Path,
    words: &str,
    build: u64,
) -> anyhow::Result<PathBuf> {
    use cairn_update::bootstate::{SlotName, SlotRecord};
    use std::os::unix::fs::FileExt;
    let disk = dir.join("disk.img");
    std::fs::copy(image, &disk).with_context(|| format!("copying {}", image.display()))?;
    let [a, b] = cairn_bsp::mbr::SLOT_PARTITIONS.map(|n| partition(&disk, n));
    let (a, b) = (a?, b?);
    anyhow::ensure!(a.bytes() == b.bytes(), "slots of different sizes");
    let f = std::fs::File::options()
        .read(true)
        .write(true)
        .open(&disk)?;
    let mut buf = vec![0u8; 1 << 20];
    for at in (0..a.bytes()).step_by(buf.len()) {
        f.read_exact_at(&mut buf, a.offset() + at)?;
        f.write_all_at(&buf, b.offset() + at)?;
    }
    drop(f);
    if !words.is_empty() {
        let img = fat_spec(&disk, &b);
        append_in_extlinux(&img, &dir.join("extlinux.conf"), words)?;
    }
    let d = cairn_update::disk::BootDisk::new(&disk);
    let record = SlotRecord {
        version: format!("0.1.0-{build}"),
        build,
    };
    d.write_record(SlotName::B, Some(&record))?;
    let state = d.state()?.unwrap_or_default();
    d.write_state(&state.installing(SlotName::B).try_once(SlotName::B))?;
    Ok(disk)
}

/// Adds `files` (path, mode, bytes) to slot B's initramfs on `disk`, as a second cpio archive
/// after the first (the kernel unpacks both, the later over the earlier): a system that differs
/// from slot A's by these files. `dir` is for scratch files.
pub fn add_to_slot_b_initramfs(
    disk: &Path,
    dir: &Path,
    files: &[(&str, u32, &[u8])],
) -> anyhow::Result<()> {
    let img = fat_of(disk, cairn_bsp::mbr::SLOT_PARTITIONS[1])?;
    let mut cpio = fat_read(&img, "initramfs.cpio")?;
    // newc: "070701", thirteen 8-digit hex fields, the name with its NUL, the data; each of
    // the last two padded to 4 bytes.
    let mut entry = |name: &str, mode: u32, data: &[u8]| {
        let fields = [
            1,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            0,
            0,
            name.len() as u32 + 1,
            0,
        ];
        cpio.extend_from_slice(b"070701");
        for f in fields {
            cpio.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        cpio.extend_from_slice(name.as_bytes());
        cpio.push(0);
        cpio.resize(cpio.len().next_multiple_of(4), 0);
        cpio.extend_from_slice(data);
        cpio.resize(cpio.len().next_multiple_of(4), 0);
    };
    for (path, mode, data) in files {
        entry(path.trim_start_matches('/'), 0o100000 | mode, data);
    }
    entry("TRAILER!!!", 0, &[]);
    let local = dir.join("initramfs.cpio");
    std::fs::write(&local, cpio)?;
    fat_write(&img, &local, "initramfs.cpio")
}

/// Writes `cairn/claimed` holding `name` onto the data partition (ext4) of `disk`, with
/// e2fsprogs' debugfs: the card as setup would have left it (only a claimed plug pairs).
pub fn claim_as(disk: &Path, name: &str) -> anyhow::Result<()> {
    let fs = format!("{}?offset={}", disk.display(), partition(disk, 2)?.offset());
    let local = disk.with_file_name("claimed");
    std::fs::write(&local, format!("{name}\n"))?;
    let write = format!("write {} cairn/claimed", local.display());
    for request in ["mkdir cairn", &write] {
        let out = Command::new("debugfs")
            .args(["-w", "-R", request, &fs])
            .output()
            .context("debugfs (e2fsprogs)")?;
        // debugfs says what went wrong on stderr but exits 0 regardless.
        let said = String::from_utf8_lossy(&out.stderr);
        anyhow::ensure!(
            out.status.success() && !said.contains(": "),
            "debugfs -R {request:?}: {said}"
        );
    }
    Ok(())
}

/// Appends kernel command-line words in slot A's extlinux.conf of a disk image
/// (what a person would edit on the card's FAT partition), with mtools.
pub fn append_cmdline(disk: &Path, words: &str) -> anyhow::Result<()> {
    let img = fat_of(disk, cairn_bsp::mbr::SLOT_PARTITIONS[0])?;
    append_in_extlinux(&img, &disk.with_file_name("extlinux.conf"), words)
}

/// Puts `words` first on the `append` line of `extlinux/extlinux.conf` in the FAT at `img`
/// (mtools' `FILE@@OFFSET`), through the scratch file `local`.
fn append_in_extlinux(img: &str, local: &Path, words: &str) -> anyhow::Result<()> {
    let conf = String::from_utf8(fat_read(img, "extlinux/extlinux.conf")?)?;
    anyhow::ensure!(conf.contains("  append "), "no append line in {conf}");
    std::fs::write(
        local,
        conf.replace("  append ", &format!("  append {words} ")),
    )?;
    fat_write(img, local, "extlinux/extlinux.conf")
}

/// A card's own boot chain on a first boot's `console`: boot.scr choosing slot A, the slot's
/// extlinux.conf with the board's DTB `dtb` (its file name), the kernel on the device tree of
/// `model` (its `Machine model:`), and the data partition on the card grown. (The u-boot
/// banner is the caller's to check: the Pi 4's u-boot prints it on another UART.)
pub fn check_card_boot(console: &[String], dtb: &str, model: &str) -> anyhow::Result<()> {
    let has = |needle: &str| console.iter().any(|l| l.contains(needle));
    anyhow::ensure!(
        console
            .iter()
            .any(|l| l.starts_with("cairn: boot: slot a ")),
        "boot.scr did not choose slot a"
    );
    anyhow::ensure!(has(&format!("/{dtb}")), "u-boot did not load {dtb}");
    anyhow::ensure!(
        has(&format!("Machine model: {model}")),
        "not the device tree of {model}"
    );
    let grew = console
        .iter()
        .find(|l| l.contains("data partition /dev/mmcblk0p2"))
        .context("no data partition line")?;
    anyhow::ensure!(grew.contains("grew to"), "{grew}");
    Ok(())
}

/// A copy of the flashed image `flashed` in `dir` as a card of `card_bytes`: the image's
/// bytes, then zeros to the card's end, as `dd` leaves a bigger card.
pub fn card_copy(flashed: &Path, dir: &Path, card_bytes: u64) -> anyhow::Result<PathBuf> {
    let card = dir.join("card.img");
    std::fs::copy(flashed, &card)?;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&card)?
        .set_len(card_bytes)?;
    Ok(card)
}

/// A card size QEMU's SD models accept (a power of two), bigger than the images.
pub const CARD_BYTES: u64 = 512 << 20;

/// The card of `flashed` (an image of a board QEMU emulates with its own bootloader: rpi3,
/// rpi4, bpi-m2u) as a user's first boot finds it, in `dir`, and the machine that boots it:
/// the image's bytes on a card of [`CARD_BYTES`], with the emulation-only changes to that
/// copy's DTBs (the image keeps the real ones):
/// - raspi3b: QEMU's BCM2835 power manager resets the machine the moment the watchdog is armed
///   (it has no countdown), so the watchdog node is disabled;
/// - raspi4b: [`RPI4_EMULATION`], in the boot partition's DTB (the "firmware's", which u-boot
///   gets) and in slot A's (the kernel's);
/// - bpim2u: the generic timer's rate. The card's u-boot sets CNTFRQ to the R40's 24 MHz, but
///   QEMU's Cortex-A7 counter ticks at 62.5 MHz, so the guest's clock ran 2.6 times fast (its
///   60 s readiness timeouts fired after 23 s). The timer node gets QEMU's rate (the DT's
///   `clock-frequency` overrides CNTFRQ), in slot A's DTB (the kernel's).
pub fn emulated_card(board: &str, flashed: &Path, dir: &Path) -> anyhow::Result<Config> {
    let machine = match board {
        "rpi3" => Machine::Raspi3b,
        "rpi4" => Machine::Raspi4b,
        "bpi-m2u" => Machine::Bpim2u,
        other => bail!("no emulated card for board {other}"),
    };
    let card = card_copy(flashed, dir, CARD_BYTES)?;
    let slot_a = cairn_bsp::mbr::SLOT_PARTITIONS[0];
    match machine {
        Machine::Raspi3b => edit_card_dtb(
            &card,
            slot_a,
            "bcm2837-rpi-3-b.dtb",
            &[DtEdit::Disable("/soc/watchdog@7e100000")],
        )?,
        Machine::Raspi4b => {
            for part in [1, slot_a] {
                edit_card_dtb(&card, part, RPI4_DTB, RPI4_EMULATION)?;
            }
        }
        Machine::Bpim2u => edit_card_dtb(
            &card,
            slot_a,
            "sun8i-r40-bananapi-m2-ultra.dtb",
            &[DtEdit::SetU32("/timer", "clock-frequency", 62_500_000)],
        )?,
        Machine::Virt => {}
    }
    let mut cfg = Config::new(card);
    cfg.machine = machine;
    Ok(cfg)
}

/// What raspi4b needs changed in the Pi 4's device tree, for parts QEMU lacks or models
/// otherwise than the BCM2711:
/// - no PCIe host (the VL805's USB 3) and no GENET Ethernet;
/// - the HDMI block's clocks, interrupt controller, HDMI and I2C at `7ef…` (its drivers
///   crash), the AVS thermal monitor, the RNG200 (a synchronous external abort);
/// - the watchdog: QEMU resets the machine the moment it is armed, as on raspi3b;
/// - the console's mini UART: QEMU does not model its divisor latch, so the divisor's high
///   byte, which Linux writes while setting the speed, lands in the interrupt enable register.
///   At the Pi 4's clock (562.5 MHz here, divisor 610 = 0x262 at 115200 Bd) that turns the
///   transmit interrupt on behind the driver's back: once Linux opens the console, its CPU
///   takes that interrupt forever (RCU stall reports; the boot hangs when that CPU is the
///   one running init). A 200 MHz clock (divisor 217: high byte 0) avoids it;
/// - the card: QEMU puts it on the Arasan SDHCI at `7e300000` (a real Pi 4's Wi-Fi slot) and
///   leaves emmc2 (a real Pi 4's card slot) empty, where Linux's probe times out 10 s per
///   command. So emmc2 goes, and the Arasan slot loses the Wi-Fi's power sequence (it needs
///   the firmware's GPIO expander, which QEMU's firmware does not answer) and the Wi-Fi
///   chip's node.
pub const RPI4_EMULATION: &[DtEdit<'static>] = &[
    DtEdit::Disable("/scb/pcie@7d500000"),
    DtEdit::Disable("/scb/ethernet@7d580000"),
    DtEdit::Disable("/soc/clock@7ef00000"),
    DtEdit::Disable("/soc/interrupt-controller@7ef00100"),
    DtEdit::Disable("/soc/hdmi@7ef00700"),
    DtEdit::Disable("/soc/i2c@7ef04500"),
    DtEdit::Disable("/soc/hdmi@7ef05700"),
    DtEdit::Disable("/soc/i2c@7ef09500"),
    DtEdit::Disable("/soc/avs-monitor@7d5d2000"),
    DtEdit::Disable("/soc/rng@7e104000"),
    DtEdit::Disable("/soc/watchdog@7e100000"),
    DtEdit::DeleteProperty("/soc/serial@7e215040", "clocks"),
    DtEdit::SetU32("/soc/serial@7e215040", "clock-frequency", 200_000_000),
    DtEdit::Disable("/emmc2bus/mmc@7e340000"),
    DtEdit::DeleteProperty("/soc/mmc@7e300000", "mmc-pwrseq"),
    DtEdit::DeleteNode("/soc/mmc@7e300000/wifi@1"),
];

/// raspi3b and raspi4b emulate four Cortex-A53s or A72s in software and enumerate USB
/// slowly: more time than the virt board's.
pub const PI_BOOT_TIMEOUT: Duration = Duration::from_secs(240);

/// From ready to the lease: the Pi's USB NIC comes late and DHCP may retry.
const PI_LEASE_TIMEOUT: Duration = Duration::from_secs(60);

/// A Raspberry Pi card's first boot under QEMU, as [`PiCard::boot`] leaves it.
pub struct PiCard {
    /// The running board.
    pub q: Qemu,
    /// The machine and card it booted.
    pub cfg: Config,
    /// The data partition's size in the image, before the card's first boot grew it.
    pub part_before: u64,
    /// The console at the lease.
    pub console: Vec<String>,
    _dir: tempfile::TempDir,
}

impl PiCard {
    /// Boots a copy of `cairn-BOARD.img` (rpi3, rpi4) as [`emulated_card`] makes it, to
    /// `cairn: ready` (its time printed) and then to the DHCP lease on the Pi's Ethernet
    /// (QEMU's usb-net, plugged in once Linux's USB runs) from QEMU's restricted user network.
    pub fn boot(board: &str) -> anyhow::Result<PiCard> {
        let flashed = image(&format!("cairn-{board}.img"))?;
        let (part_before, _) = data_partition_sizes(&flashed)?;
        let dir = tempfile::tempdir()?;
        let cfg = emulated_card(board, &flashed, dir.path())?;
        let q = Qemu::boot(&cfg)?;
        q.wait_line("cairn: ready", PI_BOOT_TIMEOUT)?;
        let ready = q.time_of("cairn: ready").context("no time for ready")?;
        eprintln!("{board}: ready {:.1} s after power-on", ready.as_secs_f64());
        q.wait_line(
            "cairn: net: eth0 10.0.2.15/24 no router (lease 86400 s)",
            PI_LEASE_TIMEOUT,
        )?;
        let console = q.console();
        Ok(PiCard {
            q,
            cfg,
            part_before,
            console,
            _dir: dir,
        })
    }

    /// Whether a console line contains `needle`.
    pub fn has(&self, needle: &str) -> bool {
        self.console.iter().any(|l| l.contains(needle))
    }

    /// The console's `cairn: error` lines but the one for `led` ("status LED", "alert LED")
    /// on the firmware's GPIO expander line 2, which QEMU's firmware mailbox does not answer.
    pub fn errors_besides_expander_led(&self, led: &str) -> Vec<&String> {
        let expected = format!("cairn: error: {led}: GPIO chip 'raspberrypi-exp-gpio' line 2:");
        self.console
            .iter()
            .filter(|l| l.starts_with("cairn: error") && !l.starts_with(&expected))
            .collect()
    }

    /// Pulls the power (no power button QEMU can press on either Pi), then checks that the
    /// first boot grew the data partition to the card's end.
    pub fn pull_power_and_check_grown(&mut self) -> anyhow::Result<()> {
        self.q.pull_power();
        check_grown_to_card(&self.q.disk(), CARD_BYTES, self.part_before)
    }
}

/// An update's first boot on a card QEMU boots with the board's own bootloader, as far as the
/// board's part goes: `card` (after its first boot, as `cfg` booted it) gets slot B made from
/// slot A and put on trial as `cairn update apply` leaves it. Boots it once more: the card's
/// `boot.scr` counts the try down with its u-boot's own `mmc write` and boots slot B's kernel,
/// and PID 1 reads the counted try from the card. Then the power is pulled, and the state read
/// back from the card still has B on trial with one try used. What follows (the commit once
/// every service is ready, or the fallback after the last try) is PID 1's and u-boot's script
/// alike on every board, and is tested on qemu-virt, where it costs seconds instead of a
/// minute of emulated Lua.
pub fn check_card_update_trial(cfg: &Config, card: &Path, timeout: Duration) -> anyhow::Result<()> {
    use cairn_update::bootstate::{BootState, SlotName, TRIES};
    let dir = tempfile::tempdir()?;
    let mut cfg = cfg.clone();
    cfg.image = slot_b_on_trial(card, dir.path(), "", 90_001)?;
    let state_of = |disk: &Path| -> anyhow::Result<BootState> {
        cairn_update::disk::BootDisk::new(disk)
            .state()?
            .context("no boot state on the card")
    };
    let before = state_of(&cfg.image)?;
    let mut q = Qemu::boot(&cfg)?;
    q.wait_line(
        &format!(
            "cairn: boot: slot b (good a, on trial b, {} tries left)",
            TRIES - 1
        ),
        timeout,
    )?;
    let kernel = q.wait_line("Kernel command line:", timeout)?;
    anyhow::ensure!(kernel.contains("cairn.slot=b"), "{kernel}");
    q.wait_line(
        &format!("cairn: update: slot b on trial (try 1 of {TRIES})"),
        timeout,
    )?;
    q.pull_power();
    // The count as the Rust model of boot.scr's decision has it.
    let (slot, counted) = before.boot();
    anyhow::ensure!(
        slot == SlotName::B,
        "the model boots {slot:?} from {before:?}"
    );
    let after = state_of(&q.disk())?;
    anyhow::ensure!(
        Some(after) == counted,
        "the card's boot state after u-boot counted the try: {after:?} (before: {before:?})"
    );
    Ok(())
}

/// After a first boot on a card of `card_bytes` (a copy of an image whose data partition had
/// `part_before` bytes): the data partition and its ext4 were grown to the card's end (within
/// the 4 KiB alignment and ext4's rounding).
pub fn check_grown_to_card(disk: &Path, card_bytes: u64, part_before: u64) -> anyhow::Result<()> {
    let (part, fs) = data_partition_sizes(disk)?;
    anyhow::ensure!(part > part_before, "partition {part} (was {part_before})");
    let end = card_bytes - partition(disk, 2)?.offset();
    anyhow::ensure!(
        part > end - (4 << 20) && part <= end,
        "partition {part} of {end}"
    );
    anyhow::ensure!(fs > part - (4 << 20) && fs <= part, "ext4 {fs} in {part}");
    Ok(())
}

/// An emulation-only change to a device tree (`fdtput`).
#[derive(Clone, Copy, Debug)]
pub enum DtEdit<'a> {
    /// Marks the node (a full path) `status = "disabled"`.
    Disable(&'a str),
    /// Deletes the node's property.
    DeleteProperty(&'a str, &'a str),
    /// Deletes the node and what it holds.
    DeleteNode(&'a str),
    /// Sets the node's property to one 32-bit cell.
    SetU32(&'a str, &'a str, u32),
}

/// Emulation only: applies `edits` to the DTB `dtb` in the FAT of partition `part` of the
/// card copy `disk`, for devices an emulated SoC models otherwise than the real one. The image
/// keeps the real DTB.
pub fn edit_card_dtb(
    disk: &Path,
    part: u32,
    dtb: &str,
    edits: &[DtEdit<'_>],
) -> anyhow::Result<()> {
    let img = fat_of(disk, part)?;
    let local = disk.with_file_name(format!("p{part}-{dtb}"));
    std::fs::write(&local, fat_read(&img, dtb)?)?;
    for edit in edits {
        let mut cmd = Command::new("fdtput");
        match edit {
            DtEdit::Disable(node) => cmd
                .args(["-t", "s"])
                .arg(&local)
                .args([node, "status", "disabled"]),
            DtEdit::DeleteProperty(node, prop) => cmd.arg("-d").arg(&local).args([node, prop]),
            DtEdit::DeleteNode(node) => cmd.arg("-r").arg(&local).arg(node),
            DtEdit::SetU32(node, prop, value) => {
                cmd.args(["-t", "u"])
                    .arg(&local)
                    .args([*node, *prop, &value.to_string()])
            }
        };
        let out = cmd.output().context("fdtput (device-tree-compiler)")?;
        anyhow::ensure!(
            out.status.success(),
            "fdtput {edit:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    fat_write(&img, &local, dtb)
}

/// The FAT of partition `part` of `disk`, as mtools names it (`FILE@@OFFSET`).
pub fn fat_of(disk: &Path, part: u32) -> anyhow::Result<String> {
    Ok(fat_spec(disk, &partition(disk, part)?))
}

/// The FAT of partition `p` of `disk`, as mtools names it (`FILE@@OFFSET`).
fn fat_spec(disk: &Path, p: &cairn_bsp::mbr::Partition) -> String {
    format!("{}@@{}", disk.display(), p.offset())
}

/// The bytes of `path` in the FAT at `img` (mtools' `FILE@@OFFSET`).
pub fn fat_read(img: &str, path: &str) -> anyhow::Result<Vec<u8>> {
    let out = Command::new("mtype")
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["-i", img, &format!("::/{path}")])
        .output()
        .context("mtype (mtools)")?;
    anyhow::ensure!(
        out.status.success(),
        "mtype {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out.stdout)
}

/// Copies `local` over `path` in the FAT at `img` (mtools' `FILE@@OFFSET`).
pub fn fat_write(img: &str, local: &Path, path: &str) -> anyhow::Result<()> {
    let out = Command::new("mcopy")
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["-o", "-i", img])
        .arg(local)
        .arg(format!("::/{path}"))
        .output()
        .context("mcopy (mtools)")?;
    anyhow::ensure!(
        out.status.success(),
        "mcopy {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_bsp::mbr;

    #[test]
    fn partitions_are_read_from_the_image_and_a_bad_table_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk.img");
        let data = mbr::Partition {
            start: 34816,
            sectors: 65536,
            kind: 0x83,
            bootable: false,
        };
        let boot = mbr::Partition {
            start: 2048,
            sectors: 32768,
            kind: 0x0C,
            bootable: true,
        };
        std::fs::write(&disk, mbr::encode(&[boot, data], 1).unwrap()).unwrap();
        assert_eq!(partition(&disk, 2).unwrap(), data);
        assert_eq!(partition(&disk, 1).unwrap().offset(), 1 << 20);
        std::fs::write(&disk, [0u8; 512]).unwrap();
        let e = format!("{:#}", partition(&disk, 2).unwrap_err());
        assert_eq!(e, format!("{}: no MBR signature", disk.display()));
    }

    #[test]
    fn bench_figures_merge_into_the_file_another_example_wrote() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("social.json");
        let out = out.to_str().unwrap();
        let theirs = serde_json::json!({"post_to_remote_timeline_ms": 900, "targets": {"post_to_remote_timeline_ms": 5000}, "image_xz_mib": 1});
        write_bench(out, &theirs).unwrap();
        let ours = serde_json::json!({"snac_rss_mib_load": 10.5, "targets": {"snac_rss_mib_load": 24}, "image_xz_mib": 22.8});
        merge_bench(out, &ours).unwrap();
        let all: serde_json::Value = serde_json::from_slice(&std::fs::read(out).unwrap()).unwrap();
        assert_eq!(all["post_to_remote_timeline_ms"], 900);
        assert_eq!(all["snac_rss_mib_load"], 10.5);
        assert_eq!(all["image_xz_mib"], 22.8);
        assert_eq!(all["targets"]["post_to_remote_timeline_ms"], 5000);
        assert_eq!(all["targets"]["snac_rss_mib_load"], 24);
        std::fs::write(out, "[1]").unwrap();
        assert!(merge_bench(out, &ours)
            .unwrap_err()
            .to_string()
            .contains("not a JSON object"));
        std::fs::write(out, "{").unwrap();
        assert!(merge_bench(out, &ours)
            .unwrap_err()
            .to_string()
            .contains("not JSON"));
        assert_eq!(std::fs::read_to_string(out).unwrap(), "{");
    }
}

//! `cairn-image`: builds a board's kernel and flashable image. Called by `scripts/image`.

use anyhow::Context;
use cairn_bsp::board::Bootloader;
use cairn_image::{
    artifacts, execute, imager_entry, kernel, load_board, plan, remove_artifacts, uboot_env,
    ImagerRelease, Inputs,
};
use cairn_update::keys::{SigningKey, TrustedKeys};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "cairn-image",
    about = "Build Cairn kernels and flashable disk images"
)]
struct Cli {
    /// Directory of board definitions.
    #[arg(long, default_value = "board/boards", global = true)]
    boards: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

/// What an image and its update bundle are built from.
#[derive(clap::Args)]
struct ImageArgs {
    board: String,
    /// The cairn binary for the board's target.
    #[arg(long)]
    cairn: PathBuf,
    /// The kernel Image.
    #[arg(long)]
    kernel: PathBuf,
    /// Directories of service manifests to bundle (repeatable).
    #[arg(long)]
    services: Vec<PathBuf>,
    /// The system layer (a squashfs from `cairn-image system`), a file in the system slot.
    #[arg(long)]
    system: Option<PathBuf>,
    /// The board's boot packages as `cairn-image boot-files` unpacked them (boards whose
    /// bootloader goes on the card).
    #[arg(long)]
    boot_files: Option<PathBuf>,
    /// Extra kernel command-line words.
    #[arg(long, default_value = "")]
    append: String,
    /// Size of each of the two system slots (room for the next versions too).
    #[arg(long, default_value_t = 64)]
    slot_mib: u64,
    #[arg(long, default_value_t = 64)]
    data_mib: u64,
    /// The update signing key (PKCS#8): its public half is the key the image trusts, and it
    /// signs the bundle. Without it the image accepts no update.
    #[arg(long)]
    signing_key: Option<PathBuf>,
    /// The build number (monotonic; an update must be newer than the running one).
    #[arg(long, default_value_t = 0)]
    build: u64,
}

impl ImageArgs {
    /// The signing key, if given.
    fn key(&self) -> anyhow::Result<Option<SigningKey>> {
        let Some(path) = &self.signing_key else {
            return Ok(None);
        };
        let doc = std::fs::read(path).with_context(|| format!("{}", path.display()))?;
        let key =
            SigningKey::from_pkcs8(&doc).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(Some(key))
    }

    /// The plan of the image, and the key.
    fn plan(
        self,
        boards: &std::path::Path,
    ) -> anyhow::Result<(cairn_image::Plan, Option<SigningKey>)> {
        let key = self.key()?;
        let mut update_keys = TrustedKeys::default();
        if let Some(k) = &key {
            update_keys
                .add(k.public(), "build")
                .map_err(anyhow::Error::msg)?;
        }
        let (board, board_text) = load_board(boards, &self.board)?;
        let inputs = Inputs {
            board,
            board_text,
            cairn: self.cairn,
            kernel: self.kernel,
            services: self.services,
            system: self.system,
            boot_files: self.boot_files,
            append: self.append,
            slot_mib: self.slot_mib,
            data_mib: self.data_mib,
            update_keys,
            build: self.build,
            version: version(self.build),
        };
        Ok((plan(&inputs)?, key))
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Print the board's Rust target triple (checks the board exists).
    Target { board: String },
    /// Build (or find in the cache) the board's kernel; prints the Image's path.
    Kernel {
        board: String,
        /// Cache directory (entries are keyed by the hash of all inputs).
        #[arg(long)]
        cache: PathBuf,
        #[arg(long, default_value_t = 2)]
        jobs: usize,
        /// The kernel source pin (default: kernel-source.toml beside the boards directory).
        #[arg(long)]
        source: Option<PathBuf>,
    },
    /// Build the flashable image (+ .img.xz, .bmap, .sha256).
    Build {
        #[command(flatten)]
        image: ImageArgs,
        /// Skip .img.xz/.bmap/.sha256 (test images, scripts/run); removes stale ones.
        #[arg(long)]
        no_artifacts: bool,
        #[arg(long)]
        out: PathBuf,
        /// Where the `.img.xz` will be published, for the Raspberry Pi Imager entry (Pi
        /// boards); a placeholder until a release names it.
        #[arg(long)]
        download_url: Option<String>,
        /// The release date (`YYYY-MM-DD`) in that entry; needed for the Pi boards' artifacts.
        #[arg(long)]
        release_date: Option<String>,
    },
    /// Build the signed update bundle `cairn-BOARD-VERSION.cupd` of the same system.
    Bundle {
        #[command(flatten)]
        image: ImageArgs,
        /// The directory to write it in.
        #[arg(long)]
        out_dir: PathBuf,
    },
    /// Make an Ed25519 signing key (PKCS#8, mode 0600) at PATH unless one is there; prints
    /// its public half.
    UpdateKey { path: PathBuf },
    /// Build (or find in the cache) the board's system layer; prints its path, and what each
    /// package costs on stderr.
    System {
        board: String,
        /// Cache directory (package lists, .debs, layers keyed by the hash of their pins).
        #[arg(long)]
        cache: PathBuf,
        /// The pin file.
        #[arg(long, default_value = "services/packages.toml")]
        pins: PathBuf,
    },
    /// Fetch and unpack (or find in the cache) the pinned packages of the board's bootloader
    /// that go on the card; prints their directory, or nothing for a board without any.
    BootFiles {
        board: String,
        /// Cache directory (package lists, .debs, unpacked packages keyed by their pins).
        #[arg(long)]
        cache: PathBuf,
        /// The pin file.
        #[arg(long, default_value = "board/boot-packages.toml")]
        pins: PathBuf,
    },
    /// Write a u-boot environment flash bank for QEMU that boots without a countdown.
    UbootEnv {
        #[arg(long)]
        uboot: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
}

/// The version people read: the release's and the build number.
fn version(build: u64) -> String {
    format!("{}-{build}", env!("CARGO_PKG_VERSION"))
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("cairn-image: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Cmd::Target { board } => {
            let (b, _) = load_board(&cli.boards, &board)?;
            println!("{}", b.target);
        }
        Cmd::Kernel {
            board,
            cache,
            jobs,
            source,
        } => {
            let (b, _) = load_board(&cli.boards, &board)?;
            let source = match source {
                Some(file) => kernel::Source::load(&file)?,
                None => kernel::Source::for_boards(&cli.boards)?,
            };
            let image = kernel::build(&b, &cli.boards, &source, &cache, jobs)?;
            println!("{}", image.display());
        }
        Cmd::Build {
            image,
            no_artifacts,
            out,
            download_url,
            release_date,
        } => {
            let (board, _) = load_board(&cli.boards, &image.board)?;
            let (plan, _) = image.plan(&cli.boards)?;
            execute(&plan, &out).with_context(|| format!("building {}", out.display()))?;
            if no_artifacts {
                remove_artifacts(&out)?; // stale ones would not match the new image
            } else {
                artifacts(&out)?;
                let name = out.file_name().unwrap_or_default().to_string_lossy();
                let url = download_url
                    .unwrap_or_else(|| format!("https://download.example.invalid/{name}.xz"));
                let release_date = release_date.unwrap_or_default();
                let release = ImagerRelease {
                    url: &url,
                    release_date: &release_date,
                };
                if matches!(board.bootloader, Bootloader::RpiFirmware { .. })
                    && release.release_date.is_empty()
                {
                    anyhow::bail!("the Raspberry Pi Imager entry needs --release-date YYYY-MM-DD");
                }
                if let Some(entry) = imager_entry(&board, &out, &release)? {
                    eprintln!("cairn-image: wrote {}", entry.display());
                }
            }
            eprintln!(
                "cairn-image: wrote {} ({} MiB)",
                out.display(),
                plan.total_bytes() >> 20
            );
        }
        Cmd::Bundle { image, out_dir } => {
            let (board, build) = (image.board.clone(), image.build);
            let (plan, key) = image.plan(&cli.boards)?;
            let key = key.ok_or_else(|| anyhow::anyhow!("a bundle needs --signing-key"))?;
            let version = version(build);
            let out = cairn_image::bundle(&plan, &board, &version, build, &key, &out_dir)?;
            eprintln!("cairn-image: wrote {}", out.display());
            println!("{}", out.display());
        }
        Cmd::UpdateKey { path } => {
            if !path.exists() {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let doc = SigningKey::generate_pkcs8().map_err(anyhow::Error::msg)?;
                let mut f = std::fs::File::options()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .with_context(|| format!("{}", path.display()))?;
                f.write_all(&doc)?;
                f.sync_all()?;
                eprintln!(
                    "cairn-image: made the update signing key {}",
                    path.display()
                );
            }
            let doc = std::fs::read(&path).with_context(|| format!("{}", path.display()))?;
            let key = SigningKey::from_pkcs8(&doc)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            println!("{}", hex::encode(key.public()));
        }
        Cmd::System { board, cache, pins } => {
            let (b, _) = load_board(&cli.boards, &board)?;
            let pins = cairn_image::system::Pins::load(&pins)?;
            let (layer, costs) =
                cairn_image::system::build(&pins, cairn_image::system::debian_arch(&b)?, &cache)?;
            let size = std::fs::metadata(&layer)?.len();
            let unpacked: u64 = costs.iter().map(|c| c.bytes).sum();
            for c in &costs {
                eprintln!(
                    "cairn-image: system layer: {:>8} KiB  {} {}",
                    c.bytes >> 10,
                    c.name,
                    c.version
                );
            }
            eprintln!(
                "cairn-image: system layer: {} KiB unpacked, {} KiB as squashfs (xz)",
                unpacked >> 10,
                size >> 10
            );
            println!("{}", layer.display());
        }
        Cmd::BootFiles { board, cache, pins } => {
            let (b, _) = load_board(&cli.boards, &board)?;
            if cairn_image::card_packages(&b).is_empty() {
                return Ok(());
            }
            let pins = cairn_image::system::Pins::load(&pins)?;
            let dir =
                cairn_image::system::unpack(&pins, cairn_image::system::debian_arch(&b)?, &cache)?;
            println!("{}", dir.display());
        }
        Cmd::UbootEnv { uboot, out } => {
            let bin = std::fs::read(&uboot).with_context(|| format!("{}", uboot.display()))?;
            let mut env = uboot_env::default_env(&bin)?;
            // No countdown, and only the disk: QEMU has no other boot device here.
            uboot_env::set(&mut env, "bootdelay", "-2");
            uboot_env::set(&mut env, "boot_targets", "virtio0");
            std::fs::write(&out, uboot_env::flash_image(&env)?)?;
        }
    }
    Ok(())
}

//! `cairn backup`: the services' own backups (`cairn_web::backup`), which the web service makes
//! on a schedule. `restore` brings them back on a new plug from the recovery key.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use cairn_vault::OwnerSecret;
use clap::{Parser, Subcommand};

/// The backups' folder in the web's state directory.
pub const BACKUP_DIR: &str = "backup";
/// The folders a plug backs up, as `services/web.toml` lists them.
pub const DEFAULT_SOURCES: &[&str] = &["/data/prosody", "/data/snac"];

/// The services' backups (Jabber's and the fediverse's data), made by the web service every day.
#[derive(Parser, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// On a new plug: finds the latest backup through the storage node's partners (rejoin them
    /// first) and writes each folder back. Stop the services first; a folder that holds
    /// anything is refused.
    Restore {
        /// The recovery key (asked for when not given).
        #[arg(long, value_name = "KEY")]
        recovery_key: Option<String>,
        /// The web's state directory, where the backups' key and vault go.
        #[arg(long, value_name = "DIR", default_value = super::web::DEFAULT_DATA)]
        data: PathBuf,
        /// The storage node's control socket.
        #[arg(long, value_name = "SOCKET", default_value = crate::sys::paths::NODE_SOCKET)]
        node: PathBuf,
        /// A folder to bring back (as the web backs them up).
        #[arg(long = "source", value_name = "DIR", default_values = DEFAULT_SOURCES)]
        sources: Vec<PathBuf>,
    },
}

/// The backups of the services' `sources`, kept in `data` and placed through the node.
pub fn backups(
    data: &Path,
    node: &Path,
    sources: Vec<PathBuf>,
    every: Duration,
) -> cairn_web::backup::Backups {
    cairn_web::backup::Backups {
        dir: data.join(BACKUP_DIR),
        sources,
        place: super::web::node_placement(node),
        every,
        status: Arc::default(),
    }
}

pub fn run(args: Args) -> Result<()> {
    match args.command {
        Command::Restore {
            recovery_key,
            data,
            node,
            sources,
        } => {
            let key = match recovery_key {
                Some(k) => k,
                None => super::vault::prompt("Recovery key: ", false)?,
            };
            let owner = OwnerSecret::from_recovery_key(&key)?;
            let b = backups(&data, &node, sources, Duration::ZERO);
            let r = cairn_web::backup::restore(&b, &owner)?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "backup snapshot {} restored", r.snapshot)?;
            for (dir, files) in &r.folders {
                writeln!(out, "{}: {files} files", dir.display())?;
            }
            Ok(())
        }
    }
}

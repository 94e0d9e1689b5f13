//! The fediverse between two plugs, timed: `post_to_remote_timeline_ms`, a post on cellar →
//! in attic's home timeline, as attic's owner's Mastodon client (Mastodon.py, polling every
//! 0.2 s) sees it; the median of `CAIRN_POSTS` posts (default 7). Two product images on a LAN
//! of their own (as `hil-tests/tests/social_federation.rs`), set up through their pages, each
//! trusting the other on its Social page; attic's owner follows cellar's.
//!
//! Usage: `social_federation_bench [OUT.json]` (default target/bench/social.json); its keys
//! are merged into OUT when it exists (the single-plug figures are written there too).

use cairn_hil::browser::{
    social_fingerprint, social_first_password, trust_on_social_page, LanPlug,
};
use cairn_hil::{run_client, write_bench, PrivateLan};
use std::time::Duration;

/// The owners' passphrase.
const PASSPHRASE: &str = "correct horse battery staple";
/// After setup snac restarts for the device's new name and makes the owner's key.
const ACCOUNT_MADE: Duration = Duration::from_secs(150);

fn main() -> anyhow::Result<()> {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "target/bench/social.json".into());
    let posts: usize = std::env::var("CAIRN_POSTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(7)
        .max(5);
    let lan = PrivateLan::new(2)?;
    let a = LanPlug::boot(&lan.taps[0], "52:54:00:00:00:5a")?;
    let c = LanPlug::boot(&lan.taps[1], "52:54:00:00:00:5b")?;
    let mut ba = a.set_up("attic", PASSPHRASE)?;
    let mut bc = c.set_up("cellar", PASSPHRASE)?;
    let (pa, pc) = (a.url("/admin/social"), c.url("/admin/social"));
    let attic_pw = social_first_password(&mut ba, &pa, "owner", "attic.local", ACCOUNT_MADE)?;
    let cellar_pw = social_first_password(&mut bc, &pc, "owner", "cellar.local", ACCOUNT_MADE)?;
    let (fa, fc) = (
        social_fingerprint(&mut ba, &pa)?,
        social_fingerprint(&mut bc, &pc)?,
    );
    trust_on_social_page(&mut ba, &pa, "cellar.local", &fc)?;
    trust_on_social_page(&mut bc, &pc, "attic.local", &fa)?;
    let n = posts.to_string();
    let bound = Duration::from_secs(300 + 130 * posts as u64);
    let seen = run_client(
        "mastodon_federation.py",
        &["bench", &a.origin, &attic_pw, &c.origin, &cellar_pw, &n],
        bound,
    )?;
    anyhow::ensure!(seen.get("error").is_none(), "{seen:#}");
    let mut figures = std::fs::read(&out)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .filter(|v| v.is_object())
        .unwrap_or_else(|| serde_json::json!({}));
    figures["post_to_remote_timeline_ms"] = seen["post_to_remote_timeline_ms"].clone();
    figures["post_to_remote_timeline_ms_all"] = seen["times_ms"].clone();
    write_bench(&out, &figures)
}

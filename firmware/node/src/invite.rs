//! Invitation codes: pairing with a plug that is not on the same network.
//!
//! `cairn node invite` makes a one-time code carrying this plug's peer id, the addresses it can
//! be reached at, a random secret and an expiry. The friend runs `cairn node join CODE`: its
//! node dials ours and presents the secret; we accept it once, before it expires. Only a hash
//! of the secret is kept here, so a copy of the data partition cannot be used to join.
//!
//! Text form: `cairn1-` then lowercase hex of
//! `expiry u64 LE | secret [16] | peer-id len u8 | peer id | count u8 | (len u8 | multiaddr)*`.

use anyhow::{anyhow, bail, Result};
use libp2p::{Multiaddr, PeerId};

const PREFIX: &str = "cairn1-";
/// At most this many addresses travel in a code (keeps codes short enough to paste).
pub const ADDRS_MAX: usize = 8;

/// A decoded invitation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invitation {
    /// The inviting plug.
    pub peer: PeerId,
    /// Where it listens.
    pub addrs: Vec<Multiaddr>,
    /// The one-time secret.
    pub secret: [u8; 16],
    /// Unix seconds after which it is refused.
    pub expires: u64,
}

impl Invitation {
    /// The text form.
    pub fn encode(&self) -> String {
        let mut b = Vec::new();
        b.extend_from_slice(&self.expires.to_le_bytes());
        b.extend_from_slice(&self.secret);
        let p = self.peer.to_bytes();
        b.push(p.len() as u8);
        b.extend_from_slice(&p);
        let addrs: Vec<Vec<u8>> = self
            .addrs
            .iter()
            .map(|a| a.to_vec())
            .filter(|a| a.len() <= 255)
            .take(ADDRS_MAX)
            .collect();
        b.push(addrs.len() as u8);
        for a in addrs {
            b.push(a.len() as u8);
            b.extend_from_slice(&a);
        }
        let mut s = String::from(PREFIX);
        for byte in b {
            s.push_str(&format!("{byte:02x}"));
        }
        s
    }

    /// Parses a code; every malformed part is a clear error.
    pub fn decode(text: &str) -> Result<Self> {
        let text = text.trim();
        let hex = text
            .strip_prefix(PREFIX)
            .ok_or_else(|| anyhow!("not an invitation code (it starts with `{PREFIX}`)"))?;
        if hex.len() % 2 != 0 || hex.len() > 8192 {
            bail!("invitation code has a bad length (copied in full?)");
        }
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|_| anyhow!("invitation code has a character that is not hex"))?;
        let mut r = bytes.as_slice();
        let mut take = |n: usize| -> Result<&[u8]> {
            if r.len() < n {
                bail!("invitation code is cut short (copied in full?)");
            }
            let (a, b) = r.split_at(n);
            r = b;
            Ok(a)
        };
        let expires = u64::from_le_bytes(take(8)?.try_into().expect("8 bytes"));
        let secret: [u8; 16] = take(16)?.try_into().expect("16 bytes");
        let plen = take(1)?[0] as usize;
        let peer = PeerId::from_bytes(take(plen)?)
            .map_err(|e| anyhow!("invitation code names no valid peer: {e}"))?;
        let count = take(1)?[0] as usize;
        if count > ADDRS_MAX {
            bail!("invitation code lists {count} addresses (at most {ADDRS_MAX})");
        }
        let mut addrs = Vec::with_capacity(count);
        for _ in 0..count {
            let len = take(1)?[0] as usize;
            let a = Multiaddr::try_from(take(len)?.to_vec())
                .map_err(|e| anyhow!("invitation code has a bad address: {e}"))?;
            addrs.push(a);
        }
        if !take(0)?.is_empty() || !r.is_empty() {
            bail!("invitation code has trailing bytes");
        }
        Ok(Invitation {
            peer,
            addrs,
            secret,
            expires,
        })
    }
}

/// What the inviter keeps of a secret: its hash.
pub fn secret_hash(secret: &[u8; 16]) -> String {
    hex::encode(blake3::derive_key("cairn invitation secret v1", secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Invitation {
        Invitation {
            peer: libp2p::identity::Keypair::generate_ed25519()
                .public()
                .to_peer_id(),
            addrs: vec![
                "/ip4/192.168.1.20/tcp/4001".parse().unwrap(),
                "/ip4/192.168.1.20/udp/4001/quic-v1".parse().unwrap(),
            ],
            secret: [9; 16],
            expires: 1_800_000_000,
        }
    }

    #[test]
    fn codes_round_trip() {
        let i = sample();
        let code = i.encode();
        assert!(code.starts_with("cairn1-"));
        assert_eq!(Invitation::decode(&format!("  {code}\n")).unwrap(), i);
    }

    #[test]
    fn damaged_codes_are_clear_errors() {
        let code = sample().encode();
        for (bad, what) in [
            ("hello".to_string(), "not an invitation"),
            (code[..code.len() - 2].to_string(), "cut short"),
            (format!("{code}00"), "trailing"),
            (format!("cairn1-zz{}", &code[9..]), "not hex"),
            (code[..code.len() - 1].to_string(), "bad length"),
        ] {
            let e = Invitation::decode(&bad).unwrap_err().to_string();
            assert!(e.contains(what), "{bad}: {e}");
        }
        // Random bytes after the prefix never panic.
        let mut x: u64 = 1;
        for _ in 0..2000 {
            let mut s = String::from(PREFIX);
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let len = (x >> 58) as usize * 2;
            for i in 0..len {
                s.push_str(&format!("{:02x}", (x >> (i % 56)) as u8));
            }
            let _ = Invitation::decode(&s);
        }
    }
}

//! The boot state that the bootloader counts down and PID 1 commits: which slot is the good
//! one, which one is on trial and how many tries it has left. It is stored as two copies of a
//! u-boot environment block (CRC32 little-endian, then `key=value\0` pairs sorted by key, zero
//! padding: what u-boot's `env export -c -s 0x200` writes and `env import -c` checks) in raw
//! sectors before the first partition, so that u-boot's own commands read and write it on
//! every board (see `DESIGN.md`). The copy with the higher valid `cairn_seq` wins; each write
//! goes to the other copy, so a cut mid-write leaves the previous state whole.
//!
//! [`BootState::boot`] is the bootloader's decision, written here as the specification that
//! the boot script follows and the tests check.

use std::fmt;

/// Bytes of one copy: one sector.
pub const BLOCK_BYTES: usize = 512;
/// The two copies' sectors (512 bytes each) on the boot medium: in the gap before the first
/// partition (1 MiB), above the sunxi boards' SPL + u-boot (at 8 KiB, under 620 KiB), each in
/// its own 4 KiB page.
pub const COPY_SECTORS: [u64; 2] = [2032, 2040];
/// Each slot's record ([`SlotRecord`], A then B): in the same gap, each in its own 4 KiB page,
/// apart from the state's so that a torn record never touches it.
pub const RECORD_SECTORS: [u64; 2] = [2016, 2024];
/// Boots a new slot gets before the bootloader falls back to the good one. At most 9: u-boot's
/// `setexpr` counts in hex, and one digit reads the same in both.
pub const TRIES: u8 = 3;

/// One of the two system slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotName {
    /// The first slot.
    A,
    /// The second slot.
    B,
}

impl SlotName {
    /// The other slot.
    pub fn other(self) -> Self {
        match self {
            SlotName::A => SlotName::B,
            SlotName::B => SlotName::A,
        }
    }

    /// `a` or `b` (as `cairn.slot=` on the kernel command line and in the state).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "a" => Some(SlotName::A),
            "b" => Some(SlotName::B),
            _ => None,
        }
    }
}

impl SlotName {
    /// 0 for A, 1 for B: the index into [`RECORD_SECTORS`] and the MBR's slot entries.
    pub fn index(self) -> usize {
        match self {
            SlotName::A => 0,
            SlotName::B => 1,
        }
    }
}

impl fmt::Display for SlotName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SlotName::A => "a",
            SlotName::B => "b",
        })
    }
}

/// What happened last, for `cairn update status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Last {
    /// Nothing yet (as flashed).
    None,
    /// A new slot is installed and on trial.
    Trying,
    /// The slot on trial reached ready and was committed.
    Good,
    /// The slot on trial used up its tries; the bootloader went back to the good slot.
    Fallback,
}

impl Last {
    fn as_str(self) -> &'static str {
        match self {
            Last::None => "none",
            Last::Trying => "trying",
            Last::Good => "good",
            Last::Fallback => "fallback",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [Last::None, Last::Trying, Last::Good, Last::Fallback]
            .into_iter()
            .find(|l| l.as_str() == s)
    }
}

impl fmt::Display for Last {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The state, as both the bootloader and PID 1 read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootState {
    /// Increases with every write (hex in the block, as u-boot's `setexpr` counts).
    pub seq: u32,
    /// The good slot: booted when no other is on trial, and the fallback.
    pub active: SlotName,
    /// The slot on trial, if any.
    pub trying: Option<SlotName>,
    /// Boots the slot on trial has left.
    pub tries: u8,
    /// What happened last.
    pub last: Last,
}

impl Default for BootState {
    /// As flashed: slot A good, nothing on trial.
    fn default() -> Self {
        BootState {
            seq: 0,
            active: SlotName::A,
            trying: None,
            tries: 0,
            last: Last::None,
        }
    }
}

/// A u-boot environment block of `bytes` bytes: CRC32 (LE) of the rest, the `key=value\0`
/// pairs in the given order, zeros. An error if they do not fit.
pub fn env_block(pairs: &[(&str, &str)], bytes: usize) -> Result<Vec<u8>, String> {
    let mut data = Vec::with_capacity(bytes);
    data.extend_from_slice(&[0; 4]);
    for (k, v) in pairs {
        data.extend_from_slice(k.as_bytes());
        data.push(b'=');
        data.extend_from_slice(v.as_bytes());
        data.push(0);
    }
    // The pairs end with an empty one (a second zero): room for it too.
    if data.len() + 1 > bytes {
        return Err(format!("u-boot environment over {bytes} bytes"));
    }
    data.resize(bytes, 0);
    let crc = crc32fast::hash(&data[4..]);
    data[..4].copy_from_slice(&crc.to_le_bytes());
    Ok(data)
}

/// The pairs of a u-boot environment block, if its CRC holds.
pub fn parse_env_block(block: &[u8]) -> Result<Vec<(String, String)>, String> {
    if block.len() < 5 {
        return Err("u-boot environment block too short".into());
    }
    let crc = u32::from_le_bytes(block[..4].try_into().expect("4 bytes"));
    if crc32fast::hash(&block[4..]) != crc {
        return Err("u-boot environment block: bad CRC".into());
    }
    let mut out = Vec::new();
    for item in block[4..].split(|&b| b == 0).take_while(|i| !i.is_empty()) {
        let s = std::str::from_utf8(item).map_err(|_| "u-boot environment: not text")?;
        let (k, v) = s
            .split_once('=')
            .ok_or_else(|| format!("u-boot environment: an entry without '=': {s}"))?;
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

impl BootState {
    /// The block for this state (keys in u-boot's sorted order).
    pub fn encode(&self) -> [u8; BLOCK_BYTES] {
        let seq = format!("{:x}", self.seq);
        let tries = self.tries.min(9).to_string();
        let trying = self.trying.map_or("none".to_string(), |s| s.to_string());
        let active = self.active.to_string();
        let pairs = [
            ("cairn_active", active.as_str()),
            ("cairn_last", self.last.as_str()),
            ("cairn_seq", seq.as_str()),
            ("cairn_tries", tries.as_str()),
            ("cairn_try", trying.as_str()),
        ];
        let block = env_block(&pairs, BLOCK_BYTES).expect("five short pairs fit a sector");
        block.try_into().expect("BLOCK_BYTES long")
    }

    /// The state in a block; an error names what is wrong.
    pub fn decode(block: &[u8]) -> Result<Self, String> {
        let pairs = parse_env_block(block)?;
        let get = |k: &str| {
            pairs
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
                .ok_or_else(|| format!("boot state: no {k}"))
        };
        let bad = |k: &str, v: &str| format!("boot state: {k}={v} is not a valid value");
        let seq = get("cairn_seq")?;
        let active = get("cairn_active")?;
        let trying = get("cairn_try")?;
        let tries = get("cairn_tries")?;
        let last = get("cairn_last")?;
        Ok(BootState {
            seq: u32::from_str_radix(seq, 16).map_err(|_| bad("cairn_seq", seq))?,
            active: SlotName::parse(active).ok_or_else(|| bad("cairn_active", active))?,
            trying: match trying {
                "none" => None,
                s => Some(SlotName::parse(s).ok_or_else(|| bad("cairn_try", s))?),
            },
            tries: tries
                .parse::<u8>()
                .ok()
                .filter(|t| *t <= 9)
                .ok_or_else(|| bad("cairn_tries", tries))?,
            last: Last::parse(last).ok_or_else(|| bad("cairn_last", last))?,
        })
    }

    /// The newer valid state of the two copies (`None`: neither is valid, as on a fresh card,
    /// where the bootloader boots slot A).
    pub fn newest(copies: [&[u8]; 2]) -> Option<Self> {
        copies
            .into_iter()
            .filter_map(|c| BootState::decode(c).ok())
            .max_by_key(|s| s.seq)
    }

    /// Which copy a state is written to: alternating, so the other keeps the previous state.
    pub fn copy_index(&self) -> usize {
        (self.seq % 2) as usize
    }

    fn next(self) -> Self {
        BootState {
            seq: self.seq.wrapping_add(1),
            ..self
        }
    }

    /// Before an install writes into `slot`: it may no longer be on trial.
    pub fn installing(self, slot: SlotName) -> Self {
        if self.trying != Some(slot) {
            return self;
        }
        BootState {
            trying: None,
            tries: 0,
            ..self.next()
        }
    }

    /// After an install into `slot` read back whole: boot it [`TRIES`] times at most.
    pub fn try_once(self, slot: SlotName) -> Self {
        BootState {
            trying: Some(slot),
            tries: TRIES,
            last: Last::Trying,
            ..self.next()
        }
    }

    /// PID 1, with everything ready on `running`: if it is the slot on trial, it becomes the
    /// good one. `None` when there is nothing to commit.
    pub fn commit(self, running: SlotName) -> Option<Self> {
        (self.trying == Some(running)).then(|| BootState {
            active: running,
            trying: None,
            tries: 0,
            last: Last::Good,
            ..self.next()
        })
    }

    /// The bootloader's decision at power-on: the slot to boot and the state to write first
    /// (`None`: nothing changes). A try is counted before the slot boots, so a cut or a
    /// panic during its boot counts as a failed try.
    pub fn boot(self) -> (SlotName, Option<Self>) {
        match self.trying {
            Some(t) if self.tries > 0 => (
                t,
                Some(BootState {
                    tries: self.tries - 1,
                    ..self.next()
                }),
            ),
            Some(_) => (
                self.active,
                Some(BootState {
                    trying: None,
                    last: Last::Fallback,
                    ..self.next()
                }),
            ),
            None => (self.active, None),
        }
    }
}

/// What a slot holds, written by the installer once the slot read back whole (and by the image
/// builder for slot A), so that `cairn update status` names both slots' versions. Cleared
/// before an install starts, so a half-written slot never shows its predecessor's version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotRecord {
    /// The version people read (`0.1.0-123`).
    pub version: String,
    /// The build number.
    pub build: u64,
}

impl SlotRecord {
    /// The record's block (a u-boot environment block, like the state's; u-boot ignores it).
    pub fn encode(&self) -> Result<[u8; BLOCK_BYTES], String> {
        let build = self.build.to_string();
        let block = env_block(
            &[
                ("cairn_build", build.as_str()),
                ("cairn_version", self.version.as_str()),
            ],
            BLOCK_BYTES,
        )?;
        Ok(block.try_into().expect("BLOCK_BYTES long"))
    }

    /// The record in a block; `None` for an empty or damaged one (no slot recorded).
    pub fn decode(block: &[u8]) -> Option<Self> {
        let pairs = parse_env_block(block).ok()?;
        let get = |k: &str| pairs.iter().find(|(key, _)| key == k).map(|(_, v)| v);
        Some(SlotRecord {
            version: get("cairn_version")?.clone(),
            build: get("cairn_build")?.parse().ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What u-boot 2023.01 (qemu_arm64) wrote with `env export -c -s 0x200` for
    /// cairn_seq=7, cairn_tries=3, cairn_try=B: its CRC, then the sorted pairs.
    #[test]
    fn blocks_are_byte_for_byte_what_u_boot_exports() {
        let block = env_block(
            &[("cairn_seq", "7"), ("cairn_tries", "3"), ("cairn_try", "B")],
            BLOCK_BYTES,
        )
        .unwrap();
        assert_eq!(&block[..4], &[0xc1, 0x1a, 0x04, 0x94]);
        assert_eq!(&block[4..16], b"cairn_seq=7\0");
        assert_eq!(block.len(), BLOCK_BYTES);
        assert_eq!(parse_env_block(&block).unwrap()[2].1, "B");
    }

    #[test]
    fn a_state_round_trips_and_a_damaged_block_does_not_decode() {
        let s = BootState::default().try_once(SlotName::B);
        let mut block = s.encode();
        assert_eq!(BootState::decode(&block).unwrap(), s);
        block[20] ^= 1;
        assert!(BootState::decode(&block).unwrap_err().contains("bad CRC"));
        let odd = env_block(&[("cairn_seq", "1")], BLOCK_BYTES).unwrap();
        assert_eq!(
            BootState::decode(&odd).unwrap_err(),
            "boot state: no cairn_active"
        );
        assert!(env_block(&[("k", &"v".repeat(600))], BLOCK_BYTES).is_err());
    }

    #[test]
    fn the_newest_valid_copy_wins_and_writes_alternate() {
        let old = BootState::default();
        let new = old.try_once(SlotName::B);
        assert_ne!(old.copy_index(), new.copy_index());
        let (o, n) = (old.encode(), new.encode());
        assert_eq!(BootState::newest([&o, &n]), Some(new));
        assert_eq!(BootState::newest([&n, &o]), Some(new));
        // A cut while the new copy was written: the old state holds.
        let mut torn = n;
        torn[100..].fill(0);
        torn[4] = b'x';
        assert_eq!(BootState::newest([&o, &torn]), Some(old));
        assert_eq!(BootState::newest([&[0; 512], &[0xff; 512]]), None);
    }

    #[test]
    fn a_good_update_is_tried_then_committed() {
        let s = BootState::default().try_once(SlotName::B);
        let (slot, s2) = s.boot();
        assert_eq!(slot, SlotName::B);
        let s2 = s2.unwrap();
        assert_eq!(s2.tries, TRIES - 1);
        let done = s2.commit(SlotName::B).unwrap();
        assert_eq!(
            (done.active, done.trying, done.last),
            (SlotName::B, None, Last::Good)
        );
        assert_eq!(done.boot(), (SlotName::B, None));
        // Nothing on trial, or another slot running: nothing to commit.
        assert_eq!(done.commit(SlotName::B), None);
        assert_eq!(s2.commit(SlotName::A), None);
    }

    #[test]
    fn a_slot_that_never_commits_falls_back_after_its_tries() {
        let mut s = BootState::default().try_once(SlotName::B);
        for _ in 0..TRIES {
            let (slot, next) = s.boot();
            assert_eq!(slot, SlotName::B);
            s = next.unwrap();
        }
        let (slot, next) = s.boot();
        assert_eq!(slot, SlotName::A);
        let s = next.unwrap();
        assert_eq!((s.trying, s.last), (None, Last::Fallback));
        assert_eq!(s.boot(), (SlotName::A, None));
    }

    #[test]
    fn installing_over_a_slot_on_trial_takes_it_off_trial() {
        let s = BootState::default().try_once(SlotName::B);
        let s2 = s.installing(SlotName::B);
        assert_eq!((s2.trying, s2.tries), (None, 0));
        assert!(s2.seq > s.seq);
        assert_eq!(s.installing(SlotName::A), s);
    }

    #[test]
    fn a_slot_record_round_trips_and_zeros_are_none() {
        let r = SlotRecord {
            version: "0.1.0-9".into(),
            build: 9,
        };
        assert_eq!(SlotRecord::decode(&r.encode().unwrap()), Some(r));
        assert_eq!(SlotRecord::decode(&[0; BLOCK_BYTES]), None);
        let long = SlotRecord {
            version: "v".repeat(600),
            build: 1,
        };
        assert!(long.encode().is_err());
    }
}

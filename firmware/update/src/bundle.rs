//! The bundle format, written by [`write`] and read as a stream by [`Reader`]:
//!
//! ```text
//! 0   "CUPD"                magic
//! 4   1                     format
//! 5   0 0 0                 reserved
//! 8   public key (32)       the signer: must be among the device's trusted keys
//! 40  manifest length (u32 little-endian, at most MANIFEST_BYTES_MAX)
//! 44  manifest (JSON)       board, version, build number, parts (name, size, SHA-256)
//! ..  signature (64)        Ed25519 over DOMAIN ‖ bytes 0..44 ‖ manifest
//! ..  the parts, whole, in the manifest's order; nothing after the last
//! ```
//!
//! The reader checks the key and the signature before it parses a byte of the manifest, and
//! each part's SHA-256 as the part streams past; no part is ever held whole in memory.

use std::io::{self, Read, Write};
use std::path::PathBuf;

use ring::digest::{Context, SHA256};
use serde::{Deserialize, Serialize};

use crate::keys::{PublicKey, SigningKey, TrustedKeys, PUBLIC_KEY_BYTES, SIGNATURE_BYTES};
use crate::Refusal;

/// The first bytes of every bundle.
pub const MAGIC: &[u8; 4] = b"CUPD";
/// The format this code writes and reads.
pub const FORMAT: u8 = 1;
/// Bytes before the manifest.
pub const HEADER_BYTES: usize = 44;
/// Bound on the manifest's size: the only part of a bundle held whole in memory.
pub const MANIFEST_BYTES_MAX: usize = 64 << 10;
/// Bound on the number of parts.
pub const PARTS_MAX: usize = 16;
/// Each part starts in the slot at a multiple of this (a page: no part shares one).
pub const PART_ALIGN_BYTES: u64 = 4096;
/// What the signature covers first: a signature over something else can never pass as one
/// over a manifest.
pub const DOMAIN: &[u8] = b"cairn-update-manifest-v1\0";

/// What a bundle says it holds, signed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The board name (`qemu-virt`): a device refuses another board's bundle.
    pub board: String,
    /// The version people read (`0.1.0-412`).
    pub version: String,
    /// The monotonic build number: a device refuses one not newer than its own.
    pub build: u64,
    /// The parts, in the bundle's order and the slot's.
    pub parts: Vec<Part>,
}

/// One part of a bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Part {
    /// Its name (`boot`, `system`): lower-case letters, digits and `-`.
    pub name: String,
    /// Its length in bytes.
    pub size: u64,
    /// Its SHA-256, in hex.
    pub sha256: String,
}

impl Manifest {
    /// Checks the rules a signed manifest must still follow.
    fn check(&self) -> Result<(), Refusal> {
        let bad = |s: String| Err(Refusal::Manifest(s));
        let word = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._+".contains(&b))
        };
        if !word(&self.board) || !word(&self.version) {
            return bad(
                "board or version is empty or has characters other than a-z 0-9 - . _ +".into(),
            );
        }
        if self.parts.is_empty() || self.parts.len() > PARTS_MAX {
            return bad(format!("{} parts (1 to {PARTS_MAX})", self.parts.len()));
        }
        for (i, p) in self.parts.iter().enumerate() {
            if !word(&p.name) || self.parts[..i].iter().any(|q| q.name == p.name) {
                return bad(format!(
                    "part {i}: the name {:?} is not a unique word",
                    p.name
                ));
            }
            if p.sha256.len() != 64 || hex::decode(&p.sha256).is_err() {
                return bad(format!("part {}: sha256 is not 64 hex digits", p.name));
            }
        }
        self.layout().map(|_| ())
    }

    /// Where each part goes in a slot (`(offset, size)`, in the parts' order), and the bytes
    /// the slot needs in all.
    pub fn layout(&self) -> Result<(Vec<(u64, u64)>, u64), Refusal> {
        let mut at = 0u64;
        let mut out = Vec::with_capacity(self.parts.len());
        for p in &self.parts {
            out.push((at, p.size));
            at = at
                .checked_add(p.size)
                .and_then(|end| end.checked_next_multiple_of(PART_ALIGN_BYTES))
                .ok_or_else(|| Refusal::Manifest(format!("part {}: size overflows", p.name)))?;
        }
        let end = out.last().map_or(0, |(o, s)| o + s);
        Ok((out, end))
    }

    /// Bytes of the whole bundle.
    pub fn bundle_bytes(&self, manifest_bytes: usize) -> u64 {
        let parts: u64 = self.parts.iter().map(|p| p.size).sum();
        (HEADER_BYTES + manifest_bytes + SIGNATURE_BYTES) as u64 + parts
    }
}

/// Where a part's bytes come from when a bundle is written (read twice: hashed, then copied).
pub trait PartSource {
    /// A fresh reader of the part from its start.
    fn open(&self) -> io::Result<Box<dyn Read + '_>>;
    /// What to call it in errors.
    fn describe(&self) -> String;
}

impl PartSource for PathBuf {
    fn open(&self) -> io::Result<Box<dyn Read + '_>> {
        Ok(Box::new(std::fs::File::open(self)?))
    }
    fn describe(&self) -> String {
        self.display().to_string()
    }
}

impl PartSource for &[u8] {
    fn open(&self) -> io::Result<Box<dyn Read + '_>> {
        Ok(Box::new(*self))
    }
    fn describe(&self) -> String {
        format!("{} bytes in memory", self.len())
    }
}

/// Size and SHA-256 of a part, read in bounded pieces.
fn digest(src: &dyn PartSource, buf: &mut [u8]) -> io::Result<(u64, String)> {
    let mut r = src.open()?;
    let mut ctx = Context::new(&SHA256);
    let mut n = 0u64;
    loop {
        let got = r.read(buf)?;
        if got == 0 {
            return Ok((n, hex::encode(ctx.finish())));
        }
        ctx.update(&buf[..got]);
        n += got as u64;
    }
}

/// The signed bytes: the domain, the header, the manifest.
fn signed_message(header: &[u8; HEADER_BYTES], manifest: &[u8]) -> Vec<u8> {
    [DOMAIN, header.as_slice(), manifest].concat()
}

/// Writes a bundle of `parts` (`(name, source)`) for `board`, `version`, `build`, signed with
/// `key`. The same inputs give the same bytes (Ed25519 signatures are deterministic). A part
/// whose size changes between the hashing and the copy is an error.
pub fn write(
    out: &mut dyn Write,
    key: &SigningKey,
    board: &str,
    version: &str,
    build: u64,
    parts: &[(&str, &dyn PartSource)],
) -> Result<Manifest, Refusal> {
    let mut buf = vec![0u8; crate::BUFFER_BYTES];
    let mut manifest = Manifest {
        board: board.into(),
        version: version.into(),
        build,
        parts: Vec::with_capacity(parts.len()),
    };
    for (name, src) in parts {
        let (size, sha256) = digest(*src, &mut buf).map_err(|e| Refusal::io(src.describe(), e))?;
        manifest.parts.push(Part {
            name: name.to_string(),
            size,
            sha256,
        });
    }
    manifest.check()?;
    let json = serde_json::to_vec(&manifest).expect("a manifest serializes");
    if json.len() > MANIFEST_BYTES_MAX {
        return Err(Refusal::Manifest(format!(
            "{} bytes (at most {MANIFEST_BYTES_MAX})",
            json.len()
        )));
    }
    let mut header = [0u8; HEADER_BYTES];
    header[..4].copy_from_slice(MAGIC);
    header[4] = FORMAT;
    header[8..40].copy_from_slice(&key.public());
    header[40..44].copy_from_slice(&(json.len() as u32).to_le_bytes());
    let sig = key.sign(&signed_message(&header, &json));
    let w = |out: &mut dyn Write, b: &[u8]| {
        out.write_all(b)
            .map_err(|e| Refusal::io("writing the bundle", e))
    };
    w(out, &header)?;
    w(out, &json)?;
    w(out, &sig)?;
    for ((_, src), part) in parts.iter().zip(&manifest.parts) {
        let mut r = src.open().map_err(|e| Refusal::io(src.describe(), e))?;
        let mut n = 0u64;
        loop {
            let got = r
                .read(&mut buf)
                .map_err(|e| Refusal::io(src.describe(), e))?;
            if got == 0 {
                break;
            }
            n += got as u64;
            w(out, &buf[..got])?;
        }
        if n != part.size {
            return Err(Refusal::Corrupt(format!(
                "{} changed while the bundle was written",
                src.describe()
            )));
        }
    }
    out.flush()
        .map_err(|e| Refusal::io("writing the bundle", e))?;
    Ok(manifest)
}

/// Reads exactly `buf.len()` bytes of `what`; an early end is [`Refusal::Truncated`].
fn read_exact(r: &mut dyn Read, buf: &mut [u8], what: &str) -> Result<(), Refusal> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => Refusal::Truncated(what.into()),
        _ => Refusal::io(format!("reading the bundle ({what})"), e),
    })
}

/// A bundle being read: its signed manifest, checked, and the stream of its parts.
pub struct Reader<R> {
    src: R,
    manifest: Manifest,
    signer: PublicKey,
}

impl<R: Read> Reader<R> {
    /// Reads and checks the header, key, signature and manifest. Nothing of the manifest is
    /// parsed before its signature by a trusted key is checked.
    pub fn open(mut src: R, keys: &TrustedKeys) -> Result<Self, Refusal> {
        let mut header = [0u8; HEADER_BYTES];
        read_exact(&mut src, &mut header[..5], "the header")?;
        if &header[..4] != MAGIC {
            return Err(Refusal::NotABundle);
        }
        if header[4] != FORMAT {
            return Err(Refusal::Format(header[4]));
        }
        read_exact(&mut src, &mut header[5..], "the header")?;
        if header[5..8] != [0, 0, 0] {
            return Err(Refusal::Corrupt(
                "reserved header bytes are not zero".into(),
            ));
        }
        let mut signer = [0u8; PUBLIC_KEY_BYTES];
        signer.copy_from_slice(&header[8..40]);
        let len = u32::from_le_bytes(header[40..44].try_into().expect("4 bytes")) as usize;
        if len > MANIFEST_BYTES_MAX {
            return Err(Refusal::Corrupt(format!(
                "the manifest's length {len} is over {MANIFEST_BYTES_MAX} bytes"
            )));
        }
        let mut json = vec![0u8; len];
        read_exact(&mut src, &mut json, "the manifest")?;
        let mut sig = [0u8; SIGNATURE_BYTES];
        read_exact(&mut src, &mut sig, "the signature")?;
        keys.verify(&signer, &signed_message(&header, &json), &sig)?;
        let manifest: Manifest = serde_json::from_slice(&json)
            .map_err(|e| Refusal::Manifest(format!("signed but unreadable: {e}")))?;
        manifest.check()?;
        Ok(Reader {
            src,
            manifest,
            signer,
        })
    }

    /// The signed manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The key that signed it.
    pub fn signer(&self) -> &PublicKey {
        &self.signer
    }

    /// Streams the parts through `buf`, calling `sink(part index, offset in the part, bytes)`
    /// for each piece, and checks each part's SHA-256 at its end and that nothing follows the
    /// last part. A piece is at most `buf.len()` bytes; nothing else is buffered. The sink has
    /// seen the bytes of a part that turns out corrupt: it must not trust them before this
    /// returns `Ok`.
    pub fn stream_parts(
        mut self,
        buf: &mut [u8],
        mut sink: impl FnMut(usize, u64, &[u8]) -> Result<(), Refusal>,
    ) -> Result<Manifest, Refusal> {
        assert!(!buf.is_empty(), "a buffer to stream through");
        for (i, part) in self.manifest.parts.iter().enumerate() {
            let mut ctx = Context::new(&SHA256);
            let mut done = 0u64;
            while done < part.size {
                let want = (part.size - done).min(buf.len() as u64) as usize;
                let got = loop {
                    match self.src.read(&mut buf[..want]) {
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        r => break r,
                    }
                }
                .map_err(|e| Refusal::io(format!("reading the bundle (part {})", part.name), e))?;
                if got == 0 {
                    return Err(Refusal::Truncated(format!(
                        "part {} at byte {done} of {}",
                        part.name, part.size
                    )));
                }
                ctx.update(&buf[..got]);
                sink(i, done, &buf[..got])?;
                done += got as u64;
            }
            if hex::encode(ctx.finish()) != part.sha256 {
                return Err(Refusal::Corrupt(format!(
                    "part {}: its SHA-256 does not match the signed manifest",
                    part.name
                )));
            }
        }
        let mut one = [0u8; 1];
        match self.src.read(&mut one) {
            Ok(0) => Ok(self.manifest),
            Ok(_) => Err(Refusal::Corrupt("bytes follow the last part".into())),
            Err(e) => Err(Refusal::io("reading the bundle's end", e)),
        }
    }
}

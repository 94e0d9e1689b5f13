//! Other servers the owner trusts, for the bundled services' outgoing TLS (snac delivers with
//! libcurl, which checks certificates against `/etc/ssl/certs/ca-certificates.crt`, on a plug a
//! link to [`BUNDLE_FILE`] in the web's share folder). A plug's certificate is self-signed, so
//! the owner trusts another plug (or any server) the way they trust their own plug's page: by
//! its certificate's SHA-256 fingerprint, compared with what the other side's owner sees.
//!
//! The bundle is composed whole at every start and after every change: the system layer's
//! roots (public servers with a CA's certificate), the plug's own certificate (accounts on one
//! plug deliver to each other through its HTTPS) and each server trusted on the Social page,
//! kept in `DATA/trusted/HOST_PORT.pem` (one durable write each, at most [`TRUSTED_MAX`]).
//!
//! Looking at a server ([`fetch`]): a TLS handshake (bounded in time and in the certificates'
//! bytes) whose certificate is taken as shown, its handshake signature still checked, so the
//! server holds the key of the certificate it shows.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::tls::{certificate_pem, fingerprint, PROTOCOL_VERSIONS};

/// The bundle in the share folder (the system's `/etc/ssl/certs/ca-certificates.crt` links to
/// it on a plug).
pub const BUNDLE_FILE: &str = "ca-certificates.crt";
/// The trusted servers' certificates, under the web's data folder.
pub const TRUSTED_DIR: &str = "trusted";
/// Servers trusted at most (a household's friends; each is read at every bundle).
pub const TRUSTED_MAX: usize = 32;
/// A server's certificate kept, at most (a plug's is about 600 bytes, a CA-signed one 2 KiB).
pub const CERTIFICATE_BYTES_MAX: usize = 16 * 1024;
/// All the certificates a server sends in its handshake, at most (rustls itself stops at 64
/// KiB for any handshake message).
pub const CHAIN_BYTES_MAX: usize = 32 * 1024;
/// The system layer's roots, read at most (Debian's bundle is about 200 KiB).
pub const ROOTS_BYTES_MAX: u64 = 4 << 20;
/// Longest a look at a server takes: name, connection and handshake.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// An address as typed, at most (a DNS name's 253 and a port).
pub const ADDRESS_BYTES_MAX: usize = 260;

/// A server as the owner names it: `cellar.local`, `example.org:8443`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Address {
    /// A DNS name or an IPv4 address, lowercase.
    pub host: String,
    /// Its HTTPS port.
    pub port: u16,
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.port == 443 {
            write!(f, "{}", self.host)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl Address {
    /// The address in `text` (`https://` and a final `/` allowed, as copied from a browser),
    /// or why it is not one.
    pub fn parse(text: &str) -> Result<Address, String> {
        let t = text.trim();
        if t.len() > ADDRESS_BYTES_MAX {
            return Err(format!("at most {ADDRESS_BYTES_MAX} characters"));
        }
        let t = t.to_ascii_lowercase();
        let t = t.strip_prefix("https://").unwrap_or(&t);
        let t = t.strip_suffix('/').unwrap_or(t);
        if t.is_empty() {
            return Err("type a server's name, like cellar.local or example.org".into());
        }
        if t.contains('[') || t.matches(':').count() > 1 {
            return Err("IPv6 addresses are not taken: use the server's name".into());
        }
        let (host, port) = match t.rsplit_once(':') {
            Some((h, p)) => match p.parse::<u16>() {
                Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => (h, n),
                _ => return Err(format!("{p:?} is not a port (1–65535)")),
            },
            None => (t, 443),
        };
        if host.parse::<std::net::Ipv4Addr>().is_err() && !dns_name(host) {
            return Err(format!(
                "{host:?} is not a server's name (letters a–z, digits, '-' and dots)"
            ));
        }
        Ok(Address {
            host: host.to_string(),
            port,
        })
    }

    /// Its file under [`TRUSTED_DIR`] (a host has no `_`).
    fn file_name(&self) -> String {
        format!("{}_{}.pem", self.host, self.port)
    }

    /// The address a file under [`TRUSTED_DIR`] stands for.
    fn of_file(name: &str) -> Option<Address> {
        let (host, port) = name.strip_suffix(".pem")?.rsplit_once('_')?;
        let a = Address::parse(&format!("{host}:{port}")).ok()?;
        (a.file_name() == name).then_some(a)
    }
}

/// A DNS name: labels of 1–63 of `a–z`, digits and `-` (not at either end), 253 at most.
fn dns_name(host: &str) -> bool {
    host.len() <= 253
        && host.split('.').all(|l| {
            (1..=63).contains(&l.len())
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// A server's certificate as it showed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shown {
    /// Where it was asked.
    pub address: Address,
    /// Its SHA-256 fingerprint (`AB:CD:…`).
    pub fingerprint: String,
    /// The names it is for (its DNS names, else its common name).
    pub names: Vec<String>,
    /// The certificate (DER).
    pub der: Vec<u8>,
}

impl Shown {
    /// What the certificate `der` of `address` says, or why it cannot be trusted.
    pub fn of(address: Address, der: Vec<u8>) -> Result<Shown, String> {
        if der.len() > CERTIFICATE_BYTES_MAX {
            return Err(format!(
                "{address}: its certificate is {} bytes, more than the {CERTIFICATE_BYTES_MAX} kept",
                der.len()
            ));
        }
        let names = names_of(&der)
            .ok_or_else(|| format!("{address}: its certificate is not one this plug can read"))?;
        Ok(Shown {
            address,
            fingerprint: fingerprint(&der),
            names,
            der,
        })
    }
}

/// The DNS names of a certificate (its common name where it has none).
fn names_of(der: &[u8]) -> Option<Vec<String>> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    if !rest.is_empty() {
        return None;
    }
    let mut names: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if names.is_empty() {
        names.extend(
            cert.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok().map(str::to_string)),
        );
    }
    Some(names)
}

/// Takes whatever certificate a server shows (the owner judges it by its fingerprint) but, for
/// the handshake to finish, the server must sign it with that certificate's key. `accept`
/// judges the certificates sent.
pub struct HandshakeOnly<F> {
    provider: Arc<CryptoProvider>,
    accept: F,
}

impl<F> fmt::Debug for HandshakeOnly<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HandshakeOnly")
    }
}

/// What [`HandshakeOnly`] asks of the certificates a server sent: (its own, the others).
pub type Accept = fn(&CertificateDer<'_>, &[CertificateDer<'_>]) -> Result<(), rustls::Error>;

/// A judge of the certificates a server sent, for [`HandshakeOnly`].
pub trait Judge:
    Fn(&CertificateDer<'_>, &[CertificateDer<'_>]) -> Result<(), rustls::Error> + Send + Sync + 'static
{
}

impl<F> Judge for F where
    F: Fn(&CertificateDer<'_>, &[CertificateDer<'_>]) -> Result<(), rustls::Error>
        + Send
        + Sync
        + 'static
{
}

impl<F: Judge> HandshakeOnly<F> {
    /// A client configuration (TLS 1.3 and 1.2, ring) with this verifier.
    pub fn client_config(accept: F) -> rustls::ClientConfig {
        Self::client_config_for(accept, PROTOCOL_VERSIONS)
    }

    /// [`Self::client_config`] speaking `versions` only.
    pub fn client_config_for(
        accept: F,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> rustls::ClientConfig {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Arc::new(HandshakeOnly {
            provider: provider.clone(),
            accept,
        });
        rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .expect("ring speaks TLS 1.2 and 1.3")
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth()
    }
}

impl<F: Judge> ServerCertVerifier for HandshakeOnly<F> {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        (self.accept)(end_entity, intermediates).map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Refuses certificates that take more than [`CHAIN_BYTES_MAX`] together.
fn bounded_chain(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
) -> Result<(), rustls::Error> {
    let bytes = end_entity.len() + intermediates.iter().map(|c| c.len()).sum::<usize>();
    if bytes > CHAIN_BYTES_MAX {
        return Err(rustls::Error::General(format!(
            "it sent {bytes} bytes of certificates, more than {CHAIN_BYTES_MAX}"
        )));
    }
    Ok(())
}

/// Looks at `address`'s certificate over TLS, within [`FETCH_TIMEOUT`]; the error is one line
/// for the owner.
pub async fn fetch(address: &Address) -> Result<Shown, String> {
    fetch_within(address, FETCH_TIMEOUT).await
}

async fn fetch_within(address: &Address, timeout: Duration) -> Result<Shown, String> {
    match tokio::time::timeout(timeout, fetch_unbounded(address)).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "{address} did not answer within {} s",
            timeout.as_secs_f32()
        )),
    }
}

async fn fetch_unbounded(address: &Address) -> Result<Shown, String> {
    let (host, port) = (address.host.as_str(), address.port);
    // The system's resolver: on a plug its own name server, which asks the LAN by mDNS for
    // `.local` names.
    let addrs: Vec<_> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("{host}: no such server here ({e})"))?
        .filter(|a| a.is_ipv4())
        .take(4)
        .collect();
    let mut tcp = Err(format!("{host}: no IPv4 address"));
    for a in &addrs {
        match tokio::net::TcpStream::connect(a).await {
            Ok(s) => {
                tcp = Ok(s);
                break;
            }
            Err(e) => tcp = Err(format!("{address} ({}): {e}", a.ip())),
        }
    }
    let tcp = tcp?;
    let config = HandshakeOnly::<Accept>::client_config(bounded_chain);
    let name = ServerName::try_from(host.to_string()).map_err(|e| format!("{host}: {e}"))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("{address}: {}", handshake_error(&e)))?;
    let der = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .ok_or_else(|| format!("{address}: it showed no certificate"))?;
    Shown::of(address.clone(), der)
}

/// A failed handshake in the owner's words.
fn handshake_error(e: &std::io::Error) -> String {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::General(why)) => why.clone(),
        Some(rustls::Error::InvalidMessage(rustls::InvalidMessage::HandshakePayloadTooLarge)) => {
            "it sent more certificate bytes than a handshake may hold".into()
        }
        Some(rustls::Error::InvalidMessage(_))
        | Some(rustls::Error::InappropriateMessage { .. }) => "it does not speak TLS there".into(),
        Some(other) => format!("TLS failed: {other}"),
        None if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            "it closed the connection: it does not speak TLS there".into()
        }
        None => format!("TLS failed: {e}"),
    }
}

/// A server the owner trusts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trusted {
    /// Its address.
    pub address: Address,
    /// Its certificate's fingerprint and names.
    pub shown: Shown,
}

/// The trusted servers in `data_dir`, by address; a damaged file is left out (and said).
pub fn list(data_dir: &Path) -> Vec<Trusted> {
    let dir = data_dir.join(TRUSTED_DIR);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    // A few more than may be kept: whatever else is there is not the web's.
    for e in entries.flatten().take(TRUSTED_MAX * 2) {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(address) = Address::of_file(&name) else {
            continue;
        };
        let read = read_bounded(&e.path(), CERTIFICATE_BYTES_MAX as u64 * 2)
            .ok()
            .and_then(|pem| pem::parse(pem).ok())
            .filter(|p| p.tag() == "CERTIFICATE")
            .and_then(|p| Shown::of(address.clone(), p.into_contents()).ok());
        match read {
            Some(shown) => out.push(Trusted { address, shown }),
            None => tracing::warn!("{}: not a certificate; left out", e.path().display()),
        }
    }
    out.sort_by(|a, b| a.address.cmp(&b.address));
    out
}

/// Trusts `shown` (replacing what `address` had), or why not; nothing is stored then.
pub fn add(data_dir: &Path, shown: &Shown) -> Result<(), String> {
    let have = list(data_dir);
    let replaces = have.iter().any(|t| t.address == shown.address);
    if !replaces && have.len() >= TRUSTED_MAX {
        return Err(format!(
            "at most {TRUSTED_MAX} servers are trusted: forget one first"
        ));
    }
    let dir = data_dir.join(TRUSTED_DIR);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let file = dir.join(shown.address.file_name());
    cairn_durable::write_mode(&file, certificate_pem(&shown.der).as_bytes(), 0o644)
        .map_err(|e| format!("{}: {e}", file.display()))
}

/// No longer trusts `address`.
pub fn forget(data_dir: &Path, address: &Address) -> Result<(), String> {
    let dir = data_dir.join(TRUSTED_DIR);
    match std::fs::remove_file(dir.join(address.file_name())) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!("{address} is not trusted"))
        }
        Err(e) => return Err(format!("{address}: {e}")),
    }
    // The removal lasts through a power cut.
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("{}: {e}", dir.display()))
}

fn read_bounded(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    std::fs::File::open(path)?
        .take(max + 1)
        .read_to_end(&mut out)?;
    if out.len() as u64 > max {
        return Err(std::io::Error::other(format!("over {max} bytes")));
    }
    Ok(out)
}

/// Where the bundle's parts come from.
#[derive(Clone, Debug)]
pub struct Bundle {
    /// The system layer's roots (none in an image without it).
    pub roots: Option<PathBuf>,
    /// The web's data folder ([`TRUSTED_DIR`] below it).
    pub data_dir: PathBuf,
}

impl Bundle {
    /// Writes [`BUNDLE_FILE`] into `share` (whole, by rename; world-readable: certificates
    /// are public): the roots, `own` (the plug's certificate, DER), then each trusted server.
    pub fn compose(&self, share: &Path, own: &[u8]) -> Result<()> {
        let mut text = String::new();
        if let Some(roots) = &self.roots {
            match read_bounded(roots, ROOTS_BYTES_MAX) {
                Ok(r) => text.push_str(&String::from_utf8_lossy(&r)),
                // An image without the system layer: the plug and the owner's servers only.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("{}", roots.display())),
            }
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
        }
        text.push_str("# This plug\n");
        text.push_str(&certificate_pem(own));
        for t in list(&self.data_dir) {
            text.push_str(&format!("# {}\n", t.address));
            text.push_str(&certificate_pem(&t.shown.der));
        }
        crate::share::write(share, BUNDLE_FILE, text.as_bytes(), 0o644)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_names_with_an_optional_port() {
        let a = Address::parse(" Cellar.local ").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("cellar.local", 443));
        assert_eq!(a.to_string(), "cellar.local");
        let b = Address::parse("https://example.org:8443/").unwrap();
        assert_eq!((b.host.as_str(), b.port), ("example.org", 8443));
        assert_eq!(b.to_string(), "example.org:8443");
        assert_eq!(Address::parse("169.254.0.1").unwrap().port, 443);
        for (bad, why) in [
            ("", "type a server's name"),
            ("cellar.local:0", "not a port"),
            ("cellar.local:99999", "not a port"),
            ("cellar.local:+1", "not a port"),
            ("[fe80::1]:443", "IPv6"),
            ("fe80::1", "IPv6"),
            ("owner@cellar.local", "not a server's name"),
            ("cellar.local/owner", "not a server's name"),
            ("-cellar.local", "not a server's name"),
            ("cel lar", "not a server's name"),
            ("a..b", "not a server's name"),
            ("c_d.local", "not a server's name"),
            (&"a".repeat(300), "at most"),
        ] {
            let e = Address::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    /// A certificate for `names` and its key (a test server's).
    fn certificate(
        names: &[&str],
    ) -> (
        CertificateDer<'static>,
        rustls::pki_types::PrivateKeyDer<'static>,
    ) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let c = rcgen::generate_simple_self_signed(names).unwrap();
        let key = rustls::pki_types::PrivatePkcs8KeyDer::from(c.key_pair.serialize_der());
        (c.cert.der().clone(), key.into())
    }

    /// A TLS server on loopback sending `chain` (signed with `key`) to every client; its address.
    async fn tls_server(
        chain: Vec<CertificateDer<'static>>,
        key: rustls::pki_types::PrivateKeyDer<'static>,
    ) -> Address {
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        serve(move |tcp| {
            let acceptor = acceptor.clone();
            async move {
                let _ = acceptor.accept(tcp).await;
            }
        })
        .await
    }

    /// A TCP server on loopback doing `f` with each connection; its address.
    async fn serve<F, Fut>(f: F) -> Address
    where
        F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = l.accept().await {
                tokio::spawn(f(tcp));
            }
        });
        Address::parse(&format!("127.0.0.1:{port}")).unwrap()
    }

    #[tokio::test]
    async fn a_server_shows_its_certificate_and_names() {
        let (cert, key) = certificate(&["cellar.local", "cairn.local"]);
        let a = tls_server(vec![cert.clone()], key).await;
        let shown = fetch(&a).await.unwrap();
        assert_eq!(shown.fingerprint, fingerprint(&cert));
        assert_eq!(shown.names, ["cellar.local", "cairn.local"]);
        assert_eq!(shown.der, cert.to_vec());
    }

    #[tokio::test]
    async fn a_server_that_cannot_sign_for_its_certificate_is_refused() {
        // It shows one certificate and holds another's key: the handshake's signature fails.
        let (shown, _) = certificate(&["cellar.local"]);
        let (_, key) = certificate(&["cellar.local"]);
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Impostor(Arc::new(
            rustls::sign::CertifiedKey::new(
                vec![shown],
                rustls::crypto::ring::default_provider()
                    .key_provider
                    .load_private_key(key)
                    .unwrap(),
            ),
        ))));
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let a = serve(move |tcp| {
            let acceptor = acceptor.clone();
            async move {
                let _ = acceptor.accept(tcp).await;
            }
        })
        .await;
        let e = fetch(&a).await.unwrap_err();
        assert!(e.contains("TLS failed"), "{e}");
    }

    /// Hands out a certificate with a key that is not its own (rustls' builder would refuse).
    #[derive(Debug)]
    struct Impostor(Arc<rustls::sign::CertifiedKey>);

    impl rustls::server::ResolvesServerCert for Impostor {
        fn resolve(
            &self,
            _hello: rustls::server::ClientHello<'_>,
        ) -> Option<Arc<rustls::sign::CertifiedKey>> {
            Some(self.0.clone())
        }
    }

    #[tokio::test]
    async fn nobody_there_not_tls_and_silence_are_one_line_each() {
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = free.local_addr().unwrap().port();
        drop(free);
        let nobody = Address::parse(&format!("127.0.0.1:{port}")).unwrap();
        let e = fetch(&nobody).await.unwrap_err();
        assert!(
            e.starts_with(&format!("127.0.0.1:{port} (127.0.0.1): ")),
            "{e}"
        );
        assert!(e.to_lowercase().contains("refused"), "{e}");

        let http = serve(|mut tcp| async move {
            use tokio::io::AsyncWriteExt;
            let _ = tcp.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        })
        .await;
        let e = fetch(&http).await.unwrap_err();
        assert!(e.contains("does not speak TLS"), "{e}");

        let silent = serve(|tcp| async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(tcp);
        })
        .await;
        let e = fetch_within(&silent, Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(e.contains("did not answer within 0.3 s"), "{e}");

        let e = fetch(&Address::parse("nowhere.invalid").unwrap())
            .await
            .unwrap_err();
        assert!(e.starts_with("nowhere.invalid: no such server here"), "{e}");
    }

    #[tokio::test]
    async fn a_huge_chain_is_refused_before_it_is_kept() {
        let (cert, key) = certificate(&["cellar.local"]);
        // Copies of its certificate as "intermediates": 32 KiB and more.
        let copies = CHAIN_BYTES_MAX / cert.len() + 1;
        let a = tls_server(vec![cert; copies], key).await;
        let e = fetch(&a).await.unwrap_err();
        assert!(e.contains("bytes of certificates, more than 32768"), "{e}");
        // Past rustls' own bound on a handshake message (64 KiB).
        let (cert, key) = certificate(&["cellar.local"]);
        let copies = 70 * 1024 / cert.len();
        let a = tls_server(vec![cert; copies], key).await;
        let e = fetch(&a).await.unwrap_err();
        assert!(e.contains("more certificate bytes than a handshake"), "{e}");
    }

    #[test]
    fn trusted_servers_are_kept_listed_capped_and_forgotten() {
        let t = tempfile::tempdir().unwrap();
        let shown = |host: &str| {
            let (cert, _) = certificate(&[host]);
            Shown::of(Address::parse(host).unwrap(), cert.to_vec()).unwrap()
        };
        let cellar = shown("cellar.local");
        add(t.path(), &cellar).unwrap();
        let listed = list(t.path());
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].shown, cellar);
        // The same address again replaces its certificate.
        let again = shown("cellar.local");
        add(t.path(), &again).unwrap();
        assert_eq!(list(t.path())[0].shown.fingerprint, again.fingerprint);
        for i in 1..TRUSTED_MAX {
            add(t.path(), &shown(&format!("s{i}.local"))).unwrap();
        }
        let e = add(t.path(), &shown("one-more.local")).unwrap_err();
        assert!(e.contains("at most 32 servers are trusted"), "{e}");
        assert_eq!(list(t.path()).len(), TRUSTED_MAX);
        assert!(!t
            .path()
            .join(TRUSTED_DIR)
            .join("one-more.local_443.pem")
            .exists());
        // Replacing one still works at the cap.
        add(t.path(), &shown("cellar.local")).unwrap();
        forget(t.path(), &cellar.address).unwrap();
        assert_eq!(list(t.path()).len(), TRUSTED_MAX - 1);
        let e = forget(t.path(), &cellar.address).unwrap_err();
        assert_eq!(e, "cellar.local is not trusted");
        // A damaged file is left out, not fatal.
        std::fs::write(t.path().join(TRUSTED_DIR).join("bad.local_443.pem"), "junk").unwrap();
        assert_eq!(list(t.path()).len(), TRUSTED_MAX - 1);
    }

    #[test]
    fn a_certificate_too_large_or_unreadable_is_not_kept() {
        let a = Address::parse("cellar.local").unwrap();
        let e = Shown::of(a.clone(), vec![0x30; CERTIFICATE_BYTES_MAX + 1]).unwrap_err();
        assert!(e.contains("more than the 16384 kept"), "{e}");
        let e = Shown::of(a, b"not a certificate".to_vec()).unwrap_err();
        assert!(e.contains("not one this plug can read"), "{e}");
    }

    #[test]
    fn the_bundle_holds_the_roots_this_plug_and_the_trusted() {
        let t = tempfile::tempdir().unwrap();
        let share = t.path().join("share");
        std::fs::create_dir(&share).unwrap();
        let roots = t.path().join("roots.crt");
        let (root, _) = certificate(&["root.example"]);
        std::fs::write(&roots, certificate_pem(&root)).unwrap();
        let (own, _) = certificate(&["attic.local"]);
        let (cellar, _) = certificate(&["cellar.local"]);
        let bundle = Bundle {
            roots: Some(roots.clone()),
            data_dir: t.path().to_path_buf(),
        };
        add(
            t.path(),
            &Shown::of(Address::parse("cellar.local").unwrap(), cellar.to_vec()).unwrap(),
        )
        .unwrap();
        bundle.compose(&share, &own).unwrap();
        let text = std::fs::read_to_string(share.join(BUNDLE_FILE)).unwrap();
        let ders: Vec<Vec<u8>> = pem::parse_many(&text)
            .unwrap()
            .into_iter()
            .map(|p| p.into_contents())
            .collect();
        assert_eq!(ders, [root.to_vec(), own.to_vec(), cellar.to_vec()]);
        assert!(text.contains("# cellar.local\n"));
        // Without the layer's roots: the plug and the trusted only.
        std::fs::remove_file(&roots).unwrap();
        bundle.compose(&share, &own).unwrap();
        let text = std::fs::read_to_string(share.join(BUNDLE_FILE)).unwrap();
        assert_eq!(pem::parse_many(&text).unwrap().len(), 2);
    }

    #[test]
    fn file_names_stand_for_their_address_only() {
        let a = Address::parse("cellar.local:8443").unwrap();
        assert_eq!(Address::of_file(&a.file_name()), Some(a));
        for other in ["x.pem", "cellar.local_0.pem", "a_b_1.pem", ".x_1.pem.tmp"] {
            assert_eq!(Address::of_file(other), None, "{other}");
        }
    }
}

//! What the web leaves the bundled services (Prosody): the certificate and the names in the
//! share directory from the first start, the names again after setup with the services
//! restarted to take them, and no restart for a change that keeps the names.

use crate::common::{set_up, FakeDevice, Server, PASSPHRASE};
use std::os::unix::fs::PermissionsExt;

#[tokio::test(flavor = "current_thread")]
async fn the_services_get_the_certificate_and_follow_the_devices_name() {
    let (server, share) = Server::unclaimed_sharing();

    // Before setup: the device's certificate and key (not world-readable), no name yet.
    let pem = std::fs::read_to_string(share.join("tls.pem")).unwrap();
    assert!(pem.contains("PRIVATE KEY") && pem.contains("CERTIFICATE"));
    let mode = std::fs::metadata(share.join("tls.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o640);
    let site = cairn_web::share::read_site(&share).unwrap();
    assert_eq!(site.service_domain(), "cairn.local");

    // Setup names the device: the names follow and Prosody is restarted to take them.
    let (mut b, r) = set_up(&server).await;
    assert_eq!(r.status, 303, "{}", r.body); // to the dashboard: this web keeps no vault
    let site = cairn_web::share::read_site(&share).unwrap();
    assert_eq!(site.service_domain(), "attic.local");
    assert!(
        server.device.called("restart prosody"),
        "{:?}",
        server.device.calls()
    );

    // A new passphrase keeps the names: nothing is restarted.
    let restarts = |d: &FakeDevice| d.calls().iter().filter(|c| *c == "restart prosody").count();
    let before = restarts(&server.device);
    let csrf = b.get("/admin/passphrase").await.csrf();
    let r = b
        .form(
            "/admin/passphrase",
            &[
                ("csrf", &csrf),
                ("old", PASSPHRASE),
                ("new", "another passphrase"),
                ("new2", "another passphrase"),
            ],
        )
        .await;
    assert!(
        r.status == 200 || r.status == 303,
        "{} {}",
        r.status,
        r.body
    );
    assert_eq!(restarts(&server.device), before);
}

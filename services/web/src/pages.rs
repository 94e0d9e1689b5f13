//! The pages, as maud templates: checked when the binary is built, and every value put into
//! them is escaped (a device named `<script>` shows as text). No inline script or style (the
//! Content-Security-Policy forbids both): the one stylesheet and script are served from the
//! binary ([`STYLE`], [`SCRIPT`]).

use std::borrow::Cow;

use maud::{html, Markup, DOCTYPE};

use crate::device::{valid_service_name, Board, Service, UpdateStatus};
use crate::files::Listing;
use crate::storage::{Invitation, Status};
use crate::sysinfo::{human_bytes, human_duration, Disk, Memory};

/// The stylesheet, `/static/style.css`.
pub const STYLE: &str = include_str!("../assets/style.css");
/// The script of the claim and setup pages, `/static/setup.js`.
pub const SCRIPT: &str = include_str!("../assets/setup.js");
/// The script of the owner's pages (the Storage page follows pairing live), `/static/admin.js`.
pub const ADMIN_SCRIPT: &str = include_str!("../assets/admin.js");

/// Every page's frame: small, readable on a phone.
fn layout(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) }
                link rel="stylesheet" href="/static/style.css";
            }
            body { main { (body) } }
        }
    }
}

/// The unclaimed device's page: press the button.
pub fn press() -> Markup {
    layout(
        "Set up your Cairn",
        html! {
            h1 { "Press the button on your Cairn" }
            p { "A short press on the plug's button lets this browser set the device up. \
                 Keep this page open: it goes on by itself once you have pressed." }
            p #status role="status" { "Reaching the device…" }
            button #again type="button" hidden { "Try again" }
            noscript { p.error { "This page needs JavaScript to notice the button press." } }
            script src="/static/setup.js" {}
        },
    )
}

/// What the setup form holds (kept when it comes back with errors).
#[derive(Clone, Debug, Default)]
pub struct SetupValues {
    /// The device's name.
    pub name: String,
    /// The admin passphrase.
    pub passphrase: String,
    /// The passphrase again.
    pub passphrase2: String,
    /// GiB, as typed.
    pub offer_gib: String,
    /// The public domain name, empty for none.
    pub domain: String,
}

/// What is wrong with each field.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetupErrors {
    /// The device's name.
    pub name: Option<String>,
    /// The passphrase (either field).
    pub passphrase: Option<String>,
    /// The storage offered.
    pub offer: Option<String>,
    /// The domain name.
    pub domain: Option<String>,
    /// Not about one field (e.g. the settings could not be written).
    pub form: Option<String>,
}

impl SetupErrors {
    /// Whether every field is fine.
    pub fn is_empty(&self) -> bool {
        *self == SetupErrors::default()
    }
}

fn field_error(e: &Option<String>) -> Markup {
    html! { @if let Some(e) = e { p.error { (e) } } }
}

/// The setup form, for the browser that won the claim. `offer_max_gib`: the data partition.
pub fn setup(v: &SetupValues, e: &SetupErrors, csrf: &str, offer_max_gib: u64) -> Markup {
    layout(
        "Set up your Cairn",
        html! {
            h1 { "Set up your Cairn" }
            (field_error(&e.form))
            form method="post" action="/setup" {
                input type="hidden" name="csrf" value=(csrf);
                label for="name" { "Device name" }
                input #name type="text" name="name" value=(v.name) required
                    maxlength="63" autocapitalize="none" autocomplete="off" spellcheck="false";
                p.hint { "Lowercase letters, digits and hyphens; the device becomes "
                         b { "NAME.local" } " on your network." }
                (field_error(&e.name))
                label for="passphrase" { "Admin passphrase" }
                input #passphrase type="password" name="passphrase" value=(v.passphrase)
                    required minlength="10" maxlength="1024" autocomplete="new-password";
                label for="passphrase2" { "The passphrase again" }
                input #passphrase2 type="password" name="passphrase2" value=(v.passphrase2)
                    required minlength="10" maxlength="1024" autocomplete="new-password";
                (field_error(&e.passphrase))
                label for="offer" { "Storage offered to friends: " output #offer-value for="offer" { (v.offer_gib) " GiB" } }
                input #offer type="range" name="offer" min="0" max=(offer_max_gib) step="1"
                    value=(v.offer_gib);
                p.hint { "Of " (offer_max_gib) " GiB on the card. Friends' plugs keep as much of yours in return." }
                (field_error(&e.offer))
                label for="domain" { "Public domain name (optional)" }
                input #domain type="text" name="domain" value=(v.domain) placeholder="example.org"
                    autocapitalize="none" spellcheck="false";
                (field_error(&e.domain))
                button type="submit" { "Finish setup" }
            }
            script src="/static/setup.js" {}
        },
    )
}

/// The login form.
pub fn login(error: Option<&str>) -> Markup {
    layout(
        "Log in",
        html! {
            h1 { "Log in to your Cairn" }
            @if let Some(e) = error { p.error role="alert" { (e) } }
            form method="post" action="/admin/login" {
                label for="passphrase" { "Admin passphrase" }
                input #passphrase type="password" name="passphrase" required autofocus
                    autocomplete="current-password";
                button type="submit" { "Log in" }
            }
        },
    )
}

/// What the dashboard shows; each part may be missing with the reason.
pub struct Dashboard {
    /// The device's name.
    pub name: String,
    /// `board`'s answer (the health shown).
    pub board: Result<Board, String>,
    /// `status`'s answer.
    pub services: Result<Vec<Service>, String>,
    /// The device's memory.
    pub memory: Result<Memory, String>,
    /// The data partition.
    pub disk: Result<Disk, String>,
    /// The storage node's figures.
    pub storage: Result<Status, String>,
    /// The services' backups, if this device makes any.
    pub backups: Option<BackupView>,
    /// How many Jabber accounts Prosody has, when it was asked (it runs and the web has its
    /// admin socket).
    pub jabber_accounts: Option<Result<usize, String>>,
    /// The household's fediverse handles, the owner's first (`@owner@DOMAIN`).
    pub social_handles: Vec<String>,
}

/// Below this much room on the data partition for the services (they are not root), Jabber's
/// line says the disk is full: Prosody cannot keep messages, archives or accounts.
pub const DISK_FULL_BYTES: u64 = 1 << 20;

/// The dashboard's Jabber line: Prosody's state from PID 1 (running, restarting, not in this
/// image), its accounts, and a full data partition, which it cannot work without.
fn jabber_line(d: &Dashboard) -> Markup {
    let Ok(services) = &d.services else {
        return html! {};
    };
    let full = d.disk.as_ref().is_ok_and(|s| s.available < DISK_FULL_BYTES);
    html! {
        @match services.iter().find(|s| s.name == "prosody") {
            None => p #jabber { "Jabber: not in this image (it carries no system layer)." },
            Some(s) => p #jabber {
                "Jabber: "
                (service_state(s, html! {
                    @match &d.jabber_accounts {
                        Some(Ok(1)) => ", 1 account",
                        Some(Ok(n)) => { ", " (n) " accounts" },
                        Some(Err(e)) => { ", its accounts unknown: " (e) },
                        None => "",
                    }
                    " — " a href="/admin/chat" { "Chat" }
                }))
            },
        }
        @if full {
            p #jabber-disk .error {
                "The data partition is full: Jabber cannot keep new messages, archives or accounts "
                "until room is made on it (Files, or less storage offered to friends)."
            }
        }
    }
}

/// A bundled service's state from PID 1 in words (`running` followed by `running_more`,
/// restarting with how often, stopped, failed), and PID 1's reason if it gave one.
fn service_state(s: &Service, running_more: Markup) -> Markup {
    html! {
        @match s.state.as_str() {
            "ready" => { strong { "running" } (running_more) },
            "down" | "stopping" => strong { "stopped" },
            "waiting" | "starting" | "backoff" | "exited" if s.restarts == 0 => strong { "starting" },
            "waiting" | "starting" | "backoff" | "exited" => {
                strong { "restarting" } " (restarted " (s.restarts) " times since boot)"
            },
            "failed" => strong { "failed" },
            other => strong { (other) },
        }
        @if let Some(r) = &s.reason { br; small { (r) } }
    }
}

/// The dashboard's fediverse line: snac's state from PID 1 and the household's handles, the
/// addresses people follow.
fn social_line(d: &Dashboard) -> Markup {
    let Ok(services) = &d.services else {
        return html! {};
    };
    html! {
        @match services.iter().find(|s| s.name == "snac") {
            None => p #social { "Social: not in this image (it carries no system layer)." },
            Some(s) => {
                p #social {
                    "Social: "
                    (service_state(s, html! { " — " a href="/admin/social" { "Social" } }))
                }
                @if !d.social_handles.is_empty() {
                    p #social-handles {
                        "Handles: "
                        @for (i, h) in d.social_handles.iter().enumerate() {
                            @if i > 0 { ", " }
                            code { (h) }
                        }
                    }
                }
            },
        }
    }
}

/// The services' backups as the dashboard shows them.
pub struct BackupView {
    /// Whether they have their secret (after setup, or the first login on an older plug).
    pub ready: bool,
    /// The snapshot of an earlier plug's backups that waits to be restored.
    pub waiting: Option<u64>,
    /// The folders backed up (`prosody`).
    pub folders: Vec<String>,
    /// Time between backups.
    pub every: std::time::Duration,
    /// The last one since the service started.
    pub last: Option<crate::backup::Outcome>,
}

/// One backup's result in words.
pub fn backup_done(d: &crate::backup::Done) -> String {
    match d {
        crate::backup::Done::Stored {
            snapshot,
            files,
            bytes,
        } => format!(
            "Backed up: snapshot {snapshot}, {files} files, {}.",
            human_bytes(*bytes)
        ),
        crate::backup::Done::Unchanged => "Nothing changed since the last backup.".into(),
    }
}

fn backups(b: &BackupView, csrf: &str) -> Markup {
    let hours = b.every.as_secs() / 3600;
    html! {
        h2 { "Backups" }
        p #backups {
            "Your services' data (" (b.folders.join(", ")) ") goes into a vault of its own every "
            @if hours == 24 { "day" } @else { (hours) " hours" }
            ", encrypted and spread over your partners like your files; the recovery key brings it back. "
            @if !b.ready {
                "It starts once you have logged in."
            } @else if let Some(snapshot) = b.waiting {
                "The backups of your earlier plug (snapshot " (snapshot) ") are on your partners and wait to be restored: stop the services, move their folders away and run "
                code { "cairn backup restore" } " (see the README). Until then none is made here; "
                "Back up now starts this plug's own instead (the earlier ones stay, older)."
            } @else {
                @match &b.last {
                    None => "No backup since the device started.",
                    Some(o) => {
                        @let ago = o.at.elapsed().unwrap_or_default().as_secs();
                        @match &o.result {
                            Ok(d) => { "Last, " (ago / 60) " min ago: " (backup_done(d)) }
                            Err(e) => span.error { "The last backup, " (ago / 60) " min ago, failed: " (e) }
                        }
                    }
                }
            }
        }
        @if b.ready {
            form method="post" action="/admin/backup" {
                input type="hidden" name="csrf" value=(csrf);
                button.secondary type="submit" { "Back up now" }
            }
        }
    }
}

/// What the plug's LEDs show now, in the words of the board's README.
fn led_says(b: &Board) -> &'static str {
    if b.window.is_some() {
        return "the green LED blinks fast: the pairing window is open.";
    }
    match b.health.as_str() {
        "booting" => "the green LED blinks evenly, once a second.",
        "setup-needed" => "the green LED flashes twice every 2 seconds.",
        "healthy" => "the green LED is on.",
        "degraded" => "the green LED dips every 3 seconds; a red LED, where there is one, is on.",
        "error" => "the green LED flashes three times every 2 seconds; a red LED, where there is one, is on.",
        _ => "the LEDs show it as the board's README says.",
    }
}

/// The owner's dashboard.
pub fn dashboard(d: &Dashboard, csrf: &str) -> Markup {
    layout(
        &d.name,
        html! {
            (nav(Section::Dashboard))
            h1 { (d.name) }
            @match &d.board {
                Ok(b) => p #health {
                    "Health: " strong class=(format!("health-{}", b.health)) { (b.health) }
                    " — " (led_says(b))
                },
                Err(e) => p.error { "The board's state is unknown: " (e) },
            }
            h2 { "Services" }
            @match &d.services {
                Ok(services) => table {
                    thead { tr { th { "Service" } th { "State" } th { "Memory" } th {} } }
                    tbody {
                        @for s in services {
                            tr {
                                td { (s.name) }
                                td { (s.state) @if let Some(r) = &s.reason { br; small { (r) } } }
                                td.num { @if let Some(m) = s.memory_bytes { (human_bytes(m)) } @else { "–" } }
                                td { (restart_form(csrf, &s.name, None)) }
                            }
                        }
                    }
                },
                Err(e) => p.error { "The services' state is unknown: " (e) },
            }
            h2 { "Chat" }
            (jabber_line(d))
            h2 { "Social" }
            (social_line(d))
            h2 { "Storage" }
            (storage_summary(&d.storage))
            p { a href="/admin/storage" { "Partners and pairing" } }
            h2 { "Resources" }
            p {
                "Memory: "
                @match &d.memory {
                    Ok(m) => { (human_bytes(m.total - m.available.min(m.total))) " in use of " (human_bytes(m.total)) },
                    Err(e) => span.error { (e) },
                }
                br;
                "Storage: "
                @match &d.disk {
                    Ok(s) => { (human_bytes(s.total - s.available.min(s.total))) " in use of " (human_bytes(s.total)) },
                    Err(e) => span.error { (e) },
                }
            }
            @if let Some(b) = &d.backups { (backups(b, csrf)) }
            h2 { "Device" }
            (device_controls(csrf, None))
            p { a href="/admin/passphrase" { "Change the passphrase" } }
            form method="post" action="/admin/logout" {
                input type="hidden" name="csrf" value=(csrf);
                button.secondary type="submit" { "Log out" }
            }
        },
    )
}

/// Which part of the owner's pages one is in (the navigation marks it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Section {
    /// `/admin/`: health, services, resources.
    Dashboard,
    /// `/admin/files`: the vault's snapshots and folders, uploads and downloads.
    Files,
    /// `/admin/storage`: partners, pairing, invitations.
    Storage,
    /// `/admin/chat`: the household's Jabber accounts.
    Chat,
    /// `/admin/social`: the owner's fediverse account.
    Social,
    /// `/admin/system` and each service's log.
    System,
}

/// The owner's navigation, atop each of their pages.
fn nav(current: Section) -> Markup {
    let here = |s: Section| (s == current).then_some("page");
    html! {
        nav aria-label="Admin" {
            a href="/admin/" aria-current=[here(Section::Dashboard)] { "Dashboard" }
            a href="/admin/files" aria-current=[here(Section::Files)] { "Files" }
            a href="/admin/storage" aria-current=[here(Section::Storage)] { "Storage" }
            a href="/admin/chat" aria-current=[here(Section::Chat)] { "Chat" }
            a href="/admin/social" aria-current=[here(Section::Social)] { "Social" }
            a href="/admin/system" aria-current=[here(Section::System)] { "System" }
        }
    }
}

/// The Chat page: each account's address and `xmpp:` link, a new password for it, its removal;
/// a form for a new one. `note`: what the last change did.
pub fn chat(
    domain: &str,
    accounts: &Result<Vec<String>, String>,
    csrf: &str,
    note: Option<&str>,
) -> Markup {
    layout(
        "Chat",
        html! {
            (nav(Section::Chat))
            h1 { "Chat" }
            p {
                "Jabber (XMPP) accounts for your household at " code { (domain) }
                ". Sign in from any Jabber app (Conversations, Monal, Gajim, Dino) with the address and password."
            }
            @if let Some(n) = note { p #chat-note role="status" { (n) } }
            @if accounts.as_ref().is_ok_and(|l| l.iter().any(|j| j.starts_with("owner@"))) {
                p {
                    code { "owner@" (domain) } " is yours, made at setup: give it a password below to sign in with it (your passphrase stays for this page only)."
                }
            }
            @match accounts {
                Ok(list) if list.is_empty() => p #accounts { "No accounts yet." },
                Ok(list) => table #accounts {
                    thead { tr { th { "Address" } th { "New password" } th {} } }
                    tbody {
                        @for jid in list {
                            @let name = jid.split('@').next().unwrap_or("");
                            tr {
                                td { a href=(format!("xmpp:{jid}")) { (jid) } }
                                td {
                                    form method="post" action="/admin/chat/password" {
                                        input type="hidden" name="csrf" value=(csrf);
                                        input type="hidden" name="name" value=(name);
                                        input type="password" name="password" autocomplete="new-password" aria-label=(format!("New password for {jid}"));
                                        button.small type="submit" { "Set" }
                                    }
                                }
                                td {
                                    details {
                                        summary { "Remove…" }
                                        form method="post" action="/admin/chat/remove" {
                                            input type="hidden" name="csrf" value=(csrf);
                                            input type="hidden" name="name" value=(name);
                                            button.small type="submit" { "Remove, with its messages" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                },
                Err(e) => p.error #accounts { (e) },
            }
            h2 { "New account" }
            form #new-account method="post" action="/admin/chat/add" {
                input type="hidden" name="csrf" value=(csrf);
                label { "Name " input type="text" name="name" autocomplete="off" placeholder="alex"; }
                label { "Password " input type="password" name="password" autocomplete="new-password"; }
                button type="submit" { "Add" }
            }
        },
    )
}

/// The household's fediverse accounts as the Social page shows them.
pub struct SocialView {
    /// Their domain.
    pub domain: String,
    /// Each account (the owner's first) and its first password, or why it is not there yet.
    pub accounts: Vec<(String, Result<String, String>)>,
    /// What the last change did.
    pub note: Option<String>,
    /// This plug's certificate's SHA-256 fingerprint.
    pub fingerprint: String,
    /// The other servers trusted.
    pub trusted: Vec<crate::trust::Trusted>,
    /// A server looked at, for the owner to trust.
    pub shown: Option<crate::trust::Shown>,
    /// What the last look at a server, trust or forget did (the text, whether it went well).
    pub servers_note: Option<(String, bool)>,
}

/// The Social page: each handle with its first password, what to sign in with, a new account;
/// the other servers trusted.
pub fn social(v: &SocialView, csrf: &str) -> Markup {
    layout(
        "Social",
        html! {
            (nav(Section::Social))
            h1 { "Social" }
            p {
                "Your household's own place in the fediverse (ActivityPub: Mastodon and the servers that talk with it), run by snac on this plug. "
                "Sign in from a Mastodon app (Tusky, Ice Cubes, Elk, Mastodon's own; the server is this plug's address) with the name and the password below, and change the password on the account's own page."
            }
            @if let Some(n) = &v.note { p #social-note role="status" { (n) } }
            table #social-accounts {
                thead { tr { th { "Address" } th { "First password" } th {} } }
                tbody {
                    @for (name, password) in &v.accounts {
                        tr data-name=(name) {
                            td { a href=(format!("https://{}/{name}", v.domain)) { "@" (name) "@" (v.domain) } }
                            @match password {
                                Ok(p) => td { code.password { (p) } },
                                Err(e) => td.pending { (e) },
                            }
                            td { (social_remove_form(name, &v.domain, csrf)) }
                        }
                    }
                }
            }
            h2 { "New account" }
            form #new-social method="post" action="/admin/social/add" {
                input type="hidden" name="csrf" value=(csrf);
                label { "Name " input type="text" name="name" autocomplete="off" placeholder="alex"; }
                button type="submit" { "Add" }
            }
            (other_servers(v, csrf))
        },
    )
}

/// A household account's removal, folded away so that it is never one stray tap; none for the
/// owner's (the plug's own account).
fn social_remove_form(name: &str, domain: &str, csrf: &str) -> Markup {
    html! {
        @if name != crate::social::OWNER {
            details.remove {
                summary { "Remove…" }
                p { "@" (name) "@" (domain) " and everything it posted are deleted from this plug; its followers elsewhere keep what they received." }
                form method="post" action="/admin/social/remove" {
                    input type="hidden" name="csrf" value=(csrf);
                    input type="hidden" name="name" value=(name);
                    button.small type="submit" { "Remove, with its posts" }
                }
            }
        }
    }
}

/// The Social page's servers trusted besides those with a public authority's certificate.
fn other_servers(v: &SocialView, csrf: &str) -> Markup {
    html! {
        h2 { "Other servers" }
        p {
            "Your accounts reach other servers over HTTPS and check who they are. A server whose certificate a public authority signed (one with a domain of its own) needs nothing here. "
            "Another plug, or a server with a certificate of its own making, is trusted here by its certificate's fingerprint: compare it with the one its owner sees (on this section of their plug's Social page, or its console's line)."
        }
        p #own-fingerprint { "This plug's certificate (SHA-256): " code.fingerprint { (v.fingerprint) } }
        @if let Some((text, ok)) = &v.servers_note {
            p #servers-note role="status" class=[(!ok).then_some("error")] { (text) }
        }
        @if let Some(s) = &v.shown {
            div #shown {
                p { b { (s.address) } " shows a certificate for " (s.names.join(", ")) " with the fingerprint" }
                p { code.fingerprint #shown-fingerprint { (s.fingerprint) } }
                form #trust-server method="post" action="/admin/social/trust" {
                    input type="hidden" name="csrf" value=(csrf);
                    input type="hidden" name="address" value=(s.address);
                    input type="hidden" name="fingerprint" value=(s.fingerprint);
                    button type="submit" { "Trust " (s.address) }
                }
            }
        }
        form #look-server method="post" action="/admin/social/look" {
            input type="hidden" name="csrf" value=(csrf);
            label { "Server " input type="text" name="address" autocomplete="off" autocapitalize="none" spellcheck="false" placeholder="cellar.local"; }
            button type="submit" { "Look" }
        }
        @if !v.trusted.is_empty() {
            table #trusted-servers {
                thead { tr { th { "Server" } th { "Certificate" } th {} } }
                tbody {
                    @for t in &v.trusted {
                        tr data-address=(t.address) {
                            td { (t.address) br; small { (t.shown.names.join(", ")) } }
                            td { code.fingerprint { (t.shown.fingerprint) } }
                            td {
                                form method="post" action="/admin/social/forget" {
                                    input type="hidden" name="csrf" value=(csrf);
                                    input type="hidden" name="address" value=(t.address);
                                    button.small.secondary type="submit" { "Forget" }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A service's restart button. `back`: the page the result leads back to (the server knows
/// which values it takes; none: the dashboard).
fn restart_form(csrf: &str, service: &str, back: Option<&str>) -> Markup {
    html! {
        form method="post" action="/admin/restart" {
            input type="hidden" name="csrf" value=(csrf);
            input type="hidden" name="service" value=(service);
            @if let Some(b) = back { input type="hidden" name="back" value=(b); }
            button.small type="submit" { "Restart" }
        }
    }
}

/// Reboot and power off, each folded away so that neither is one stray tap.
fn device_controls(csrf: &str, back: Option<&str>) -> Markup {
    html! {
        details {
            summary { "Reboot…" }
            form method="post" action="/admin/reboot" {
                input type="hidden" name="csrf" value=(csrf);
                @if let Some(b) = back { input type="hidden" name="back" value=(b); }
                button type="submit" { "Reboot now" }
            }
        }
        details {
            summary { "Power off…" }
            p { "The device stays off until it is unplugged and plugged in again." }
            form method="post" action="/admin/poweroff" {
                input type="hidden" name="csrf" value=(csrf);
                button type="submit" { "Power off now" }
            }
        }
    }
}

/// The link to a service's log page (none for a name no log page accepts).
fn log_href(service: &str) -> Option<String> {
    valid_service_name(service).then(|| format!("/admin/logs/{service}"))
}

/// The System page's update: which system runs, which is kept as the way back, how the last
/// update ended, and the upload of a bundle (admin.js sends it; the answer is shown in place).
fn update_section(update: &Result<UpdateStatus, String>, csrf: &str) -> Markup {
    html! {
        h2 { "System update" }
        @match update {
            Ok(u) => {
                table #update-slots {
                    thead { tr { th { "Slot" } th { "System" } th { "" } } }
                    tbody {
                        @for name in ["a", "b"] {
                            tr {
                                td { (name) }
                                td { @match u.slot(name) {
                                    Some(v) => { (v.version) " (build " (v.build) ")" },
                                    None => "nothing recorded",
                                } }
                                td { (slot_marks(u, name)) }
                            }
                        }
                    }
                }
                p #update-last { "Last update: " (u.last) }
            },
            Err(e) => p.error { "The slots' state is unknown: " (e) },
        }
        p { "A signed update (" code { "cairn-BOARD-VERSION.cupd" } ") is checked as it arrives and written into the slot that is not running; once it is read back whole, the device restarts into it. If the new system does not come up healthy, the device goes back to this one by itself. Your files and settings are not touched." }
        div #update-upload data-csrf=(csrf) {
            label for="pick-update" { "Update bundle" }
            input #pick-update type="file" accept=".cupd";
            progress #update-progress max="1" value="0" hidden {}
            p #update-status aria-live="polite" {}
        }
        script src="/static/admin.js" {}
    }
}

/// What a slot is to the device: running, good, on trial.
fn slot_marks(u: &UpdateStatus, name: &str) -> String {
    let mut marks = Vec::new();
    if u.running == name {
        marks.push("running".to_string());
    }
    if u.active == name {
        marks.push("good".to_string());
    }
    if u.trying.as_deref() == Some(name) {
        marks.push(format!("on trial, {} tries left", u.tries_left));
    }
    marks.join(", ")
}

/// The System page: each service with its state, its log and a restart; the system update;
/// reboot, power off and the passphrase.
pub fn system(
    services: &Result<Vec<Service>, String>,
    update: &Result<UpdateStatus, String>,
    csrf: &str,
) -> Markup {
    layout(
        "System",
        html! {
            (nav(Section::System))
            h1 { "System" }
            h2 { "Services" }
            @match services {
                Ok(services) => table {
                    thead { tr { th { "Service" } th { "State" } th { "Up for" } th { "Restarts" } th {} } }
                    tbody {
                        @for s in services {
                            tr {
                                td { (s.name) }
                                td { (s.state) @if let Some(r) = &s.reason { br; small { (r) } } }
                                td.num { @if let Some(u) = s.uptime_ms { (human_duration(u)) } @else { "–" } }
                                td.num { (s.restarts) }
                                td.actions {
                                    @if let Some(href) = log_href(&s.name) {
                                        a href=(href) { "Log" }
                                        " "
                                    }
                                    (restart_form(csrf, &s.name, Some("system")))
                                }
                            }
                        }
                    }
                },
                Err(e) => p.error { "The services' state is unknown: " (e) },
            }
            (update_section(update, csrf))
            h2 { "Device" }
            (device_controls(csrf, Some("system")))
            p { a href="/admin/passphrase" { "Change the passphrase" } }
            details {
                summary { "Factory reset…" }
                p { "Wipes everything on this plug — your settings, your vault's key, your friends' shards — and it starts again as new. Your files come back only with your recovery key. After your passphrase, the device's button must be pressed." }
                form method="post" action="/admin/reset" {
                    input type="hidden" name="csrf" value=(csrf);
                    label for="reset-passphrase" { "Passphrase" }
                    input #reset-passphrase type="password" name="passphrase" required autocomplete="current-password";
                    button type="submit" { "Reset, then press the button" }
                }
            }
        },
    )
}

/// After the passphrase: now the press.
pub fn reset_armed() -> Markup {
    layout(
        "Factory reset",
        html! {
            h1 { "Press the button now" }
            p { "Press the button on your Cairn within a minute: it wipes itself and restarts as a new device (\"Press the button on your Cairn\" again). If you do not press it, nothing happens." }
            p { a href="/admin/system" { "I changed my mind" } }
        },
    )
}

/// One service's log page: its state, then its log as PID 1 keeps it, the newest lines at the
/// bottom.
pub fn logs(service: &Service, log: &str, csrf: &str) -> Markup {
    let title = format!("Log: {}", service.name);
    let here = log_href(&service.name).unwrap_or_default();
    layout(
        &title,
        html! {
            (nav(Section::System))
            h1 { (title) }
            p {
                "State: " strong { (service.state) }
                @if let Some(r) = &service.reason { " (" (r) ")" }
            }
            @if log.is_empty() {
                p { "Nothing logged yet." }
            } @else {
                p { a href="#newest" { "Jump to the newest lines" } }
                pre.log { (printable(log)) }
            }
            p #newest { a href=(here) { "Reload" } " · " a href="/admin/system" { "All services" } }
            (restart_form(csrf, &service.name, Some("system")))
        },
    )
}

/// Log text as it can be shown: control characters (a terminal's colour codes, a stray NUL)
/// become their visible symbols (`␛`, `␀`), so that nothing in a log acts on the page or hides
/// text; line breaks and tabs stay.
fn printable(text: &str) -> Cow<'_, str> {
    let shown = |c: char| c == '\n' || c == '\t' || !c.is_control();
    if text.chars().all(shown) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars()
            .map(|c| match c as u32 {
                _ if shown(c) => c,
                // U+2400…U+241F: the symbols for C0's controls.
                n @ 0..=0x1f => char::from_u32(0x2400 + n).unwrap_or('\u{fffd}'),
                0x7f => '\u{2421}',
                _ => '\u{fffd}',
            })
            .collect(),
    )
}

/// Errors of the passphrase form, by field.
#[derive(Clone, Debug, Default)]
pub struct PassphraseErrors {
    /// The current passphrase (wrong, or too many tries).
    pub old: Option<String>,
    /// The new one (either field).
    pub new: Option<String>,
}

/// The passphrase change form.
pub fn passphrase(csrf: &str, e: &PassphraseErrors) -> Markup {
    layout(
        "Change the passphrase",
        html! {
            h1 { "Change the passphrase" }
            p { "Every session ends, this one too: you log in again with the new passphrase." }
            form method="post" action="/admin/passphrase" {
                input type="hidden" name="csrf" value=(csrf);
                label for="old" { "Current passphrase" }
                input #old type="password" name="old" required autocomplete="current-password";
                (field_error(&e.old))
                label for="new" { "New passphrase" }
                input #new type="password" name="new" required minlength="10" maxlength="1024"
                    autocomplete="new-password";
                label for="new2" { "The new passphrase again" }
                input #new2 type="password" name="new2" required minlength="10" maxlength="1024"
                    autocomplete="new-password";
                (field_error(&e.new))
                button type="submit" { "Change" }
            }
            p { a href="/admin/" { "Back" } }
        },
    )
}

/// Offered and used storage and the redundancy of the owner's data, in a few lines.
fn storage_summary(status: &Result<Status, String>) -> Markup {
    html! {
        @match status {
            Ok(s) => {
                p #storage-figures {
                    "Offered to friends: " (human_bytes(s.capacity))
                    ", used by their shards: " (human_bytes(s.used)) "."
                    br;
                    "Partners: " (s.partners.len())
                    @let live = s.partners.iter().filter(|p| p.connected).count();
                    @if !s.partners.is_empty() { " (" (live) " connected now)" }
                    "."
                }
                @match (&s.chunks, &s.chunks_error) {
                    (Some(c), _) if c.chunks == 0 => p #redundancy { "Your data: nothing stored yet." },
                    (Some(c), _) if c.at_target() => p #redundancy .health-healthy {
                        "Your data: all " (c.chunks) " chunks at full redundancy."
                    },
                    (Some(c), _) => p #redundancy .health-degraded {
                        "Your data is below its redundancy target: " (c.full) " of " (c.chunks)
                        " chunks at full redundancy, " (c.degraded) " degraded, "
                        (c.unprotected) " only on this plug, " (c.unreadable) " unreadable."
                        @if c.held_here > 0 {
                            br;
                            (human_bytes(c.held_here_bytes)) " of shards wait on this plug for partners to take them."
                        }
                    },
                    (None, Some(e)) => p.error { "The redundancy of your data is unknown: " (e) },
                    (None, None) => p.error { "The redundancy of your data is unknown." },
                }
            },
            Err(e) => p.error #storage-figures { "The storage node is not answering: " (e) },
        }
    }
}

/// The Storage page: the figures, each partner with its books and audit score (and an
/// unpair), pairing with a plug nearby (followed live), and invitation codes.
pub fn storage(
    status: &Result<Status, String>,
    board: &Result<Board, String>,
    csrf: &str,
) -> Markup {
    let window = board.as_ref().ok().and_then(|b| b.window);
    let pairing = board
        .as_ref()
        .map(|b| b.pairing.clone())
        .unwrap_or_default();
    layout(
        "Storage",
        html! {
            (nav(Section::Storage))
            h1 { "Storage" }
            @if let Ok(s) = status {
                // What a friend sees in its partner list: the two owners can compare.
                p #this-plug { "This plug's id: " code { (s.peer) } }
            }
            (storage_summary(status))
            h2 { "Partners" }
            @match status {
                Ok(s) if s.partners.is_empty() => p #partners {
                    "No partners yet. Pair with a friend's plug below: your files are spread over partners' plugs, and yours keeps theirs."
                },
                Ok(s) => table #partners {
                    thead { tr { th { "Partner" } th { "Audits" } th { "Keeps for you" } th { "You keep for it" } th {} } }
                    tbody {
                        @for p in &s.partners {
                            tr {
                                td.peer {
                                    code { (p.peer) }
                                    br;
                                    small { (p.health) @if p.connected { ", connected" } ", via " (p.via) }
                                }
                                td.num { (format!("{:.0} %", p.score * 100.0)) }
                                td.num { (human_bytes(p.held_for_us)) }
                                td.num { (human_bytes(p.held_for_them)) }
                                td {
                                    details {
                                        summary { "Unpair…" }
                                        form method="post" action="/admin/storage/unpair" {
                                            input type="hidden" name="csrf" value=(csrf);
                                            input type="hidden" name="peer" value=(p.peer);
                                            button.small type="submit" { "Unpair" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                },
                Err(_) => p.error { "Unknown while the storage node does not answer." },
            }
            h2 { "Pair with a plug nearby" }
            p { "Click Pair, then press the button on your friend's plug within the time shown. Both plugs must be on this network." }
            form method="post" action="/admin/storage/pair" {
                input type="hidden" name="csrf" value=(csrf);
                button #pair type="submit" { "Pair" }
            }
            p #pairing aria-live="polite" data-follow=[(window.is_some() || pairing.busy).then_some("1")] {
                @if let (Some(w), false, Some(last)) = (window, pairing.busy, &pairing.last) {
                    // The attempt ended unpaired; the window stays open for another.
                    "Last pairing: " (last) ". The window is open for " (w.remaining_ms.div_ceil(1000)) " s more: click Pair or press the button to try again."
                } @else if let Some(w) = window {
                    "The pairing window is open for " (w.remaining_ms.div_ceil(1000)) " s: press the button on the other plug now."
                } @else if pairing.busy {
                    "Finishing the pairing…"
                } @else if let Some(last) = &pairing.last {
                    "Last pairing: " (last) "."
                    @if last.contains(", code ") {
                        " The other plug's page shows the same code: compare them with its owner."
                    }
                }
            }
            h2 { "Invitation codes" }
            p { "For a friend's plug elsewhere: make a code here and send it; or paste theirs." }
            form method="post" action="/admin/storage/invite" {
                input type="hidden" name="csrf" value=(csrf);
                button type="submit" { "Make an invitation code" }
            }
            form method="post" action="/admin/storage/join" {
                input type="hidden" name="csrf" value=(csrf);
                label for="code" { "A friend's invitation code" }
                textarea #code name="code" rows="3" required maxlength="4096" spellcheck="false" {}
                button type="submit" { "Pair with this code" }
            }
            script src="/static/admin.js" {}
        },
    )
}

/// Each part of a folder's path with the path up to it (`a/b` → `a`: `a`, `b`: `a/b`).
fn crumbs(dir: &str) -> Vec<(&str, String)> {
    let mut at = String::new();
    dir.split('/')
        .filter(|p| !p.is_empty())
        .map(|part| {
            if !at.is_empty() {
                at.push('/');
            }
            at.push_str(part);
            (part, at.clone())
        })
        .collect()
}

/// The address of a folder (or a file's download) with its snapshot.
fn files_href(base: &str, key: &str, path: &str, snapshot: u64) -> String {
    format!(
        "{base}?{key}={}&snap={snapshot}",
        crate::form::percent_encode(path)
    )
}

/// The Files page: a folder of a snapshot (folders first), each file a download; the upload
/// into this folder (files or a whole folder), with a progress bar.
pub fn files(listing: &Result<Listing, String>, csrf: &str) -> Markup {
    layout(
        "Files",
        html! {
            (nav(Section::Files))
            h1 { "Files" }
            @match listing {
                Err(e) => p.error #files-error { (e) },
                Ok(l) => {
                    @if l.snapshots.is_empty() {
                        p #files-empty { "Nothing stored yet. Upload files below: they are encrypted here, then spread over your partners' plugs." }
                    } @else {
                        form method="get" action="/admin/files" {
                            input type="hidden" name="dir" value=(l.dir);
                            label for="snap" { "Snapshot" }
                            select #snap name="snap" {
                                @for r in &l.snapshots {
                                    option value=(r.seq) selected[r.seq == l.snapshot] {
                                        (r.seq) " — " (cairn_vault::progress::utc_time(r.time)) ", " (r.files) " files, " (human_bytes(r.bytes))
                                    }
                                }
                            }
                            button.small type="submit" { "Show" }
                        }
                        p.crumbs {
                            a href=(files_href("/admin/files", "dir", "", l.snapshot)) { "Top" }
                            @for (part, at) in crumbs(&l.dir) {
                                " / " a href=(files_href("/admin/files", "dir", &at, l.snapshot)) { (part) }
                            }
                        }
                        @if l.items.is_empty() {
                            p { "This folder is empty." }
                        } @else {
                            p { a #zip-folder href=(files_href("/admin/files/zip", "dir", &l.dir, l.snapshot)) download { "Download " @if l.dir.is_empty() { "everything" } @else { "this folder" } " as a zip" } }
                        }
                        @if l.items.is_empty() {
                        } @else {
                            table #files {
                                thead { tr { th { "Name" } th { "Size" } th { "Changed (UTC)" } } }
                                tbody {
                                    @for i in &l.items {
                                        tr {
                                            @if i.dir {
                                                td { a href=(files_href("/admin/files", "dir", &i.path, l.snapshot)) { (i.name) "/" } }
                                                td.num { a.zip href=(files_href("/admin/files/zip", "dir", &i.path, l.snapshot)) download title="Download this folder as a zip" { "zip" } }
                                            } @else {
                                                td { a href=(files_href("/admin/files/get", "path", &i.path, l.snapshot)) download=(i.name) { (i.name) } }
                                                td.num { (human_bytes(i.size)) }
                                            }
                                            td.num { (cairn_vault::progress::utc_time(i.mtime)) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                    h2 { "Upload" }
                    p { "Into " @if l.dir.is_empty() { "the top folder" } @else { code { (l.dir) } } ". Each upload (one file, many, or a folder) becomes one new snapshot; earlier snapshots keep what they had." }
                    div #upload data-dir=(l.dir) data-csrf=(csrf) {
                        label for="pick-files" { "Files" }
                        input #pick-files type="file" multiple;
                        label for="pick-folder" { "Or a whole folder" }
                        input #pick-folder type="file" webkitdirectory;
                        progress #upload-progress max="1" value="0" hidden {}
                        p #upload-status aria-live="polite" {}
                    }
                    h2 { "Your web site" }
                    p { "A zip of your site (its " code { "index.html" } " at the top, or in one folder) is served at this plug's address; the admin stays under " code { "/admin/" } ". It is kept in your vault's " code { "site" } " folder, so it comes back with your recovery key; files uploaded into that folder change it too." }
                    div #site-upload data-csrf=(csrf) {
                        label for="pick-site" { "The site's zip" }
                        input #pick-site type="file" accept=".zip,application/zip";
                        p #site-status aria-live="polite" {}
                    }
                    script src="/static/admin.js" {}
                }
            }
        },
    )
}

/// A new invitation code, to copy.
pub fn invitation(inv: &Invitation) -> Markup {
    layout(
        "Invitation code",
        html! {
            (nav(Section::Storage))
            h1 { "Invitation code" }
            p { "Send this code to your friend; they paste it on their plug's Storage page. It works once, for 24 hours." }
            textarea #invitation readonly rows="5" spellcheck="false" { (inv.code) }
            button #copy type="button" hidden { "Copy" }
            p { a href="/admin/storage" { "Back to Storage" } }
            script src="/static/admin.js" {}
        },
    )
}

/// The recovery key, shown until the owner confirms its last group.
pub fn recovery_key(key: &str, csrf: &str, error: Option<&str>) -> Markup {
    layout(
        "Your recovery key",
        html! {
            h1 { "Your recovery key" }
            p { "Write it down on paper and keep it somewhere safe, away from the plug. With it and a new plug, your files come back; without it, nobody can read them — not even you, if this plug is lost." }
            p.recovery #recovery-key { (key) }
            p { "It is not shown again once you confirm. To confirm you have it, type its last group (the last four characters)." }
            form method="post" action="/admin/recovery/confirm" {
                input type="hidden" name="csrf" value=(csrf);
                label for="last" { "The key's last group" }
                input #last type="text" name="last" required maxlength="16" autocomplete="off"
                    autocapitalize="characters" spellcheck="false";
                @if let Some(e) = error { p.error { (e) } }
                button type="submit" { "I wrote it down" }
            }
        },
    )
}

/// Before the recovery key is confirmed, in a session that was not shown it: the passphrase
/// shows it (again).
pub fn recovery_show(csrf: &str, error: Option<&str>) -> Markup {
    layout(
        "Your recovery key",
        html! {
            h1 { "Your recovery key" }
            p { "Setup ends with writing down your recovery key. Enter your passphrase to see it." }
            form method="post" action="/admin/recovery/show" {
                input type="hidden" name="csrf" value=(csrf);
                label for="passphrase" { "Passphrase" }
                input #passphrase type="password" name="passphrase" required autocomplete="current-password";
                @if let Some(e) = error { p.error { (e) } }
                button type="submit" { "Show the recovery key" }
            }
        },
    )
}

/// A page that only says something, with a way on.
pub fn message(title: &str, text: &str, link: (&str, &str)) -> Markup {
    layout(
        title,
        html! {
            h1 { (title) }
            p { (text) }
            p { a href=(link.0) { (link.1) } }
        },
    )
}

/// The owner's site until one is uploaded.
pub fn owner_site(name: &str) -> Markup {
    let title = format!("{name} — a Cairn plug");
    layout(
        &title,
        html! {
            h1 { (title) }
            p { "This plug keeps its owner's files and serves their site. Nothing is published here yet." }
        },
    )
}

/// Nothing here.
pub fn not_found() -> Markup {
    message("Not found", "There is no page here.", ("/", "Home"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped() {
        let html = owner_site("<script>alert(1)</script>").into_string();
        assert!(!html.contains("<script>alert"));
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        let v = SetupValues {
            name: "\"><script>".into(),
            ..SetupValues::default()
        };
        let html = setup(&v, &SetupErrors::default(), "t", 10).into_string();
        assert!(html.contains("value=\"&quot;&gt;&lt;script&gt;\""));
    }

    fn service(name: &str) -> Service {
        Service {
            name: name.into(),
            state: "ready".into(),
            ..Service::default()
        }
    }

    fn dashboard_with(services: Vec<Service>, accounts: Option<usize>, free: u64) -> String {
        let d = Dashboard {
            name: "hearth".into(),
            board: Err("test".into()),
            services: Ok(services),
            memory: Err("test".into()),
            disk: Ok(Disk {
                total: 1 << 30,
                available: free,
            }),
            storage: Err("test".into()),
            jabber_accounts: accounts.map(Ok),
            backups: None,
            social_handles: Vec::new(),
        };
        jabber_line(&d).into_string()
    }

    fn social_with(services: Vec<Service>, handles: &[&str]) -> String {
        let d = Dashboard {
            name: "hearth".into(),
            board: Err("test".into()),
            services: Ok(services),
            memory: Err("test".into()),
            disk: Err("test".into()),
            storage: Err("test".into()),
            jabber_accounts: None,
            backups: None,
            social_handles: handles.iter().map(|h| h.to_string()).collect(),
        };
        social_line(&d).into_string()
    }

    #[test]
    fn the_dashboard_says_how_the_fediverse_is_and_its_handles() {
        let none = social_with(vec![service("web")], &["@owner@hearth.local"]);
        assert!(none.contains("Social: not in this image"), "{none}");
        assert!(!none.contains("@owner@"), "{none}");
        let up = social_with(
            vec![service("snac")],
            &["@owner@hearth.local", "@alex@hearth.local"],
        );
        assert!(up.contains("Social: <strong>running</strong> — "), "{up}");
        assert!(up.contains("href=\"/admin/social\""), "{up}");
        assert!(
            up.contains(
                "Handles: <code>@owner@hearth.local</code>, <code>@alex@hearth.local</code>"
            ),
            "{up}"
        );
        let back = Service {
            state: "backoff".into(),
            restarts: 1,
            reason: Some("killed by signal 9".into()),
            ..service("snac")
        };
        let back = social_with(vec![back], &["@owner@hearth.local"]);
        assert!(
            back.contains("<strong>restarting</strong> (restarted 1 times"),
            "{back}"
        );
        assert!(back.contains("killed by signal 9"), "{back}");
        assert!(back.contains("<code>@owner@hearth.local</code>"), "{back}");
        let odd = social_with(vec![service("snac")], &["@<b>x</b>@hearth.local"]);
        assert!(odd.contains("@&lt;b&gt;x&lt;/b&gt;@hearth.local"), "{odd}");
    }

    #[test]
    fn the_social_page_offers_removal_for_household_accounts_only() {
        let v = SocialView {
            domain: "hearth.local".into(),
            accounts: vec![
                ("owner".into(), Ok("pw1".into())),
                ("alex".into(), Err("being made".into())),
            ],
            note: None,
            fingerprint: "AA:BB".into(),
            trusted: Vec::new(),
            shown: None,
            servers_note: None,
        };
        let html = social(&v, "t").into_string();
        assert_eq!(
            html.matches("action=\"/admin/social/remove\"").count(),
            1,
            "{html}"
        );
        let alex = &html[html.find("data-name=\"alex\"").unwrap()..];
        assert!(alex.contains("name=\"name\" value=\"alex\""), "{html}");
        assert!(alex.contains("<summary>Remove…</summary>"), "{html}");
        let owner = &html
            [html.find("data-name=\"owner\"").unwrap()..html.find("data-name=\"alex\"").unwrap()];
        assert!(!owner.contains("remove"), "{owner}");
    }

    #[test]
    fn the_dashboard_says_how_jabber_is_and_why() {
        let none = dashboard_with(vec![service("web")], None, 1 << 30);
        assert!(none.contains("Jabber: not in this image"), "{none}");
        let up = dashboard_with(vec![service("prosody")], Some(3), 1 << 30);
        assert!(up.contains("<strong>running</strong>, 3 accounts"), "{up}");
        assert!(!up.contains("full"), "{up}");
        let one = dashboard_with(vec![service("prosody")], Some(1), 1 << 30);
        assert!(one.contains(", 1 account "), "{one}");
        let back = Service {
            state: "backoff".into(),
            restarts: 2,
            reason: Some("killed by signal 9".into()),
            ..service("prosody")
        };
        let back = dashboard_with(vec![back], None, 1 << 30);
        assert!(
            back.contains("<strong>restarting</strong> (restarted 2 times"),
            "{back}"
        );
        assert!(back.contains("killed by signal 9"), "{back}");
        let boot = Service {
            state: "waiting".into(),
            ..service("prosody")
        };
        let boot = dashboard_with(vec![boot], None, 1 << 30);
        assert!(boot.contains("<strong>starting</strong>"), "{boot}");
        let full = dashboard_with(vec![service("prosody")], Some(2), 4096);
        assert!(
            full.contains("The data partition is full: Jabber cannot"),
            "{full}"
        );
    }

    #[test]
    fn the_backups_say_when_an_earlier_plugs_wait() {
        let view = |waiting| BackupView {
            ready: true,
            waiting,
            folders: vec!["prosody".into(), "snac".into()],
            every: std::time::Duration::from_secs(86_400),
            last: None,
        };
        let html = backups(&view(Some(4)), "t").into_string();
        assert!(html.contains("earlier plug (snapshot 4"), "{html}");
        assert!(html.contains("cairn backup restore"), "{html}");
        assert!(html.contains("Back up now"), "{html}");
        let html = backups(&view(None), "t").into_string();
        assert!(html.contains("(prosody, snac)"), "{html}");
        assert!(!html.contains("earlier plug"), "{html}");
    }

    #[test]
    fn a_log_shows_as_text() {
        let html = logs(
            &service("node"),
            "one\n<script>alert(1)</script>\n\u{1b}[31mred\0\tend\n",
            "t",
        )
        .into_string();
        assert!(!html.contains("<script>alert"));
        assert!(html.contains(
            "<pre class=\"log\">one\n&lt;script&gt;alert(1)&lt;/script&gt;\n␛[31mred␀\tend\n</pre>"
        ));
        assert_eq!(printable("plain\n"), Cow::Borrowed("plain\n"));
        assert_eq!(printable("\r\u{7f}\u{85}"), "␍␡\u{fffd}");
        let empty = logs(&service("web"), "", "t").into_string();
        assert!(empty.contains("Nothing logged yet.") && !empty.contains("<pre"));
    }

    #[test]
    fn only_a_name_pid1_could_have_is_linked_to_a_log() {
        let html = system(
            &Ok(vec![service("node"), service("../x")]),
            &Err("no".into()),
            "t",
        )
        .into_string();
        assert!(html.contains("href=\"/admin/logs/node\""));
        assert!(!html.contains("/admin/logs/.."));
        assert!(html.contains("name=\"back\" value=\"system\""));
    }

    #[test]
    fn pages_have_no_inline_script() {
        let services = Ok(vec![service("node")]);
        for html in [
            press().into_string(),
            setup(&SetupValues::default(), &SetupErrors::default(), "t", 1).into_string(),
            system(&services, &Err("no".into()), "t").into_string(),
            logs(&service("node"), "x\n", "t").into_string(),
        ] {
            for (i, _) in html.match_indices("<script") {
                let src = &html[i..];
                assert!(
                    src.starts_with("<script src=\"/static/setup.js\"></script>")
                        || src.starts_with("<script src=\"/static/admin.js\"></script>"),
                    "{src}"
                );
            }
            assert!(html.contains("name=\"viewport\""));
            assert!(!html.contains("style=") && !html.contains("onclick"));
        }
    }
}

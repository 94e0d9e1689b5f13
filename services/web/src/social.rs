//! The owner's fediverse account (snac2, run by `cairn snac`): what the web and that role
//! agree on. The account is made by the role once the device is set up; the web shows its
//! handle and its first password on the Social page.

/// The owner's account: `@owner@DOMAIN`.
pub const OWNER: &str = "owner";
/// The owner's first password, in snac's data folder (mode 0640, group snac).
pub const OWNER_PASSWORD_FILE: &str = "owner-password";

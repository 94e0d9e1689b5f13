//! The command lines of the `cairn` subcommands, one module each, over the libraries: `cairn ctl`
//! (the supervisor's control socket), `cairn vault`, `cairn node` and, in test builds only
//! (feature `test-fixtures`), `cairn fixture`. `cairn init` is [`crate::init`].

pub mod ctl;
#[cfg(feature = "test-fixtures")]
pub mod fixture;
pub mod node;
pub mod vault;

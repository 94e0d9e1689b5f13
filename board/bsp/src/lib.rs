//! Board support for Cairn: what a board is (its definition file) and, generic over
//! `embedded-hal` traits, what its LEDs and button mean. Nothing here needs Linux.

pub mod board;

pub use board::{Board, BoardError};

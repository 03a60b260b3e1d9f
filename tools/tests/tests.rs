//! imgtool's integration tests: one binary (`autotests = false`), one module per command.

mod bench;
mod cli;
mod hostile;
mod index;
mod plot;
mod shard;
mod stats;
mod util;
mod verify;

//! The parts of `imgtool` that other crates' tests use too: [`plot`] reads the run folders `imgtrain`
//! writes and draws their charts (the trainer's tests plot a real run with it).

pub mod plot;

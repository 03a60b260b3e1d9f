//! The loader's integration tests, in one binary (one link instead of one per file).

mod augment;
mod decode;
mod decode_pool;
mod events;
mod fuzz;
mod pipeline;
mod sampler;
mod sources;
mod support;

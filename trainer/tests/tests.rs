//! The trainer's integration tests, in one binary (one link instead of one per file).

mod cli;
mod console;
mod dist;
mod layouts;
mod metrics;
mod models;
mod predictions;
mod preempt;
mod support;
mod train;
mod train_optim;

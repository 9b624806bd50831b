//! The end-to-end tests, one binary: each file of tests/it/ is a module, and
//! the helpers they share ([`common`]) compile and link once, not once a
//! file. Run one file's tests with `cargo test --test it <file>::`.

mod common;

mod admin;
mod batch;
mod build;
mod churn;
mod container;
mod corrupt;
mod delta;
mod deploy;
mod disk_full;
mod fault;
mod feeds;
mod fleet;
mod http2;
mod kube;
mod manual;
mod monitoring;
mod network;
mod openapi;
mod requests;
mod serve;
mod shards;
mod store;
mod tls;
mod tools;

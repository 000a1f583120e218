//! End-to-end tests: real sockets on loopback, the server in-process or as a child process.
//! One test binary (ripgrep's layout); every test is bounded in time.

mod balancer;
mod cli;
mod fleet;
mod hardening;
mod hixie;
mod jwe;
mod memory;
mod netfault;
mod ops;
mod privileges;
mod proxy;
mod secrets;
mod target_tls;
mod tls;
mod util;
mod web;
mod wrap;

//! The one integration-test binary. Each module covers one area; all share `harness`.

mod harness;

mod cli;
mod commands;
mod compose;
mod docker;
mod examples;
mod fanout;
mod hostile;
mod http;
mod images;
mod inventory;
mod ledger;
mod lock;
mod modules;
mod recipes;
mod recipes_builtin;
mod replay;
mod secrets;
mod specs;
mod ssh;
mod sshd;
mod tailscale;
mod types;

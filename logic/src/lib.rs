//! FastIM logic: everything about users and messages that is not a connection.
//!
//! - [`service::LogicService`] serves the internal `Logic` gRPC API that gateways
//!   call: LOGIN through `authenticate`, every other client command through `call`.
//! - [`store::Store`] is the durable state (users, sessions, conversations, members,
//!   messages, cursors); [`store::embedded::EmbeddedStore`] implements it on redb for
//!   standalone mode, with group commit.
//! - [`routes::RouteTable`] says which gateway holds each online device;
//!   [`gateways::GatewayDirectory`] reaches that gateway to push or kick.
//! - [`cursors::CursorBuffer`] batches delivery acknowledgements into the store.
//! - [`auth`] hashes passwords (argon2id) and issues session tokens.
//!
//! A message goes: gateway -> `LogicService::send` -> authorize -> `Store::append`
//! (durable, next seq) -> ack to the sender -> fan-out: members -> routes -> one
//! `Gateway::push` per gateway -> devices ack -> cursors advance.
#![forbid(unsafe_code)]

pub mod auth;
pub mod config;
pub mod cursors;
pub mod gateways;
pub mod routes;
pub mod service;
pub mod store;

pub use config::LogicConfig;

#[cfg(test)]
mod tests;
pub use service::LogicService;

//! Fan-out over Google Cloud Pub/Sub: instead of every instance watching every peer's API
//! server, one instance per cluster publishes that cluster's slice to the cluster's own
//! topic, and peers read it with a `pubsub` source (`sources::pubsub`).
//!
//! - [`lease`]: which instance of a cluster publishes (a Kubernetes Lease; epoch = the
//!   lease's transition count);
//! - [`publisher`]: snapshots and deltas of the local slice, from the catalog;
//! - [`wire`]: the message encoding (protobuf, versioned);
//! - [`client`], [`pull`]: the Pub/Sub API (googleapis gRPC clients, ADC or the emulator).

// `tonic::Status` is the error of every gRPC call here; boxing it would only move it.
#![allow(clippy::result_large_err)]

pub mod client;
pub mod lease;
pub mod publisher;
pub mod pull;
pub mod wire;

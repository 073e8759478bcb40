//! meshdns: one authoritative DNS zone for the services of a whole fleet of Kubernetes
//! clusters.
//!
//! The modules follow the data flow (DESIGN.md): [`sources`] (one per cluster: Kubernetes
//! watchers, files) → [`catalog`] (single writer, immutable snapshots) → [`zone`] (names →
//! answers) → [`dns`] (UDP fast path, hickory-server) and [`ops`] (metrics, health, debug);
//! [`discovery`] finds more clusters at run time (Istio remote secrets); [`fanout`] publishes
//! the local cluster's slice to Google Cloud Pub/Sub for peers that read it with a `pubsub`
//! source instead of watching its API server.
//! The binary (`src/main.rs`) wires them together; the library exists so that benchmarks
//! can drive the hot paths directly.

pub mod catalog;
pub mod config;
pub mod discovery;
pub mod dns;
pub mod fanout;
pub mod metrics;
pub mod model;
pub mod ops;
pub mod sources;
pub mod zone;

//! Encore's baseline models (SPEC §4, MODELS.md), each in its own module and registered in
//! a registry entry (`entry()`) that the command line collects: item popularity ([`pop`]),
//! item-based k-nearest neighbours ([`knn`]), BPR-MF ([`bpr`]), LightGCN ([`lightgcn`]) and
//! EASE ([`ease`]). The factorisation models share their embedding tables ([`embedding`]) and
//! their triple sampling ([`triples`]).

pub mod bpr;
pub mod ease;
pub mod embedding;
pub mod knn;
pub mod lightgcn;
pub mod pop;
pub mod triples;

pub use pop::Pop;

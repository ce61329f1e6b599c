//! The container inventory's faces: the `containers` SQL table and `GET /api/v1/containers`.
//!
//! - `table`: [`ContainersTable`], the store's inventory as an in-memory DataFusion table.
//! - `image`: image filters (exact, tag glob, digest prefix) and Docker's normalised names.
//! - `api`: the HTTP API.

pub mod api;
pub mod image;
pub mod table;

pub use table::ContainersTable;

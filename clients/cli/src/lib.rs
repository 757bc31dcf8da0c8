//! The pieces of the `steer` program that tests reuse: serving the services, the presets,
//! and the side-by-side table.

pub mod dashboard;
pub mod presets;
pub mod server;
pub mod table;

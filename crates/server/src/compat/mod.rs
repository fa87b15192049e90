//! Compatibility faces: other systems' wire APIs, each a thin translation onto the engine,
//! each in a module of its own with its router and its error shape. A face never imports
//! another face; what several render the same way is in `crate::common`.

pub mod agentrun;
pub mod codegeex;
pub mod fusion;
pub mod rock;

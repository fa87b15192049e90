//! Compatibility faces: other systems' wire APIs, each a thin translation onto the engine.
//! A face never imports another face.

pub mod fusion;
mod pydantic;

//! What several faces render the same way: timestamps, files streamed in and out of a
//! sandbox, a network egress policy. A face uses these, never another face.

pub mod network;
pub mod stream;
pub mod time;
pub mod transfer;

//! What several faces render the same way: timestamps, files streamed in and out of a
//! sandbox. A face uses these, never another face.

pub mod stream;
pub mod time;
pub mod transfer;

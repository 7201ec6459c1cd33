//! What every long operation shares: its progress reports, the journal of what it made, and
//! the per-VM lock.

pub mod journal;
pub mod lock;
pub mod progress;

//! Native unwinding, userspace half: turns the call frame information of every executable
//! mapping of a target into compact unwind tables (`cfi`) and loads them, with the process's
//! mapping list, into the kernel's maps (`tables`). The kernel unwinds with them; `walk` takes
//! the same walk in userspace over a copy of those maps, for `dump --native`.

pub mod cfi;
pub mod tables;
pub mod walk;

pub use tables::{KnownMapping, LoadStats, NativeTables, Unread, UnwindMaps};

//! Collapsed ("folded") stacks: `root;...;leaf count` per line, as flamegraph.pl and inferno read.

use std::io::{self, Write};

use super::ProfileWriter;
use crate::profile::Profile;

pub struct Collapsed;

impl ProfileWriter for Collapsed {
    fn write(&self, profile: &Profile, out: &mut dyn Write) -> io::Result<()> {
        for (stack, count) in profile.folded() {
            writeln!(out, "{stack} {count}")?;
        }
        Ok(())
    }
}

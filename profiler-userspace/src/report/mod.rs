//! The `report` command: reads a profile `record -f profbpf` wrote (`profile::store`) and either
//! prints its statistics table (`table`) or converts it to another format (`output`). Works on
//! files only: no kernel, no target process, no privileges.

pub mod table;

use std::path::{Path, PathBuf};

use crate::{
    output::{self, Format},
    privilege,
    profile::{Profile, store},
};
pub use table::{ReportOptions, SortKey};

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Read(#[from] store::StoreError),
    #[error("converting {} to {format} would overwrite it: give another -o FILE", path.display())]
    SameFile { path: PathBuf, format: Format },
    #[error(transparent)]
    Write(#[from] output::file::SaveError),
    #[error("cannot use {}: {source}", path.display())]
    Access {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What `report` was asked to do.
#[derive(Clone, Debug, PartialEq)]
pub struct ReportConfig {
    pub input: PathBuf,
    pub options: ReportOptions,
    /// Convert to this format instead of printing the table.
    pub convert: Option<Format>,
    /// Where the table or the converted profile goes; `-` is stdout. Default: stdout for the
    /// table, `INPUT-STEM.EXT` beside the input for a conversion.
    pub output: Option<PathBuf>,
}

/// What `report` did, for the closing message of a conversion.
pub enum ReportDone {
    Printed,
    Converted { format: Format, path: PathBuf },
}

pub fn run(cfg: &ReportConfig) -> Result<ReportDone, ReportError> {
    // Under sudo the input is read with the invoking user's rights, as the output is written.
    let profile =
        privilege::as_invoking_user(|| Ok(store::read_file(&cfg.input))).map_err(|source| {
            ReportError::Access {
                path: cfg.input.clone(),
                source,
            }
        })??;
    match cfg.convert {
        None => {
            let text = table::render(&profile, &cfg.input.display().to_string(), cfg.options);
            let path = cfg.output.clone().unwrap_or_else(|| PathBuf::from("-"));
            output::file::save(&path, "txt", |out| out.write_all(text.as_bytes()))?;
            Ok(ReportDone::Printed)
        }
        Some(format) => {
            let path = cfg
                .output
                .clone()
                .unwrap_or_else(|| converted_path(&cfg.input, format));
            if path == cfg.input {
                return Err(ReportError::SameFile { path, format });
            }
            let writer = format.writer(title(&profile));
            output::file::check_writable(&path).map_err(|source| ReportError::Access {
                path: path.clone(),
                source,
            })?;
            output::file::save(&path, format.extension(), |out| writer.write(&profile, out))?;
            Ok(ReportDone::Converted { format, path })
        }
    }
}

/// The title `record` would have given the profile.
fn title(p: &Profile) -> String {
    match p.processes.as_slice() {
        [one] => format!("prof-bpf: {} (pid {})", one.name, one.pid),
        _ => "prof-bpf".to_string(),
    }
}

/// `app-1-20260101-101010.profbpf.json` -> `app-1-20260101-101010.svg`, beside the input.
fn converted_path(input: &Path, format: Format) -> PathBuf {
    let name = input
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("profile");
    let stem = name
        .strip_suffix(".profbpf.json")
        .or_else(|| name.strip_suffix(".json"))
        .unwrap_or(name);
    input.with_file_name(format!("{stem}.{}", format.extension()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converted_files_sit_beside_the_input() {
        assert_eq!(
            converted_path(Path::new("/p/app-1.profbpf.json"), Format::Pprof),
            PathBuf::from("/p/app-1.pb.gz")
        );
        assert_eq!(
            converted_path(Path::new("x.json"), Format::Flamegraph),
            PathBuf::from("x.svg")
        );
    }
}

//! Walk the headers of a tar that lies in memory (a memory map, or an inner tar inside one) and report
//! where each member's data is, without copying any data.
//!
//! The `tar` crate parses headers, GNU long names and pax records; we only ask it for each member's
//! path (`path_bytes`, which folds long names and pax `path` in), its size (pax `size` wins) and the raw
//! position of its data. Members whose data would run past the end of the bytes are a truncated archive.

use std::io::Cursor;
use std::path::Path;

use super::Skipped;
use crate::error::{Error, Result};

const BLOCK: u64 = 512;

/// A member worth looking at: a regular file or a directory with a safe relative path.
#[derive(Debug)]
pub(crate) struct Member<'p> {
    /// `/`-joined path components, without `.` and empty components.
    pub path: &'p str,
    pub is_dir: bool,
    /// Absolute offset of the data in the outermost file.
    pub offset: u64,
    pub len: u64,
}

/// Known compressed-stream magics, with how to decompress.
pub(crate) fn compression(head: &[u8]) -> Option<(&'static str, &'static str)> {
    // A real tar header with a valid checksum wins over a magic that a member name could start with.
    if head.len() >= BLOCK as usize && header_checksum_ok(&head[..BLOCK as usize]) {
        return None;
    }
    let kinds: [(&[u8], &str, &str); 5] = [
        (&[0x1f, 0x8b], "gzip", "gzip -dc"),
        (b"BZh", "bzip2", "bzip2 -dc"),
        (&[0xfd, b'7', b'z', b'X', b'Z', 0], "xz", "xz -dc"),
        (&[0x28, 0xb5, 0x2f, 0xfd], "zstd", "zstd -dc"),
        (&[0x04, 0x22, 0x4d, 0x18], "lz4", "lz4 -dc"),
    ];
    kinds
        .iter()
        .find(|(magic, _, _)| head.starts_with(magic))
        .map(|&(_, kind, cmd)| (kind, cmd))
}

/// A shell command that decompresses `input` (with `cmd`, from [`compression`]) to an uncompressed tar.
pub(crate) fn decompress_hint(cmd: &str, input: &str) -> String {
    let lower = input.to_ascii_lowercase();
    let output = [".tgz", ".gz", ".bz2", ".xz", ".zst", ".zstd", ".lz4"]
        .iter()
        .find(|ext| lower.ends_with(*ext))
        .map(|ext| {
            let stem = &input[..input.len() - ext.len()];
            if *ext == ".tgz" {
                format!("{stem}.tar")
            } else {
                stem.to_owned()
            }
        })
        .filter(|out| out.to_ascii_lowercase().ends_with(".tar"))
        .unwrap_or_else(|| format!("{input}.uncompressed.tar"));
    format!("{cmd} < '{input}' > '{output}'")
}

fn header_checksum_ok(block: &[u8]) -> bool {
    let field = &block[148..156];
    let text: String = field
        .iter()
        .take_while(|&&b| b != 0)
        .map(|&b| b as char)
        .filter(|c| !c.is_whitespace())
        .collect();
    let Ok(stored) = u32::from_str_radix(&text, 8) else {
        return false;
    };
    let sum: u32 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                b as u32
            }
        })
        .sum();
    sum == stored
}

/// Scans the tar in `data`, whose first byte is at `base` in the file `archive`. `within` names the inner
/// tar for messages. Calls `visit` for files and directories with safe paths; counts the rest in
/// `skipped`. Returns how many headers it read.
pub(crate) fn scan(
    data: &[u8],
    base: u64,
    archive: &Path,
    within: Option<&str>,
    skipped: &mut Skipped,
    mut visit: impl FnMut(Member<'_>) -> Result<()>,
) -> Result<u64> {
    let end = base + data.len() as u64;
    let at = |offset: u64, reason: String| Error::Archive {
        archive: archive.to_owned(),
        offset,
        reason: match within {
            Some(inner) => format!("in inner tar `{inner}`: {reason}"),
            None => reason,
        },
    };
    let mut tar = tar::Archive::new(Cursor::new(data));
    let entries = tar
        .entries_with_seek()
        .map_err(|e| at(base, e.to_string()))?;
    // Where the next header starts: where to point at when the tar crate fails on it.
    let mut next_header = base;
    let mut count = 0u64;
    let mut path = String::new();
    for entry in entries {
        let entry = entry.map_err(|e| {
            let hint = if count == 0 && e.to_string().contains("checksum") {
                " (not a tar archive?)"
            } else {
                ""
            };
            at(next_header, format!("cannot read tar header: {e}{hint}"))
        })?;
        count += 1;
        let offset = base + entry.raw_file_position();
        let len = entry.size();
        let header_at = base + entry.raw_header_position();
        let raw_path = entry.path_bytes();
        let data_end = offset.checked_add(len).filter(|&e| e <= end).ok_or_else(|| {
            at(
                header_at,
                format!(
                    "member `{}` claims {len} bytes of data at byte {offset}, but the archive ends at byte {end} \
                     (truncated?)",
                    String::from_utf8_lossy(&raw_path)
                ),
            )
        })?;
        next_header = base + (data_end - base).div_ceil(BLOCK) * BLOCK;

        let kind = entry.header().entry_type();
        let mut is_dir = kind.is_dir();
        if !is_dir && !kind.is_file() && !kind.is_contiguous() {
            if kind.is_symlink() || kind.is_hard_link() {
                skipped.links += 1;
            } else if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
                skipped.devices += 1;
            } else {
                skipped.other += 1;
            }
            continue;
        }
        if raw_path.starts_with(b"/") {
            skipped.absolute += 1;
            continue;
        }
        // Old (v7) tars mark directories with a trailing slash only.
        is_dir |= raw_path.ends_with(b"/");
        path.clear();
        let mut dotdot = false;
        for part in raw_path.split(|&b| b == b'/') {
            match part {
                b"" | b"." => {}
                b".." => dotdot = true,
                _ => {
                    if !path.is_empty() {
                        path.push('/');
                    }
                    path.push_str(&String::from_utf8_lossy(part));
                }
            }
        }
        if dotdot {
            skipped.dotdot += 1;
            continue;
        }
        if path.is_empty() {
            // `./` itself, or a file with no name at all.
            if is_dir {
                skipped.directories += 1;
            } else {
                skipped.other += 1;
            }
            continue;
        }
        visit(Member {
            path: &path,
            is_dir,
            offset,
            len,
        })?;
    }
    Ok(count)
}

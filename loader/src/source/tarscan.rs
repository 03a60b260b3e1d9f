//! Walk the headers of a tar (or of an inner tar inside one) with positioned reads and report where each
//! member's data is, without reading any data.
//!
//! Our own header parser rather than the `tar` crate's reader, for three reasons: it reads through
//! [`TarFile::read_at`], so a tar that shrinks under us is an error, not SIGBUS through a map; it caps the
//! payload of long-name and pax headers before reading it (the `tar` crate reads whatever size a header
//! claims into memory); and it needs no allocation per member. It reads what GNU tar, bsdtar and Python's
//! `tarfile` write: ustar (with `prefix`), GNU long names (`L`, `K`), pax records (`x`: `path`, `size`),
//! pax globals (`g`, skipped) and GNU sparse headers (skipped, with their extension blocks). Members whose
//! data would run past the end of the bytes are a truncated archive.

use super::Skipped;
use super::file::TarFile;
use crate::error::{Error, Result};

const BLOCK: u64 = 512;

/// The most bytes of a GNU long-name/long-link or pax header payload we read. Real names are under 4 KiB
/// (Linux `PATH_MAX`); the pax records of one member are a few hundred bytes. A header claiming more is
/// corrupt or hostile, and reading what it claims would take that much memory.
pub(crate) const MAX_EXT_PAYLOAD: u64 = 64 * 1024;

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

/// The first `min(len, 512)` bytes at `offset`, for [`compression`].
pub(crate) fn head(tar: &TarFile, offset: u64, len: u64) -> std::io::Result<([u8; 512], usize)> {
    let mut buf = [0u8; BLOCK as usize];
    let n = len.min(BLOCK) as usize;
    tar.read_at(&mut buf[..n], offset)?;
    Ok((buf, n))
}

fn header_checksum_ok(block: &[u8]) -> bool {
    let Some(stored) = parse_octal(&block[148..156]) else {
        return false;
    };
    // The checksum field counts as eight spaces. Some old tars summed signed bytes; accept either.
    let (mut unsigned, mut signed) = (0u64, 0i64);
    for (i, &b) in block.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += b as u64;
        signed += b as i8 as i64;
    }
    stored == unsigned || stored as i64 == signed
}

/// An octal field: optional leading spaces, digits, ended by a space, a NUL or the field's end.
fn parse_octal(field: &[u8]) -> Option<u64> {
    let digits: &[u8] = {
        let start = field.iter().position(|&b| b != b' ').unwrap_or(field.len());
        let rest = &field[start..];
        let end = rest
            .iter()
            .position(|&b| b == b' ' || b == 0)
            .unwrap_or(rest.len());
        &rest[..end]
    };
    if digits.is_empty() {
        return Some(0);
    }
    digits.iter().try_fold(0u64, |acc, &d| {
        if !(b'0'..=b'7').contains(&d) {
            return None;
        }
        acc.checked_mul(8)?.checked_add((d - b'0') as u64)
    })
}

/// A numeric field: octal, or GNU base-256 (high bit of the first byte set) for sizes of 8 GiB and more.
fn parse_numeric(field: &[u8]) -> Option<u64> {
    match field.first() {
        Some(&b) if b & 0x80 != 0 => {
            if b & 0x40 != 0 {
                return None; // negative
            }
            field[1..].iter().try_fold((b & 0x3f) as u64, |acc, &d| {
                acc.checked_mul(256)?.checked_add(d as u64)
            })
        }
        _ => parse_octal(field),
    }
}

/// A NUL-terminated field.
fn cstr(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    &field[..end]
}

/// What extension headers said about the member that follows them.
#[derive(Debug, Default)]
struct Pending {
    /// Some header was seen whose member has not come yet.
    any: bool,
    long_name: Option<Vec<u8>>,
    pax_path: Option<Vec<u8>>,
    pax_size: Option<u64>,
    /// Where the first of them is, for messages.
    at: u64,
}

/// Reads pax records (`"<len> <key>=<value>\n"`), keeping `path` and `size`. `None`: malformed.
fn parse_pax(payload: &[u8], pending: &mut Pending) -> Option<()> {
    let mut rest = payload;
    while !rest.is_empty() && rest[0] != 0 {
        let space = rest.iter().position(|&b| b == b' ')?;
        let len: usize = std::str::from_utf8(&rest[..space]).ok()?.parse().ok()?;
        if len <= space + 1 || len > rest.len() || rest[len - 1] != b'\n' {
            return None;
        }
        let record = &rest[space + 1..len - 1];
        let eq = record.iter().position(|&b| b == b'=')?;
        let (key, value) = (&record[..eq], &record[eq + 1..]);
        match key {
            // An empty value deletes the keyword: the header's own field counts again.
            b"path" if value.is_empty() => pending.pax_path = None,
            b"path" => pending.pax_path = Some(value.to_vec()),
            b"size" => pending.pax_size = std::str::from_utf8(value).ok()?.parse().ok(),
            _ => {}
        }
        rest = &rest[len..];
    }
    Some(())
}

/// Scans the tar that occupies bytes `base..end` of `tar`. `within` names the inner tar for messages.
/// Calls `visit` for files and directories with safe paths; counts the rest in `skipped`. Returns how
/// many members it found (extension headers are part of their member and do not count).
pub(crate) fn scan(
    tar: &TarFile,
    base: u64,
    end: u64,
    within: Option<&str>,
    skipped: &mut Skipped,
    mut visit: impl FnMut(Member<'_>) -> Result<()>,
) -> Result<u64> {
    let at = |offset: u64, reason: String| Error::Archive {
        archive: tar.path.clone(),
        offset,
        reason: match within {
            Some(inner) => format!("in inner tar `{inner}`: {reason}"),
            None => reason,
        },
    };
    let read = |buf: &mut [u8], offset: u64, what: &str| {
        tar.read_at(buf, offset)
            .map_err(|e| at(offset, format!("cannot read {what}: {e}")))
    };
    let mut block = [0u8; BLOCK as usize];
    let mut pos = base;
    let mut count = 0u64;
    let mut pending = Pending::default();
    let (mut payload, mut raw_path, mut path) = (Vec::new(), Vec::new(), String::new());
    loop {
        // Every tar writer closes the archive with zero blocks. Without them the tar was cut, maybe right
        // between two members: an error, where GNU tar and the `tar` crate would quietly list fewer members.
        if pos >= end {
            return Err(at(
                pos,
                format!(
                    "the archive ends at byte {end} without the zero blocks that close a tar (truncated?)"
                ),
            ));
        }
        if end - pos < BLOCK {
            return Err(at(
                pos,
                format!(
                    "cannot read tar header: the archive ends {} bytes into it (truncated?)",
                    end - pos
                ),
            ));
        }
        read(&mut block, pos, "tar header")?;
        if block.iter().all(|&b| b == 0) {
            break;
        }
        let header_at = pos;
        if !header_checksum_ok(&block) {
            let hint = if count == 0 && !pending.any {
                " (not a tar archive?)"
            } else {
                ""
            };
            return Err(at(
                header_at,
                format!("cannot read tar header: checksum mismatch{hint}"),
            ));
        }
        let kind = block[156];
        let size_field = parse_numeric(&block[124..136])
            .ok_or_else(|| at(header_at, "cannot read tar header: bad size field".into()))?;
        let data = pos + BLOCK;
        let past_end = |what: &str, len: u64, offset: u64| {
            at(
                header_at,
                format!(
                    "{what} claims {len} bytes of data at byte {offset}, but the archive ends at byte {end} \
                     (truncated?)"
                ),
            )
        };

        if matches!(kind, b'L' | b'K' | b'x' | b'g') {
            let what = match kind {
                b'L' => "GNU long-name header",
                b'K' => "GNU long-link header",
                b'x' => "pax extended header",
                _ => "pax global header",
            };
            if size_field > MAX_EXT_PAYLOAD {
                return Err(at(
                    header_at,
                    format!(
                        "{what} claims {size_field} bytes; names are under 4 KiB and this reader takes at most \
                         {MAX_EXT_PAYLOAD} (corrupt or hostile archive)"
                    ),
                ));
            }
            let data_end = data + size_field;
            if data_end > end {
                return Err(past_end(what, size_field, data));
            }
            if kind == b'L' || kind == b'x' {
                payload.resize(size_field as usize, 0);
                read(&mut payload, data, what)?;
            }
            let twice = || at(header_at, format!("two {what}s for one member"));
            match kind {
                b'L' => {
                    if pending.long_name.is_some() {
                        return Err(twice());
                    }
                    pending.long_name = Some(cstr(&payload).to_vec());
                }
                b'x' => {
                    if pending.pax_path.is_some() || pending.pax_size.is_some() {
                        return Err(twice());
                    }
                    parse_pax(&payload, &mut pending)
                        .ok_or_else(|| at(header_at, format!("malformed {what} record")))?;
                }
                // A link target is never followed, so its long form is not needed.
                b'K' => {}
                // Defaults for the whole archive; a member of its own for the counts (as in the `tar` crate).
                _ => {
                    count += 1;
                    skipped.other += 1;
                }
            }
            if kind != b'g' && !pending.any {
                pending.any = true;
                pending.at = header_at;
            }
            pos = data + size_field.div_ceil(BLOCK) * BLOCK;
            continue;
        }

        let len = pending.pax_size.unwrap_or(size_field);
        let mut data_at = data;
        if kind == b'S' && block[482] != 0 {
            // GNU sparse: more blocks of the sparse map follow while their last flag byte is set.
            let mut ext = [0u8; BLOCK as usize];
            loop {
                if end - data_at < BLOCK {
                    return Err(past_end("GNU sparse header", BLOCK, data_at));
                }
                read(&mut ext, data_at, "GNU sparse header")?;
                data_at += BLOCK;
                if ext[504] == 0 {
                    break;
                }
            }
        }
        raw_path.clear();
        match (pending.long_name.take(), pending.pax_path.take()) {
            (Some(name), _) | (None, Some(name)) => raw_path.extend_from_slice(&name),
            (None, None) => {
                let prefix = cstr(&block[345..500]);
                // Only POSIX ustar has a prefix field; in old GNU headers those bytes are other fields.
                if &block[257..263] == b"ustar\0" && !prefix.is_empty() {
                    raw_path.extend_from_slice(prefix);
                    raw_path.push(b'/');
                }
                raw_path.extend_from_slice(cstr(&block[..100]));
            }
        }
        pending = Pending::default();
        let data_end = data_at
            .checked_add(len)
            .filter(|&e| e <= end)
            .ok_or_else(|| {
                past_end(
                    &format!("member `{}`", String::from_utf8_lossy(&raw_path)),
                    len,
                    data_at,
                )
            })?;
        count += 1;
        pos = data_at + (data_end - data_at).div_ceil(BLOCK) * BLOCK;

        let mut is_dir = match kind {
            b'0' | 0 | b'7' => false,
            b'5' => true,
            b'1' | b'2' => {
                skipped.links += 1;
                continue;
            }
            b'3' | b'4' | b'6' => {
                skipped.devices += 1;
                continue;
            }
            _ => {
                skipped.other += 1;
                continue;
            }
        };
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
            offset: data_at,
            len,
        })?;
    }
    if pending.any {
        return Err(at(
            pending.at,
            "a long-name or pax header describes a member that never comes (truncated?)".into(),
        ));
    }
    Ok(count)
}

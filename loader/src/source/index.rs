//! The index sidecar: build it, save it, load and validate it. The format is described in
//! `INDEX_FORMAT.md`; this file is its only reader and writer.

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::build::{self, Built, Kind, MAX_CLASSES, Mode, NONE};
use super::file::TarFile;
use super::{IndexPolicy, OpenOptions, OpenReport, Skipped};
use crate::error::{Error, Result};

pub(crate) const MAGIC: [u8; 8] = *b"IMGTIDX\n";
pub(crate) const VERSION: u32 = 3;
const HEADER: usize = 176;
const LABEL_SOURCES_AT: usize = 144;
const UNUSED_LABELS_AT: usize = 152;
const FLAGS_AT: usize = 160;
const EDGES_AT: usize = 164;
const HEADERS_AT: usize = 168;
const CRC_AT: usize = 172;
const RECORD: usize = 32;
const STR_REF: usize = 8;
const SKIP_SLOTS: usize = 10;
/// Flag: a flat tar's records carry labels, from the files named in the label-sources section.
const FLAG_LABELLED: u32 = 1;
/// The most bytes of a path recorded in the label-sources section.
const MAX_SOURCE_PATH: u32 = 64 * 1024;

/// Bytes at each end of the tar covered by the index's edges CRC.
const EDGE: u64 = 64 * 1024;
/// Records whose tar headers are re-read when an index is loaded.
const SAMPLED: usize = 32;
/// A tar header.
const BLOCK: u64 = 512;

/// Index bytes: a map of a sidecar, or built in memory.
#[derive(Debug)]
enum Bytes {
    Map(Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Map(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// One record, decoded.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Record {
    pub offset: u64,
    pub len: u64,
    pub label: u32,
    pub group: u32,
    name_off: u32,
    name_len: u32,
}

/// A validated index. Records stay in the bytes and are decoded on access.
#[derive(Debug)]
pub(crate) struct IndexData {
    bytes: Bytes,
    pub kind: Kind,
    count: usize,
    class_count: usize,
    group_count: usize,
    classes_at: usize,
    groups_at: usize,
    strings_at: usize,
    pub skipped: Skipped,
    /// Tar headers read when it was built.
    pub members: u64,
    /// For a labelled flat tar: the files its labels came from, as they were then.
    pub label_sources: Option<LabelSources>,
    /// For a labelled flat tar: rows of the labels file for images the tar does not have.
    pub unused_labels: u64,
}

/// A file as it was read: its path and its content's size and CRC-32.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileStamp {
    pub path: PathBuf,
    pub size: u64,
    pub crc: u32,
}

impl FileStamp {
    /// Reads `path` and stamps its content.
    pub(crate) fn of(path: &Path) -> Result<FileStamp> {
        let bytes = super::file::read_regular(path)?;
        Ok(FileStamp {
            path: std::path::absolute(path).unwrap_or_else(|_| path.to_owned()),
            size: bytes.len() as u64,
            crc: crc32fast::hash(&bytes),
        })
    }

    /// Whether two stamps are of the same content, wherever the files are.
    pub(crate) fn same_content(&self, other: &FileStamp) -> bool {
        (self.size, self.crc) == (other.size, other.crc)
    }
}

/// The labels file and synset list a flat tar's stored labels were made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LabelSources {
    pub labels: FileStamp,
    pub synsets: Option<FileStamp>,
}

impl LabelSources {
    /// Whether `other` holds the same contents (paths aside).
    pub(crate) fn same_content(&self, other: &LabelSources) -> bool {
        self.labels.same_content(&other.labels)
            && match (&self.synsets, &other.synsets) {
                (None, None) => true,
                (Some(a), Some(b)) => a.same_content(b),
                _ => false,
            }
    }
}

/// Labels to store in a flat tar's index: one per record, in record order.
#[derive(Debug)]
pub(crate) struct Labelling<'a> {
    pub sources: &'a LabelSources,
    pub labels: &'a [u32],
    pub classes: &'a [String],
    pub unused: u64,
}

#[cfg(unix)]
fn path_bytes(p: &Path) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    p.as_os_str().as_bytes().to_vec()
}

#[cfg(not(unix))]
fn path_bytes(p: &Path) -> Vec<u8> {
    p.to_string_lossy().into_owned().into_bytes()
}

#[cfg(unix)]
fn bytes_to_path(b: &[u8]) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    Some(PathBuf::from(std::ffi::OsStr::from_bytes(b)))
}

#[cfg(not(unix))]
fn bytes_to_path(b: &[u8]) -> Option<PathBuf> {
    std::str::from_utf8(b).ok().map(PathBuf::from)
}

/// The label-sources section: the labels file's stamp, then the synset list's (path length 0: none).
/// A stamp is u64 size, u32 CRC-32, u32 path length, path bytes.
fn encode_sources(s: &LabelSources) -> Vec<u8> {
    let mut out = Vec::new();
    let mut stamp = |st: Option<&FileStamp>| {
        let path = st.map(|s| path_bytes(&s.path)).unwrap_or_default();
        out.extend_from_slice(&st.map_or(0, |s| s.size).to_le_bytes());
        out.extend_from_slice(&st.map_or(0, |s| s.crc).to_le_bytes());
        out.extend_from_slice(&(path.len() as u32).to_le_bytes());
        out.extend_from_slice(&path);
    };
    stamp(Some(&s.labels));
    stamp(s.synsets.as_ref());
    out
}

fn decode_sources(b: &[u8]) -> std::result::Result<LabelSources, String> {
    let mut at = 0;
    let mut stamp = || -> std::result::Result<Option<FileStamp>, String> {
        let short = || "label sources section cut short".to_owned();
        let head = b.get(at..at + 16).ok_or_else(short)?;
        let (size, crc, len) = (u64_at(head, 0), u32_at(head, 8), u32_at(head, 12));
        if len > MAX_SOURCE_PATH {
            return Err(format!("label source path of {len} bytes"));
        }
        let path = b.get(at + 16..at + 16 + len as usize).ok_or_else(short)?;
        at += 16 + len as usize;
        if len == 0 {
            return Ok(None);
        }
        let path = bytes_to_path(path).ok_or("label source path is not UTF-8")?;
        Ok(Some(FileStamp { path, size, crc }))
    };
    let labels = stamp()?.ok_or("labelled, but no labels file is recorded")?;
    let synsets = stamp()?;
    if at != b.len() {
        return Err(format!("{} bytes after the label sources", b.len() - at));
    }
    Ok(LabelSources { labels, synsets })
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn skipped_slots(s: &Skipped) -> [u64; SKIP_SLOTS] {
    [
        s.non_image,
        s.unsupported_image,
        s.directories,
        s.hidden,
        s.outside_class,
        s.links,
        s.devices,
        s.absolute,
        s.dotdot,
        s.other,
    ]
}

fn skipped_from(v: [u64; SKIP_SLOTS]) -> Skipped {
    Skipped {
        non_image: v[0],
        unsupported_image: v[1],
        directories: v[2],
        hidden: v[3],
        outside_class: v[4],
        links: v[5],
        devices: v[6],
        absolute: v[7],
        dotdot: v[8],
        other: v[9],
    }
}

/// Checksum of an index file: everything but the checksum field itself.
pub(crate) fn checksum(bytes: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&bytes[..CRC_AT]);
    h.update(&bytes[HEADER..]);
    h.finalize()
}

/// CRC-32 of the tar's first `EDGE` bytes followed by its last `EDGE` bytes (overlapping in a small tar).
fn edges_crc(tar: &TarFile) -> std::io::Result<u32> {
    let n = tar.size.min(EDGE);
    let mut buf = vec![0u8; n as usize];
    let mut h = crc32fast::Hasher::new();
    for at in [0, tar.size - n] {
        tar.read_at(&mut buf, at)?;
        h.update(&buf);
    }
    Ok(h.finalize())
}

/// CRC-32 of the 512-byte tar headers in front of up to `SAMPLED` records spread evenly over `count`
/// records; `offset(i)` is record i's data offset. The header of a member is the block right before its
/// data (long-name and pax headers come before that one). Read in file order, kinder to a disk than the
/// records' (sample) order.
fn headers_crc(tar: &TarFile, count: usize, offset: impl Fn(usize) -> u64) -> std::io::Result<u32> {
    let n = count.min(SAMPLED);
    let mut at = [0u64; SAMPLED];
    for (j, a) in at[..n].iter_mut().enumerate() {
        *a = offset(j * count / n).checked_sub(BLOCK).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "a record's data starts before any header",
            )
        })?;
    }
    at[..n].sort_unstable();
    let mut h = crc32fast::Hasher::new();
    let mut block = [0u8; BLOCK as usize];
    for &a in &at[..n] {
        tar.read_at(&mut block, a)?;
        h.update(&block);
    }
    Ok(h.finalize())
}

/// Serialises `built` for `tar` (its size, mtime and content fingerprint), with `labelling` for a flat
/// tar whose labels are known.
fn encode(
    built: &Built,
    tar: &TarFile,
    path: &Path,
    labelling: Option<&Labelling<'_>>,
) -> Result<Vec<u8>> {
    let too_big = |what: &str| Error::Index {
        path: path.to_owned(),
        reason: format!("too many {what} for format v{VERSION}"),
    };
    let fingerprint = |e: std::io::Error| Error::Archive {
        archive: tar.path.clone(),
        offset: 0,
        reason: format!("cannot read it again to fingerprint its index: {e}"),
    };
    let edges = edges_crc(tar).map_err(fingerprint)?;
    let headers =
        headers_crc(tar, built.records.len(), |i| built.records[i].offset).map_err(fingerprint)?;
    let (tar_size, tar_mtime) = (tar.size, tar.mtime);
    let kind = built.kind.ok_or_else(|| too_big("layouts"))?;
    let mut strings = built.names.clone();
    let mut refs = |s: &str| {
        let at = strings.len();
        strings.push_str(s);
        (at, s.len())
    };
    let classes = labelling.map_or(built.classes.as_slice(), |l| l.classes);
    let class_refs: Vec<(usize, usize)> = classes.iter().map(|c| refs(c)).collect();
    let group_refs: Vec<(usize, usize)> = built.groups.iter().map(|g| refs(g)).collect();
    if strings.len() > u32::MAX as usize {
        return Err(too_big("name bytes"));
    }
    let n = built.records.len();
    let sources = labelling
        .map(|l| encode_sources(l.sources))
        .unwrap_or_default();
    if labelling.is_some_and(|l| l.labels.len() != n) {
        return Err(Error::Index {
            path: path.to_owned(),
            reason: "one label per record expected".into(),
        });
    }
    let total = HEADER
        + n * RECORD
        + (class_refs.len() + group_refs.len()) * STR_REF
        + strings.len()
        + sources.len();
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(kind as u32).to_le_bytes());
    out.extend_from_slice(&tar_size.to_le_bytes());
    out.extend_from_slice(&tar_mtime.to_le_bytes());
    out.extend_from_slice(&(n as u64).to_le_bytes());
    out.extend_from_slice(
        &u32::try_from(class_refs.len())
            .map_err(|_| too_big("classes"))?
            .to_le_bytes(),
    );
    out.extend_from_slice(
        &u32::try_from(group_refs.len())
            .map_err(|_| too_big("inner tars"))?
            .to_le_bytes(),
    );
    out.extend_from_slice(&(strings.len() as u64).to_le_bytes());
    out.extend_from_slice(&built.members.to_le_bytes());
    for v in skipped_slots(&built.skipped) {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&(sources.len() as u64).to_le_bytes());
    out.extend_from_slice(&labelling.map_or(0, |l| l.unused).to_le_bytes());
    let flags = if labelling.is_some() {
        FLAG_LABELLED
    } else {
        0
    };
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&edges.to_le_bytes());
    out.extend_from_slice(&headers.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes()); // checksum, filled below
    debug_assert_eq!(out.len(), HEADER);
    for (i, r) in built.records.iter().enumerate() {
        let label = labelling.map_or(r.label, |l| l.labels[i]);
        out.extend_from_slice(&r.offset.to_le_bytes());
        out.extend_from_slice(&r.len.to_le_bytes());
        out.extend_from_slice(&label.to_le_bytes());
        out.extend_from_slice(&r.group.to_le_bytes());
        out.extend_from_slice(&(r.name_start as u32).to_le_bytes());
        out.extend_from_slice(&((r.name_end - r.name_start) as u32).to_le_bytes());
    }
    for (at, len) in class_refs.iter().chain(&group_refs) {
        out.extend_from_slice(&(*at as u32).to_le_bytes());
        out.extend_from_slice(&(*len as u32).to_le_bytes());
    }
    out.extend_from_slice(strings.as_bytes());
    out.extend_from_slice(&sources);
    debug_assert_eq!(out.len(), total);
    let crc = checksum(&out);
    out[CRC_AT..HEADER].copy_from_slice(&crc.to_le_bytes());
    Ok(out)
}

impl IndexData {
    /// Validates `bytes` as the index of a tar of `tar_size` bytes modified at `tar_mtime`. The error is
    /// why it cannot be used.
    fn parse(
        bytes: Bytes,
        tar_size: u64,
        tar_mtime: i64,
    ) -> std::result::Result<IndexData, String> {
        let b: &[u8] = &bytes;
        if b.len() < HEADER {
            return Err(format!(
                "truncated: {} bytes, the header alone is {HEADER}",
                b.len()
            ));
        }
        if b[..8] != MAGIC {
            return Err("not an imgtoolkit index (bad magic)".into());
        }
        let version = u32_at(b, 8);
        if version < VERSION {
            return Err(format!(
                "format version {version}, older than this build's {VERSION}: version 1 trusted an index \
                 on the tar's size and mtime alone (version 2 binds it to the tar's content); version 3 also \
                 keeps a flat tar's labels"
            ));
        } else if version != VERSION {
            return Err(format!(
                "format version {version}, newer than this build's {VERSION}"
            ));
        }
        let count = u64_at(b, 32);
        let class_count = u32_at(b, 40) as u64;
        let group_count = u32_at(b, 44) as u64;
        let strings_len = u64_at(b, 48);
        let sources_len = u64_at(b, LABEL_SOURCES_AT);
        let expected = count
            .checked_mul(RECORD as u64)
            .and_then(|r| r.checked_add((class_count + group_count) * STR_REF as u64))
            .and_then(|r| r.checked_add(strings_len))
            .and_then(|r| r.checked_add(sources_len))
            .and_then(|r| r.checked_add(HEADER as u64));
        if expected != Some(b.len() as u64) {
            return Err(format!(
                "{} bytes, but its header describes {} (truncated or corrupt)",
                b.len(),
                expected.map_or("more than 2^64".into(), |e| e.to_string())
            ));
        }
        let stored = u32_at(b, CRC_AT);
        let actual = checksum(b);
        if stored != actual {
            return Err(format!(
                "checksum mismatch (stored {stored:08x}, computed {actual:08x}): corrupt"
            ));
        }
        let kind = Kind::from_u32(u32_at(b, 12))
            .ok_or_else(|| format!("unknown layout {}", u32_at(b, 12)))?;
        let (size, mtime) = (u64_at(b, 16), u64_at(b, 24) as i64);
        if size != tar_size || mtime != tar_mtime {
            return Err(format!(
                "stale: built for a tar of {size} bytes modified at {mtime} ns, the tar now has {tar_size} bytes \
                 modified at {tar_mtime} ns"
            ));
        }
        let flags = u32_at(b, FLAGS_AT);
        let labelled = flags == FLAG_LABELLED;
        if flags & !FLAG_LABELLED != 0 || (labelled && kind != Kind::Flat) {
            return Err(format!(
                "unknown flags {flags:#x} for layout {}",
                kind as u32
            ));
        }
        if labelled != (sources_len > 0) {
            return Err("labels flag and label sources section disagree".into());
        }
        let mut slots = [0u64; SKIP_SLOTS];
        for (i, s) in slots.iter_mut().enumerate() {
            *s = u64_at(b, 64 + 8 * i);
        }
        let count = count as usize;
        let classes_at = HEADER + count * RECORD;
        let groups_at = classes_at + class_count as usize * STR_REF;
        let strings_at = groups_at + group_count as usize * STR_REF;
        let sources_at = strings_at + strings_len as usize;
        let strings = std::str::from_utf8(&b[strings_at..sources_at])
            .map_err(|e| format!("names are not UTF-8: {e}"))?;
        let label_sources = if labelled {
            Some(decode_sources(&b[sources_at..])?)
        } else {
            None
        };
        let str_ok = |at: u32, len: u32| {
            let end = at as u64 + len as u64;
            end <= strings.len() as u64
                && strings.is_char_boundary(at as usize)
                && strings.is_char_boundary(end as usize)
        };
        for i in 0..(class_count + group_count) as usize {
            let at = classes_at + i * STR_REF;
            if !str_ok(u32_at(b, at), u32_at(b, at + 4)) {
                return Err(format!(
                    "class or inner tar name {i} lies outside the name table"
                ));
            }
        }
        let index = IndexData {
            kind,
            count,
            class_count: class_count as usize,
            group_count: group_count as usize,
            classes_at,
            groups_at,
            strings_at,
            skipped: skipped_from(slots),
            members: u64_at(b, 56),
            label_sources,
            unused_labels: if labelled {
                u64_at(b, UNUSED_LABELS_AT)
            } else {
                0
            },
            bytes: Bytes::Owned(Vec::new()),
        };
        for i in 0..count {
            let r = index.decode(b, i);
            let in_bounds = r.offset >= BLOCK
                && r.offset
                    .checked_add(r.len)
                    .is_some_and(|end| end <= tar_size);
            if !in_bounds {
                return Err(format!(
                    "record {i} points at bytes {}..+{} past the end of the {tar_size}-byte tar",
                    r.offset, r.len
                ));
            }
            let label_ok = match kind {
                Kind::ClassFolders | Kind::TarOfTars => (r.label as usize) < index.class_count,
                Kind::Flat if labelled => (r.label as usize) < index.class_count,
                Kind::Flat => r.label == NONE,
                Kind::Webdataset => r.label < MAX_CLASSES,
            };
            let group_ok = match kind {
                Kind::TarOfTars => (r.group as usize) < index.group_count,
                _ => r.group == NONE,
            };
            if !label_ok || !group_ok {
                return Err(format!(
                    "record {i} has label {} / inner tar {}, out of range",
                    r.label, r.group
                ));
            }
            if !str_ok(r.name_off, r.name_len) {
                return Err(format!("record {i}'s name lies outside the name table"));
            }
        }
        Ok(IndexData { bytes, ..index })
    }

    /// Whether the tar's content is the one indexed: its first and last 64 KiB, and the headers of
    /// `SAMPLED` members, against the CRCs stored at build. Size and mtime alone let the index of another
    /// tar of the same size and mtime through (a copy, a re-tar in another order, `touch -r`).
    fn check_content(&self, tar: &TarFile) -> std::result::Result<(), String> {
        let cannot = |e: std::io::Error| format!("cannot read the tar to check it: {e}");
        let foreign = "(the index of another tar with the same size and mtime?)";
        let b: &[u8] = &self.bytes;
        if edges_crc(tar).map_err(cannot)? != u32_at(b, EDGES_AT) {
            return Err(format!(
                "does not match the tar: its first and last 64 KiB differ from those indexed {foreign}"
            ));
        }
        if headers_crc(tar, self.count, |i| self.decode(b, i).offset).map_err(cannot)?
            != u32_at(b, HEADERS_AT)
        {
            return Err(format!(
                "does not match the tar: member headers at the indexed offsets differ {foreign}"
            ));
        }
        Ok(())
    }

    fn decode(&self, b: &[u8], i: usize) -> Record {
        let at = HEADER + i * RECORD;
        Record {
            offset: u64_at(b, at),
            len: u64_at(b, at + 8),
            label: u32_at(b, at + 16),
            group: u32_at(b, at + 20),
            name_off: u32_at(b, at + 24),
            name_len: u32_at(b, at + 28),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.count
    }

    /// Record `i`. Panics if `i >= len()`.
    pub(crate) fn record(&self, i: usize) -> Record {
        assert!(
            i < self.count,
            "sample {i} out of range (len {})",
            self.count
        );
        self.decode(&self.bytes, i)
    }

    fn string(&self, at: u32, len: u32) -> &str {
        let b = &self.bytes[self.strings_at..];
        // Validated as UTF-8 on char boundaries at load; the fallback is never taken.
        std::str::from_utf8(&b[at as usize..(at + len) as usize]).unwrap_or("<invalid name>")
    }

    pub(crate) fn name(&self, r: &Record) -> &str {
        self.string(r.name_off, r.name_len)
    }

    fn str_ref(&self, at: usize) -> &str {
        self.string(u32_at(&self.bytes, at), u32_at(&self.bytes, at + 4))
    }

    pub(crate) fn classes(&self) -> Vec<String> {
        (0..self.class_count)
            .map(|i| self.str_ref(self.classes_at + i * STR_REF).to_owned())
            .collect()
    }

    /// Whether the records carry labels (a flat tar labelled when indexed).
    pub(crate) fn labelled(&self) -> bool {
        self.label_sources.is_some()
    }

    /// The index contents back as built, labels of a flat tar dropped: to store other labels.
    fn to_built(&self) -> Built {
        let mut built = Built {
            kind: Some(self.kind),
            classes: if self.kind == Kind::Flat {
                Vec::new()
            } else {
                self.classes()
            },
            groups: (0..self.group_count as u32)
                .map(|g| self.group(g).to_owned())
                .collect(),
            skipped: self.skipped,
            members: self.members,
            ..Built::default()
        };
        for i in 0..self.count {
            let r = self.record(i);
            let name_start = built.names.len();
            built.names.push_str(self.name(&r));
            built.records.push(build::Rec {
                offset: r.offset,
                len: r.len,
                label: if self.kind == Kind::Flat {
                    NONE
                } else {
                    r.label
                },
                group: r.group,
                name_start,
                name_end: built.names.len(),
            });
        }
        built
    }

    /// Name of inner tar `g`.
    pub(crate) fn group(&self, g: u32) -> &str {
        if (g as usize) < self.group_count {
            self.str_ref(self.groups_at + g as usize * STR_REF)
        } else {
            "?"
        }
    }
}

/// `train.tar` -> `train.tar.idx`.
pub(crate) fn sidecar_path(tar: &Path) -> PathBuf {
    let mut s = tar.as_os_str().to_owned();
    s.push(".idx");
    PathBuf::from(s)
}

fn cache_dir(opts: &OpenOptions) -> Option<PathBuf> {
    if let Some(d) = &opts.cache_dir {
        return Some(d.clone());
    }
    let env_dir = |k: &str| {
        std::env::var_os(k)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    let base = env_dir("XDG_CACHE_HOME").or_else(|| env_dir("HOME").map(|h| h.join(".cache")))?;
    Some(base.join("imgtoolkit").join("index"))
}

/// FNV-1a, 64 bits: names cache files after the tar's canonical path.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

pub(crate) fn cache_path(tar: &Path, opts: &OpenOptions) -> Option<PathBuf> {
    let canonical = std::fs::canonicalize(tar).ok()?;
    let name = canonical.file_name()?.to_string_lossy().into_owned();
    let hash = fnv1a(canonical.as_os_str().as_encoded_bytes());
    Some(cache_dir(opts)?.join(format!("{name}-{hash:016x}.idx")))
}

/// Loads the index at `path` for `tar`: `Ok(None)` when there is none, `Err(reason)` when it cannot be
/// used.
fn load(path: &Path, tar: &TarFile) -> std::result::Result<Option<IndexData>, String> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() < HEADER as u64 {
        return Err(format!(
            "truncated: {} bytes, the header alone is {HEADER}",
            meta.len()
        ));
    }
    // SAFETY: a read-only private map of our own file. Index files are only ever replaced by rename (see
    // `save`), never rewritten or truncated in place, so the mapped inode keeps its contents and length
    // for as long as the map lives, even when a new index replaces it. (The tar itself is never mapped: it
    // is not ours, and a truncated map faults with SIGBUS; see `file.rs`.) A user truncating an index by
    // hand while it is open is outside what we defend against.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| e.to_string())?;
    let index = IndexData::parse(Bytes::Map(map), tar.size, tar.mtime)?;
    index.check_content(tar)?;
    Ok(Some(index))
}

/// Gets the index of `tar` as `opts.index` says: load, or build and save. Records what it did in
/// `report`.
pub(crate) fn obtain(
    tar_file: &TarFile,
    mode: Mode,
    opts: &OpenOptions,
    report: &mut OpenReport,
) -> Result<IndexData> {
    let tar = tar_file.path.as_path();
    let (size, mtime) = (tar_file.size, tar_file.mtime);
    let notes_before = report.notes.len();
    let sidecar = sidecar_path(tar);
    let cache = cache_path(tar, opts);
    let candidates: Vec<&Path> = std::iter::once(sidecar.as_path())
        .chain(cache.as_deref())
        .collect();
    if opts.index != IndexPolicy::Rebuild {
        for path in &candidates {
            match load(path, tar_file) {
                Ok(Some(index)) if index.kind.fits(mode, index.labelled()) => {
                    report.indexes_loaded += 1;
                    report.index_files.push(path.to_path_buf());
                    return Ok(index);
                }
                Ok(Some(_)) => report.notes.push(format!(
                    "index {} was built for another layout",
                    path.display()
                )),
                Ok(None) => {}
                Err(reason) => report
                    .notes
                    .push(format!("index {} not used: {reason}", path.display())),
            }
        }
    }
    let built = build::build(tar_file, mode)?;
    let bytes = encode(&built, tar_file, &sidecar, None)?;
    // The scan read the tar piecewise: were it rewritten meanwhile, the index could mix two versions.
    if !tar_file.unchanged()? {
        return Err(Error::Archive {
            archive: tar.to_owned(),
            offset: 0,
            reason: format!(
                "changed while it was being indexed (it had {size} bytes); not indexed: open it again once \
                 it is complete"
            ),
        });
    }
    report.members_scanned += built.members;
    report.indexes_built += 1;
    // Why: the last thing said about this tar's index files, if anything was.
    let reason = match report.notes.get(notes_before..).and_then(<[String]>::last) {
        Some(note) => note.as_str(),
        None if opts.index == IndexPolicy::Rebuild => "a rebuild was asked for",
        None => "no index file yet",
    };
    tracing::info!(tar = %tar.display(), members = built.members, reason, "index rebuilt");
    drop(built);
    save(tar_file, &bytes, opts, report, "built in memory");
    IndexData::parse(Bytes::Owned(bytes), size, mtime).map_err(|reason| Error::Index {
        path: sidecar,
        reason: format!("freshly built index rejected: {reason}"),
    })
}

/// Stores `labelling` in the index of the flat tar `tar_file` (`index`, loaded or built): the sidecar is
/// rewritten (unless the policy is read-only), the tar is not scanned again.
pub(crate) fn store_labels(
    tar_file: &TarFile,
    index: &IndexData,
    labelling: &Labelling<'_>,
    opts: &OpenOptions,
    report: &mut OpenReport,
) -> Result<()> {
    let sidecar = sidecar_path(&tar_file.path);
    let bytes = encode(&index.to_built(), tar_file, &sidecar, Some(labelling))?;
    save(tar_file, &bytes, opts, report, "labels kept in memory");
    Ok(())
}

/// Writes index `bytes` beside the tar, else in the cache folder, as `opts.index` allows; notes where.
fn save(tar_file: &TarFile, bytes: &[u8], opts: &OpenOptions, report: &mut OpenReport, what: &str) {
    let tar = tar_file.path.as_path();
    let sidecar = sidecar_path(tar);
    let cache = cache_path(tar, opts);
    let candidates: Vec<&Path> = std::iter::once(sidecar.as_path())
        .chain(cache.as_deref())
        .collect();
    if opts.index == IndexPolicy::ReadOnly {
        report.notes.push(format!(
            "index of {} {what} (read-only policy: nothing written)",
            tar.display()
        ));
    } else {
        let mut saved = false;
        for path in &candidates {
            if let Some(dir) = path.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            match crate::atomic::write_file(path, bytes) {
                Ok(()) => {
                    if !report.index_files.iter().any(|f| f == path) {
                        report.index_files.push(path.to_path_buf());
                    }
                    saved = true;
                    break;
                }
                Err(e) => report
                    .notes
                    .push(format!("cannot write index {}: {e}", path.display())),
            }
        }
        if !saved {
            report
                .notes
                .push(format!("index of {} kept in memory only", tar.display()));
        }
    }
}

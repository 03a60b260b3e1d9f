//! Turn a scanned tar into index contents: decide the layout, pick the samples, label and order them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use super::file::TarFile;
use super::tarscan::{self, Member};
use super::{FileKind, Skipped, ext_kind, file_kind, push_limited, split_dir};
use crate::error::{Error, Result};

/// "No label" / "no group" in a record.
pub(crate) const NONE: u32 = u32::MAX;

/// Webdataset `.cls` values must be below this: 2^24 (16.7 M) classes, four times the largest labelled
/// set we know of (WebFace260M, 4 M identities). Class ids are indices into a class table that readers
/// allocate; a larger value is a corrupt or hostile `.cls` (4294967294 used to abort the process).
pub(crate) const MAX_CLASSES: u32 = 1 << 24;

/// The most bytes a `.cls` member may have: it holds a class index as decimal text.
const MAX_CLS_BYTES: u64 = 1024;

/// What the caller expects the tar to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Class folders, tar of tars, or one webdataset shard: whatever the members say.
    Auto,
    /// A flat tar labelled by a labels file: every image, unlabelled, sorted by path.
    Flat,
    /// [`Mode::Auto`], but a tar of images outside class folders is read as [`Mode::Flat`] (a labels file
    /// is at hand, to be used only if the tar turns out flat).
    AutoOrFlat,
    /// A webdataset shard from a shard folder.
    Shard,
}

/// Layout recorded in an index. The numbers are part of the file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    ClassFolders = 1,
    TarOfTars = 2,
    Flat = 3,
    Webdataset = 4,
}

impl Kind {
    pub(crate) fn from_u32(v: u32) -> Option<Kind> {
        Some(match v {
            1 => Kind::ClassFolders,
            2 => Kind::TarOfTars,
            3 => Kind::Flat,
            4 => Kind::Webdataset,
            _ => return None,
        })
    }

    /// Whether an index of this kind (`labelled`: a flat tar's with its labels) serves an open in `mode`.
    /// A flat tar indexed with its labels opens without a labels file.
    pub(crate) fn fits(self, mode: Mode, labelled: bool) -> bool {
        match mode {
            Mode::Auto => match self {
                Kind::ClassFolders | Kind::TarOfTars | Kind::Webdataset => true,
                Kind::Flat => labelled,
            },
            Mode::AutoOrFlat => true,
            Mode::Flat => self == Kind::Flat,
            Mode::Shard => self == Kind::Webdataset,
        }
    }
}

/// One sample: where its bytes are, its label, and its name (a range of `Built::names`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rec {
    pub offset: u64,
    pub len: u64,
    /// Class index; the `.cls` value for webdataset; [`NONE`] for flat tars.
    pub label: u32,
    /// Index of the inner tar (tar of tars), else [`NONE`].
    pub group: u32,
    pub name_start: usize,
    pub name_end: usize,
}

/// Index contents, in sample order.
#[derive(Debug, Default)]
pub(crate) struct Built {
    pub kind: Option<Kind>,
    pub classes: Vec<String>,
    pub groups: Vec<String>,
    pub records: Vec<Rec>,
    pub names: String,
    pub skipped: Skipped,
    /// Tar headers read.
    pub members: u64,
}

#[derive(Debug, Clone, Copy)]
struct Ent {
    start: usize,
    end: usize,
    offset: u64,
    len: u64,
    is_dir: bool,
}

/// Members of one tar, paths stored end to end.
#[derive(Debug, Default)]
struct Listing {
    paths: String,
    ents: Vec<Ent>,
}

impl Listing {
    fn push(&mut self, m: Member<'_>) {
        let start = self.paths.len();
        self.paths.push_str(m.path);
        self.ents.push(Ent {
            start,
            end: self.paths.len(),
            offset: m.offset,
            len: m.len,
            is_dir: m.is_dir,
        });
    }

    fn path(&self, e: &Ent) -> &str {
        &self.paths[e.start..e.end]
    }
}

fn hidden(path: &str) -> bool {
    path.split('/').any(|c| c.starts_with('.'))
}

fn basename(path: &str) -> &str {
    split_dir(path).1
}

/// Counts a member that does not become a sample.
fn count_other(skipped: &mut Skipped, path: &str, is_dir: bool) {
    if hidden(path) {
        skipped.hidden += 1;
    } else if is_dir {
        skipped.directories += 1;
    } else {
        match file_kind(basename(path)) {
            FileKind::UnsupportedImage => skipped.unsupported_image += 1,
            _ => skipped.non_image += 1,
        }
    }
}

fn is_image_file(path: &str, e: &Ent) -> bool {
    !e.is_dir && !hidden(path) && file_kind(basename(path)) == FileKind::Image
}

/// The webdataset key of a member path (see [`wds_split`]).
pub(crate) fn wds_key(path: &str) -> &str {
    wds_split(path).0
}

/// Webdataset splits a member name at the first dot of its base name: `dir/a.b.jpg` is key `dir/a`,
/// extension `b.jpg`.
fn wds_split(path: &str) -> (&str, &str) {
    let (dir, base) = split_dir(path);
    match base.find('.') {
        Some(dot) => (
            &path[..dir.len() + usize::from(!dir.is_empty()) + dot],
            &base[dot + 1..],
        ),
        None => (path, ""),
    }
}

/// Builds the index contents of the tar `tar`.
pub(crate) fn build(tar: &TarFile, mode: Mode) -> Result<Built> {
    let archive = tar.path.as_path();
    let mut out = Built::default();
    let mut list = Listing::default();
    out.members = tarscan::scan(tar, 0, tar.size, None, &mut out.skipped, |m| {
        list.push(m);
        Ok(())
    })?;
    if out.members == 0 {
        return Err(Error::EmptyDataset {
            path: archive.to_owned(),
            reason: "the tar has no members".into(),
        });
    }
    let visible_files = || {
        list.ents
            .iter()
            .filter(|e| !e.is_dir && !hidden(list.path(e)))
    };
    let has_cls = visible_files().any(|e| wds_split(list.path(e)).1.eq_ignore_ascii_case("cls"));
    let has_images = visible_files().any(|e| file_kind(basename(list.path(e))) == FileKind::Image);
    let has_tars = visible_files().any(|e| {
        basename(list.path(e))
            .to_ascii_lowercase()
            .ends_with(".tar")
    });
    match mode {
        Mode::Flat => flat(&list, archive, &mut out)?,
        Mode::Shard | Mode::Auto | Mode::AutoOrFlat if has_cls => webdataset(&list, tar, &mut out)?,
        Mode::Shard => {
            return Err(Error::Layout {
                path: archive.to_owned(),
                reason: "not a webdataset shard: no `.cls` label members".into(),
            });
        }
        Mode::Auto | Mode::AutoOrFlat if !has_images && has_tars => {
            tar_of_tars(&list, tar, &mut out)?
        }
        Mode::Auto => class_folders(&list, archive, &mut out, false)?,
        Mode::AutoOrFlat => class_folders(&list, archive, &mut out, true)?,
    }
    if out.records.is_empty() {
        return Err(Error::EmptyDataset {
            path: archive.to_owned(),
            reason: format!(
                "no .jpg/.jpeg/.png member among {} ({} skipped: {:?})",
                out.members,
                out.skipped.total(),
                out.skipped
            ),
        });
    }
    if out.records.len() >= NONE as usize {
        return Err(Error::Layout {
            path: archive.to_owned(),
            reason: "more than 2^32-1 images in one tar".into(),
        });
    }
    Ok(out)
}

fn flat(list: &Listing, _archive: &Path, out: &mut Built) -> Result<()> {
    out.kind = Some(Kind::Flat);
    let mut picked: Vec<&Ent> = Vec::new();
    for e in &list.ents {
        let path = list.path(e);
        if is_image_file(path, e) {
            picked.push(e);
        } else {
            count_other(&mut out.skipped, path, e.is_dir);
        }
    }
    picked.sort_by(|a, b| split_dir(list.path(a)).cmp(&split_dir(list.path(b))));
    for e in picked {
        push_rec(out, list.path(e), e.offset, e.len, NONE, NONE);
    }
    Ok(())
}

fn push_rec(out: &mut Built, name: &str, offset: u64, len: u64, label: u32, group: u32) {
    let name_start = out.names.len();
    out.names.push_str(name);
    out.records.push(Rec {
        offset,
        len,
        label,
        group,
        name_start,
        name_end: out.names.len(),
    });
}

/// Images outside class folders are an error, or with `flat_fallback` make a flat tar.
fn class_folders(
    list: &Listing,
    archive: &Path,
    out: &mut Built,
    flat_fallback: bool,
) -> Result<()> {
    out.kind = Some(Kind::ClassFolders);
    let visible: Vec<&Ent> = list.ents.iter().filter(|e| !hidden(list.path(e))).collect();
    let images: Vec<&Ent> = visible
        .iter()
        .copied()
        .filter(|e| is_image_file(list.path(e), e))
        .collect();
    if images.is_empty() {
        return Ok(()); // reported as an empty dataset by the caller
    }
    // One folder above the class folders (`train/n01440764/x.JPEG`) is dropped when every image is at least
    // three deep under it and nothing else sits beside it. A tar of a single class folder with sub-folders
    // would be misread; that is the price of accepting `tar cf train.tar train/`.
    let first = |p: &str| p.split('/').next().unwrap_or("").to_owned();
    let depth = |p: &str| p.split('/').count();
    let top = first(list.path(images[0]));
    let strip = images.iter().all(|e| depth(list.path(e)) >= 3)
        && visible.iter().all(|e| first(list.path(e)) == top);
    let skip = usize::from(strip);
    // (class, rest of the path inside the class) for a path, when it lies in a class folder.
    let class_of = |p: &str, is_dir: bool| -> Option<(String, usize)> {
        let mut parts = p.split('/');
        let mut at = 0;
        for _ in 0..skip {
            at += parts.next()?.len() + 1;
        }
        let class = parts.next()?;
        let rest = at + class.len() + 1;
        if rest >= p.len() && !is_dir {
            return None; // a file beside the class folders
        }
        Some((class.to_owned(), rest.min(p.len())))
    };
    let mut class_names = BTreeSet::new();
    for e in &visible {
        if let Some((class, _)) = class_of(list.path(e), e.is_dir) {
            class_names.insert(class);
        }
    }
    let in_class = images
        .iter()
        .any(|e| class_of(list.path(e), false).is_some());
    if !in_class && flat_fallback {
        return flat(list, archive, out);
    }
    if !in_class {
        return Err(Error::NeedsLabels {
            path: archive.to_owned(),
            reason: "the images are not in class folders; a flat tar (like ILSVRC2012_img_val.tar) needs a labels \
                     file (OpenOptions::labels / --labels)"
                .into(),
        });
    }
    out.classes = class_names.into_iter().collect();
    let label_of: HashMap<&str, u32> = out
        .classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i as u32))
        .collect();
    let mut samples: Vec<(u32, &str, &Ent)> = Vec::with_capacity(images.len());
    for e in &list.ents {
        let path = list.path(e);
        if !is_image_file(path, e) {
            count_other(&mut out.skipped, path, e.is_dir);
            continue;
        }
        match class_of(path, false) {
            Some((class, rest)) => samples.push((label_of[class.as_str()], &path[rest..], e)),
            None => out.skipped.outside_class += 1,
        }
    }
    samples.sort_by(|a, b| (a.0, split_dir(a.1)).cmp(&(b.0, split_dir(b.1))));
    let mut seen = vec![false; out.classes.len()];
    for (label, _, e) in samples {
        seen[label as usize] = true;
        push_rec(out, list.path(e), e.offset, e.len, label, NONE);
    }
    empty_classes(archive, &out.classes, &seen)
}

fn empty_classes(archive: &Path, classes: &[String], seen: &[bool]) -> Result<()> {
    let empty: Vec<String> = classes
        .iter()
        .zip(seen)
        .filter(|(_, s)| !**s)
        .map(|(c, _)| c.clone())
        .collect();
    if empty.is_empty() {
        Ok(())
    } else {
        Err(Error::EmptyClasses {
            path: archive.to_owned(),
            classes: empty,
        })
    }
}

fn tar_of_tars(list: &Listing, tar: &TarFile, out: &mut Built) -> Result<()> {
    let archive = tar.path.as_path();
    out.kind = Some(Kind::TarOfTars);
    let mut inner: BTreeMap<String, &Ent> = BTreeMap::new();
    for e in &list.ents {
        let path = list.path(e);
        let base = basename(path);
        let is_tar = !e.is_dir
            && !hidden(path)
            && base.len() > 4
            && base[base.len() - 4..].eq_ignore_ascii_case(".tar");
        if !is_tar {
            count_other(&mut out.skipped, path, e.is_dir);
            continue;
        }
        let class = base[..base.len() - 4].to_owned();
        if let Some(prev) = inner.insert(class.clone(), e) {
            return Err(Error::Layout {
                path: archive.to_owned(),
                reason: format!(
                    "two inner tars name class `{class}`: `{}` and `{path}`",
                    list.path(prev)
                ),
            });
        }
    }
    let mut seen = vec![false; inner.len()];
    for (label, (class, e)) in inner.into_iter().enumerate() {
        let label = label as u32;
        let inner_path = list.path(e);
        out.classes.push(class);
        out.groups.push(inner_path.to_owned());
        let (head, n) = tarscan::head(tar, e.offset, e.len).map_err(|err| Error::Archive {
            archive: archive.to_owned(),
            offset: e.offset,
            reason: format!("cannot read inner tar `{inner_path}`: {err}"),
        })?;
        if let Some((kind, cmd)) = tarscan::compression(&head[..n]) {
            return Err(Error::Compressed {
                path: archive.to_owned(),
                member: Some(inner_path.to_owned()),
                kind,
                hint: format!(
                    "tar -xOf '{}' '{inner_path}' | {cmd} > '{inner_path}', for every inner tar, then tar them again",
                    archive.display()
                ),
            });
        }
        let mut members = Listing::default();
        out.members += tarscan::scan(
            tar,
            e.offset,
            e.offset + e.len,
            Some(inner_path),
            &mut out.skipped,
            |m| {
                members.push(m);
                Ok(())
            },
        )?;
        let mut samples: Vec<&Ent> = Vec::new();
        for m in &members.ents {
            let path = members.path(m);
            if is_image_file(path, m) {
                samples.push(m);
            } else {
                count_other(&mut out.skipped, path, m.is_dir);
            }
        }
        samples.sort_by(|a, b| split_dir(members.path(a)).cmp(&split_dir(members.path(b))));
        seen[label as usize] = !samples.is_empty();
        for m in samples {
            push_rec(out, members.path(m), m.offset, m.len, label, label);
        }
    }
    empty_classes(archive, &out.classes, &seen)
}

fn webdataset(list: &Listing, tar: &TarFile, out: &mut Built) -> Result<()> {
    let archive = tar.path.as_path();
    let mut cls = [0u8; MAX_CLS_BYTES as usize];
    out.kind = Some(Kind::Webdataset);
    #[derive(Default)]
    struct Sample<'a> {
        image: Option<&'a Ent>,
        label: Option<u32>,
    }
    let mut by_key: HashMap<&str, Sample<'_>> = HashMap::new();
    for e in &list.ents {
        let path = list.path(e);
        if e.is_dir || hidden(path) {
            count_other(&mut out.skipped, path, e.is_dir);
            continue;
        }
        let (key, ext) = wds_split(path);
        if ext.eq_ignore_ascii_case("cls") {
            let bad = |reason: String| Error::Archive {
                archive: archive.to_owned(),
                offset: e.offset,
                reason: format!("`{path}`: {reason}"),
            };
            if e.len > MAX_CLS_BYTES {
                return Err(bad(format!(
                    "a .cls member holds a decimal class index, this one has {} bytes",
                    e.len
                )));
            }
            let bytes = &mut cls[..e.len as usize];
            tar.read_at(bytes, e.offset)
                .map_err(|err| bad(format!("cannot read: {err}")))?;
            let text = std::str::from_utf8(bytes).ok().map(str::trim);
            let label = text.and_then(|t| t.parse::<u64>().ok()).ok_or_else(|| {
                bad(format!(
                    "a .cls member must hold a decimal class index, found {:?}",
                    String::from_utf8_lossy(&bytes[..bytes.len().min(40)])
                ))
            })?;
            let label = u32::try_from(label)
                .ok()
                .filter(|&l| l < MAX_CLASSES)
                .ok_or_else(|| {
                    bad(format!(
                        "class id {label} is out of range: class ids index a class table and must be below \
                         {MAX_CLASSES} (2^24)"
                    ))
                })?;
            by_key.entry(key).or_default().label = Some(label);
            out.skipped.non_image += 1;
        } else if !ext.contains('.') && ext_kind(ext) == FileKind::Image {
            let slot = by_key.entry(key).or_default();
            if let Some(prev) = slot.image {
                return Err(Error::Layout {
                    path: archive.to_owned(),
                    reason: format!(
                        "webdataset key `{key}` has two images: `{}` and `{path}`",
                        list.path(prev)
                    ),
                });
            }
            slot.image = Some(e);
        } else {
            count_other(&mut out.skipped, path, false);
        }
    }
    let mut missing = Vec::new();
    let mut missing_count = 0;
    let mut samples: Vec<(u32, &str, &Ent)> = Vec::with_capacity(by_key.len());
    for sample in by_key.values() {
        match (sample.image, sample.label) {
            (Some(e), Some(label)) => samples.push((label, list.path(e), e)),
            (Some(e), None) => {
                push_limited(&mut missing, &mut missing_count, || list.path(e).to_owned())
            }
            (None, _) => {}
        }
    }
    if missing_count > 0 {
        missing.sort();
        return Err(Error::Labels {
            path: archive.to_owned(),
            missing,
            missing_count,
            unknown: Vec::new(),
            unknown_count: 0,
        });
    }
    samples.sort_by(|a, b| (a.0, split_dir(a.1)).cmp(&(b.0, split_dir(b.1))));
    for (label, path, e) in samples {
        push_rec(out, path, e.offset, e.len, label, NONE);
    }
    Ok(())
}

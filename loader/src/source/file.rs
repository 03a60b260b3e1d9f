//! Opening and reading the files a dataset is made of, safe against files that are not what they seem: a
//! FIFO, socket or device where a tar, an image or a labels file is expected (opening a FIFO for reading
//! waits for a writer: forever), and a tar that shrinks while it is read (a memory map would turn that
//! into SIGBUS). See "Reading tars" in `INDEX_FORMAT.md`.

use std::fs::{File, Metadata};
use std::io;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use crate::error::{Error, Result, io_err};

/// What a file that is not a regular file is, for messages.
fn kind_name(meta: &Metadata) -> &'static str {
    let ft = meta.file_type();
    if ft.is_dir() {
        return "folder";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_fifo() {
            return "FIFO (named pipe)";
        } else if ft.is_socket() {
            return "socket";
        } else if ft.is_char_device() {
            return "character device";
        } else if ft.is_block_device() {
            return "block device";
        }
    }
    "special file"
}

fn not_a_file(path: &Path, meta: &Metadata) -> Error {
    Error::NotAFile {
        path: path.to_owned(),
        kind: kind_name(meta),
    }
}

/// Opens `path` for reading when it is a regular file (symlinks followed), else [`Error::NotAFile`].
///
/// The type is checked by path before opening, so that no FIFO or device is ever opened (opening a tape
/// device can rewind it). The open itself is non-blocking, and the type is checked again on the open file:
/// a file swapped for a FIFO in between cannot block us either. `O_NONBLOCK` changes nothing for reads of
/// regular files.
pub(crate) fn open_regular(path: &Path) -> Result<(File, Metadata)> {
    let meta = std::fs::metadata(path).map_err(io_err(path))?;
    if !meta.is_file() {
        return Err(not_a_file(path, &meta));
    }
    let file = open_nonblocking(path).map_err(io_err(path))?;
    let meta = file.metadata().map_err(io_err(path))?;
    if !meta.is_file() {
        return Err(not_a_file(path, &meta));
    }
    Ok((file, meta))
}

/// The whole content of the regular file at `path` (a labels file, a manifest); see [`open_regular`].
pub(crate) fn read_regular(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let (mut file, meta) = open_regular(path)?;
    let mut out = Vec::with_capacity(meta.len() as usize);
    file.read_to_end(&mut out).map_err(io_err(path))?;
    Ok(out)
}

#[cfg(unix)]
fn open_nonblocking(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
}

#[cfg(not(unix))]
fn open_nonblocking(path: &Path) -> io::Result<File> {
    // No FIFOs to block on.
    File::open(path)
}

#[cfg(unix)]
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(windows)]
fn read_exact_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match file.seek_read(buf, offset) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Modification time in ns since the Unix epoch (negative before it).
pub(crate) fn mtime_ns(path: &Path, meta: &Metadata) -> Result<i64> {
    let t = meta.modified().map_err(io_err(path))?;
    Ok(match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i64,
        Err(e) => -(e.duration().as_nanos() as i64),
    })
}

/// A tar open for positioned reads (`pread`), with its size and mtime when opened. Shared by all workers:
/// positioned reads do not move a file position, so `&TarFile` is all a reader needs.
#[derive(Debug)]
pub(crate) struct TarFile {
    pub path: PathBuf,
    file: File,
    pub size: u64,
    pub mtime: i64,
}

impl TarFile {
    /// Opens the regular file at `path` (see [`open_regular`]).
    pub(crate) fn open(path: &Path) -> Result<TarFile> {
        let (file, meta) = open_regular(path)?;
        Ok(TarFile {
            path: path.to_owned(),
            size: meta.len(),
            mtime: mtime_ns(path, &meta)?,
            file,
        })
    }

    /// Fills `buf` with the bytes at `offset`. A short read means the file shrank since it was opened or
    /// indexed: that is an `UnexpectedEof` error saying where the file ends now.
    pub(crate) fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        read_exact_at(&self.file, buf, offset).map_err(|e| {
            if e.kind() != io::ErrorKind::UnexpectedEof {
                return e;
            }
            let now = self
                .file
                .metadata()
                .map_or("an unknown size".to_owned(), |m| format!("{} bytes", m.len()));
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "short read: the file has shrunk to {now} (it had {} when opened; truncated or rewritten \
                     while in use?)",
                    self.size
                ),
            )
        })
    }

    /// Whether the file still has the size and mtime it had when opened. An index is only written when
    /// this holds after the scan, so that a tar being rewritten never gets an index of a mix of versions.
    pub(crate) fn unchanged(&self) -> Result<bool> {
        let meta = self.file.metadata().map_err(io_err(&self.path))?;
        Ok(meta.len() == self.size && mtime_ns(&self.path, &meta)? == self.mtime)
    }
}

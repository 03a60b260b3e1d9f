//! The tar side of the shard writer: fixed ustar headers, each shard written to a temporary file with its
//! running size and CRC-32, synced and renamed into place.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use super::{ShardInfo, io_err};
use crate::error::Result;

/// The file name of shard `n`.
pub fn shard_file_name(n: usize) -> String {
    format!("shard-{n:06}.tar")
}

pub(super) fn tmp_name(n: usize) -> String {
    format!(".{}.tmp", shard_file_name(n))
}

/// CRC-32 and length of a file.
pub(super) fn file_crc(path: &Path) -> std::io::Result<(u32, u64)> {
    let mut f = File::open(path)?;
    let mut h = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok((h.finalize(), len));
        }
        h.update(&buf[..n]);
        len += n as u64;
    }
}

/// A tar being written, with its running CRC and size.
pub(super) struct TarOut {
    n: usize,
    tmp: PathBuf,
    out: BufWriter<File>,
    crc: crc32fast::Hasher,
    /// Bytes written so far.
    pub(super) bytes: u64,
    /// Samples in it so far.
    pub(super) samples: usize,
    /// Positions of the shuffled order it covers so far (samples + bad samples left out).
    pub(super) span: usize,
}

/// The tar block size.
pub(super) const BLOCK: u64 = 512;

pub(super) fn tar_len(data: usize) -> u64 {
    BLOCK + (data as u64).div_ceil(BLOCK) * BLOCK
}

impl TarOut {
    pub(super) fn create(dir: &Path, n: usize) -> Result<TarOut> {
        let tmp = dir.join(tmp_name(n));
        let file = File::create(&tmp).map_err(io_err(&tmp))?;
        Ok(TarOut {
            n,
            tmp,
            out: BufWriter::with_capacity(1 << 20, file),
            crc: crc32fast::Hasher::new(),
            bytes: 0,
            samples: 0,
            span: 0,
        })
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes).map_err(io_err(&self.tmp))?;
        self.crc.update(bytes);
        self.bytes += bytes.len() as u64;
        Ok(())
    }

    /// Pushes what is buffered to the file (tests pause between samples to kill a run mid-shard).
    pub(super) fn flush(&mut self) -> Result<()> {
        self.out.flush().map_err(io_err(&self.tmp))
    }

    /// One member: a ustar header with fixed fields, the data, zero padding to the block.
    pub(super) fn member(&mut self, name: &str, data: &[u8]) -> Result<()> {
        let mut h = tar::Header::new_ustar();
        h.set_path(name).map_err(io_err(&self.tmp))?;
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        self.put(h.as_bytes())?;
        self.put(data)?;
        let pad = (BLOCK - data.len() as u64 % BLOCK) % BLOCK;
        self.put(&[0u8; BLOCK as usize][..pad as usize])
    }

    /// Ends the archive, syncs it and renames it to its final name.
    pub(super) fn finish(mut self, dir: &Path) -> Result<ShardInfo> {
        self.put(&[0u8; 2 * BLOCK as usize])?;
        let file = self
            .out
            .into_inner()
            .map_err(|e| io_err(&self.tmp)(e.into_error()))?;
        file.sync_all().map_err(io_err(&self.tmp))?;
        drop(file);
        let name = shard_file_name(self.n);
        let dest = dir.join(&name);
        std::fs::rename(&self.tmp, &dest).map_err(io_err(&dest))?;
        Ok(ShardInfo {
            file: name,
            samples: self.samples,
            span: self.span,
            bytes: self.bytes,
            crc32: self.crc.finalize(),
        })
    }
}

//! A streaming tar writer: POSIX ustar headers (IEEE 1003.1-1988), and a pax extended header
//! (POSIX.1-2001) in front of an entry whose path does not fit ustar's 100 + 155 bytes. Regular
//! files and directories only, owned by uid/gid 0, one modification time for every entry —
//! what a support bundle needs, and what every tar since the 1990s reads.

use std::io::{self, Write};

pub const BLOCK_BYTES: usize = 512;
const NAME_BYTES: usize = 100;
const PREFIX_BYTES: usize = 155;
/// ustar's size field: 11 octal digits.
const SIZE_MAX: u64 = 0o77_777_777_777;

/// Where the fields of a ustar header start, and their widths.
const MODE: (usize, usize) = (100, 8);
const UID: (usize, usize) = (108, 8);
const GID: (usize, usize) = (116, 8);
const SIZE: (usize, usize) = (124, 12);
const MTIME: (usize, usize) = (136, 12);
const CHECKSUM: (usize, usize) = (148, 8);
const TYPEFLAG: usize = 156;
const MAGIC: usize = 257;
const PREFIX: usize = 345;

const TYPE_FILE: u8 = b'0';
const TYPE_DIR: u8 = b'5';
const TYPE_PAX: u8 = b'x';

/// Writes tar entries to `inner`; [`TarWriter::finish`] writes the end-of-archive blocks.
pub struct TarWriter<W: Write> {
    inner: W,
    mtime: u64,
}

impl<W: Write> TarWriter<W> {
    /// Entries get `mtime_unix` as their modification time.
    pub fn new(inner: W, mtime_unix: u64) -> TarWriter<W> {
        TarWriter { inner, mtime: mtime_unix }
    }

    /// A regular file at `path` (relative, `/`-separated) with permission bits `mode`.
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        self.entry(path, mode, TYPE_FILE, data)
    }

    /// A directory at `path` (a trailing `/` is added).
    pub fn dir(&mut self, path: &str) -> io::Result<()> {
        let path = if path.ends_with('/') { path.to_owned() } else { format!("{path}/") };
        self.entry(&path, 0o755, TYPE_DIR, &[])
    }

    /// The two zero blocks that end an archive; returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.inner.write_all(&[0u8; 2 * BLOCK_BYTES])?;
        Ok(self.inner)
    }

    fn entry(&mut self, path: &str, mode: u32, typeflag: u8, data: &[u8]) -> io::Result<()> {
        if path.is_empty() || path.starts_with('/') || path.split('/').any(|part| part == "..") || path.contains('\0') {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("tar: bad entry path {path:?}")));
        }
        let size = data.len() as u64;
        if size > SIZE_MAX {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("tar: {path} is too large")));
        }
        let (prefix, name) = match split_path(path) {
            Some(split) => split,
            None => {
                let record = pax_record("path", path);
                let pax_name =
                    format!("PaxHeaders/{}", truncate(path.rsplit('/').next().unwrap_or(path), NAME_BYTES - 11));
                self.write_entry(
                    &header("", &pax_name, 0o644, record.len() as u64, self.mtime, TYPE_PAX),
                    record.as_bytes(),
                )?;
                ("", truncate(path, NAME_BYTES))
            }
        };
        self.write_entry(&header(prefix, name, mode, size, self.mtime, typeflag), data)
    }

    fn write_entry(&mut self, header: &[u8; BLOCK_BYTES], data: &[u8]) -> io::Result<()> {
        self.inner.write_all(header)?;
        self.inner.write_all(data)?;
        let padding = (BLOCK_BYTES - data.len() % BLOCK_BYTES) % BLOCK_BYTES;
        self.inner.write_all(&[0u8; BLOCK_BYTES][..padding])
    }
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
fn truncate(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// `path` as ustar's (prefix, name): the name alone when it fits, else split at a `/` with at
/// most 155 bytes before it and 100 after; `None` when no split fits.
fn split_path(path: &str) -> Option<(&str, &str)> {
    if path.len() <= NAME_BYTES {
        return Some(("", path));
    }
    path.match_indices('/')
        .map(|(index, _)| index)
        .filter(|index| *index <= PREFIX_BYTES && path.len() - index - 1 <= NAME_BYTES && *index > 0)
        .map(|index| (&path[..index], &path[index + 1..]))
        .next()
}

/// One pax record, `"{length} {key}={value}\n"`, where the length counts itself.
fn pax_record(key: &str, value: &str) -> String {
    let body = format!(" {key}={value}\n");
    let mut length = body.len() + 1;
    while length != body.len() + length.to_string().len() {
        length = body.len() + length.to_string().len();
    }
    format!("{length}{body}")
}

fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    field[..digits].copy_from_slice(&text.as_bytes()[text.len() - digits..]);
    field[digits] = 0;
}

fn header(prefix: &str, name: &str, mode: u32, size: u64, mtime: u64, typeflag: u8) -> [u8; BLOCK_BYTES] {
    let mut block = [0u8; BLOCK_BYTES];
    block[..name.len()].copy_from_slice(name.as_bytes());
    let field = |block: &mut [u8; BLOCK_BYTES], (start, width): (usize, usize), value: u64| {
        octal(&mut block[start..start + width], value);
    };
    field(&mut block, MODE, u64::from(mode & 0o7777));
    field(&mut block, UID, 0);
    field(&mut block, GID, 0);
    field(&mut block, SIZE, size);
    field(&mut block, MTIME, mtime.min(SIZE_MAX));
    block[TYPEFLAG] = typeflag;
    block[MAGIC..MAGIC + 8].copy_from_slice(b"ustar\x0000");
    block[PREFIX..PREFIX + prefix.len()].copy_from_slice(prefix.as_bytes());
    // The checksum is the byte sum of the header with its own field as spaces.
    block[CHECKSUM.0..CHECKSUM.0 + CHECKSUM.1].fill(b' ');
    let sum: u64 = block.iter().map(|b| u64::from(*b)).sum();
    let text = format!("{sum:06o}\0 ");
    block[CHECKSUM.0..CHECKSUM.0 + CHECKSUM.1].copy_from_slice(text.as_bytes());
    block
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(block: &[u8], (start, width): (usize, usize)) -> u64 {
        let text = std::str::from_utf8(&block[start..start + width]).expect("ascii");
        u64::from_str_radix(text.trim_matches(['\0', ' ']), 8).expect("octal")
    }

    fn text(block: &[u8], start: usize, width: usize) -> String {
        String::from_utf8_lossy(&block[start..start + width]).trim_end_matches('\0').to_owned()
    }

    /// Reads an archive back: (path, typeflag, data), with pax `path` records applied.
    fn entries(archive: &[u8]) -> Vec<(String, u8, Vec<u8>)> {
        let mut out = Vec::new();
        let mut offset = 0;
        let mut pax_path = None;
        loop {
            let block = &archive[offset..offset + BLOCK_BYTES];
            if block.iter().all(|b| *b == 0) {
                assert!(archive[offset..].iter().all(|b| *b == 0) && archive.len() - offset == 2 * BLOCK_BYTES);
                return out;
            }
            let mut sum_block = block.to_vec();
            sum_block[148..156].fill(b' ');
            assert_eq!(field(block, CHECKSUM), sum_block.iter().map(|b| u64::from(*b)).sum::<u64>(), "checksum");
            assert_eq!(&block[257..265], b"ustar\x0000");
            let size = field(block, SIZE) as usize;
            let data = archive[offset + BLOCK_BYTES..offset + BLOCK_BYTES + size].to_vec();
            offset += BLOCK_BYTES + size.div_ceil(BLOCK_BYTES) * BLOCK_BYTES;
            let (prefix, name) = (text(block, PREFIX, PREFIX_BYTES), text(block, 0, NAME_BYTES));
            let path = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
            if block[TYPEFLAG] == TYPE_PAX {
                let record = String::from_utf8(data).expect("utf8");
                let (length, rest) = record.split_once(' ').expect("length");
                assert_eq!(length.parse::<usize>().expect("number"), record.len());
                pax_path = Some(rest.strip_prefix("path=").expect("path").trim_end_matches('\n').to_owned());
                continue;
            }
            out.push((pax_path.take().unwrap_or(path), block[TYPEFLAG], data));
        }
    }

    #[test]
    fn files_and_dirs_read_back_with_their_fields() {
        let mut tar = TarWriter::new(Vec::new(), 1_796_083_200);
        tar.dir("bundle").expect("dir");
        tar.file("bundle/a.txt", 0o600, b"hello\n").expect("file");
        tar.file("bundle/empty", 0o644, b"").expect("file");
        tar.file("bundle/block", 0o644, &[7u8; 512]).expect("file");
        let archive = tar.finish().expect("finish");
        assert_eq!(archive.len() % BLOCK_BYTES, 0);
        let read = entries(&archive);
        assert_eq!(read[0], ("bundle/".to_owned(), TYPE_DIR, Vec::new()));
        assert_eq!(read[1], ("bundle/a.txt".to_owned(), TYPE_FILE, b"hello\n".to_vec()));
        assert_eq!(read[2].2, Vec::<u8>::new());
        assert_eq!(read[3].2, vec![7u8; 512]);
        let header = &archive[BLOCK_BYTES..2 * BLOCK_BYTES];
        assert_eq!(field(header, MODE), 0o600);
        assert_eq!(field(header, MTIME), 1_796_083_200);
        assert_eq!(archive.len(), BLOCK_BYTES * (1 + 2 + 1 + 2 + 2));
    }

    #[test]
    fn long_paths_use_the_prefix_or_a_pax_header() {
        let mut tar = TarWriter::new(Vec::new(), 0);
        let medium = format!("bundle/twins/{}.twin", "a".repeat(90));
        let long = format!("bundle/twins/{}.twin", "b%2F".repeat(55));
        tar.file(&medium, 0o644, b"m").expect("file");
        tar.file(&long, 0o644, b"l").expect("file");
        let archive = tar.finish().expect("finish");
        assert_eq!(text(&archive, PREFIX, PREFIX_BYTES), "bundle/twins", "split at the last fitting /");
        let read = entries(&archive);
        assert_eq!(read[0].0, medium);
        assert_eq!(read[1], (long, TYPE_FILE, b"l".to_vec()));
    }

    #[test]
    fn pax_record_lengths_count_themselves() {
        assert_eq!(pax_record("path", "ab"), "11 path=ab\n");
        assert_eq!(pax_record("path", &"x".repeat(92)).len(), 102, "3 digits once the record passes 99 bytes");
        for n in 80..120 {
            let record = pax_record("path", &"x".repeat(n));
            let (length, _) = record.split_once(' ').expect("length");
            assert_eq!(length.parse::<usize>().expect("number"), record.len(), "{n}");
        }
    }

    #[test]
    fn unsafe_paths_are_refused() {
        let mut tar = TarWriter::new(Vec::new(), 0);
        for bad in ["", "/etc/passwd", "a/../../b", "a\0b"] {
            assert!(tar.file(bad, 0o644, b"").is_err(), "{bad:?}");
        }
    }
}

//! A streaming gzip writer (RFC 1952) over miniz_oxide's raw deflate: a 10-byte header, the
//! deflate stream, then the CRC-32 and length of the input. Memory: the compressor's state
//! (about 300 KiB, boxed) and one output buffer, whatever the input size.

use std::io::{self, Write};

use miniz_oxide::deflate::core::{create_comp_flags_from_zip_params, CompressorOxide};
use miniz_oxide::deflate::stream::deflate;
use miniz_oxide::{MZFlush, MZStatus};

/// zlib's default level: most of level 9's ratio at a fraction of its time (logs and JSON).
const LEVEL: i32 = 6;
/// Compressed bytes handed to the inner writer at a time.
const OUT_BUFFER_BYTES: usize = 64 * 1024;
/// gzip magic, deflate method, no flags.
const HEADER_START: [u8; 4] = [0x1F, 0x8B, 0x08, 0x00];
/// Extra flags 0, operating system 3 (Unix).
const HEADER_END: [u8; 2] = [0x00, 0x03];

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320), as gzip's trailer has it.
#[derive(Clone)]
pub struct Crc32 {
    table: [u32; 256],
    value: u32,
}

impl Crc32 {
    pub fn new() -> Crc32 {
        let mut table = [0u32; 256];
        for (index, entry) in table.iter_mut().enumerate() {
            let mut crc = index as u32;
            for _ in 0..8 {
                crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
            }
            *entry = crc;
        }
        Crc32 { table, value: 0xFFFF_FFFF }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.value = self.table[usize::from((self.value as u8) ^ byte)] ^ (self.value >> 8);
        }
    }

    pub fn finish(&self) -> u32 {
        !self.value
    }
}

/// Compresses what is written into `inner` as one gzip member; [`GzipWriter::finish`] ends it.
pub struct GzipWriter<W: Write> {
    inner: W,
    compressor: Box<CompressorOxide>,
    out: Vec<u8>,
    crc: Crc32,
    /// The input length modulo 2^32 (gzip's ISIZE).
    size: u32,
}

fn deflate_error(what: &str, error: miniz_oxide::MZError) -> io::Error {
    io::Error::other(format!("gzip: {what}: {error:?}"))
}

impl<W: Write> GzipWriter<W> {
    /// Writes the gzip header (modification time `mtime_unix`, seconds).
    pub fn new(mut inner: W, mtime_unix: u32) -> io::Result<GzipWriter<W>> {
        inner.write_all(&HEADER_START)?;
        inner.write_all(&mtime_unix.to_le_bytes())?;
        inner.write_all(&HEADER_END)?;
        let flags = create_comp_flags_from_zip_params(LEVEL, -15, 0);
        Ok(GzipWriter {
            inner,
            compressor: Box::new(CompressorOxide::new(flags)),
            out: vec![0; OUT_BUFFER_BYTES],
            crc: Crc32::new(),
            size: 0,
        })
    }

    /// Ends the deflate stream, writes the trailer, and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        loop {
            let result = deflate(&mut self.compressor, &[], &mut self.out, MZFlush::Finish);
            self.inner.write_all(&self.out[..result.bytes_written])?;
            match result.status {
                Ok(MZStatus::StreamEnd) => break,
                Ok(_) => {}
                Err(error) => return Err(deflate_error("finish", error)),
            }
        }
        self.inner.write_all(&self.crc.finish().to_le_bytes())?;
        self.inner.write_all(&self.size.to_le_bytes())?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for GzipWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.crc.update(buf);
        self.size = self.size.wrapping_add(buf.len() as u32);
        let mut input = buf;
        while !input.is_empty() {
            let result = deflate(&mut self.compressor, input, &mut self.out, MZFlush::None);
            if let Err(error) = result.status {
                return Err(deflate_error("compress", error));
            }
            self.inner.write_all(&self.out[..result.bytes_written])?;
            input = &input[result.bytes_consumed..];
        }
        Ok(buf.len())
    }

    /// Passes the flush on; compressed data still inside the compressor stays there (a sync
    /// flush would cost ratio and is not needed: the bundle is read only when finished).
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        let mut crc = Crc32::new();
        crc.update(b"123456789");
        assert_eq!(crc.finish(), 0xCBF4_3926);
        assert_eq!(Crc32::new().finish(), 0);
    }

    #[test]
    fn output_inflates_back_with_header_and_trailer() {
        let mut input = Vec::new();
        for i in 0..50_000u32 {
            input.extend_from_slice(format!("line {i} of a log that repeats itself\n").as_bytes());
        }
        input.extend((0..200_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
        let mut writer = GzipWriter::new(Vec::new(), 1_796_083_200).expect("header");
        for chunk in input.chunks(7777) {
            writer.write_all(chunk).expect("write");
        }
        let gz = writer.finish().expect("finish");
        assert_eq!(gz[..4], HEADER_START);
        assert_eq!(gz[4..8], 1_796_083_200u32.to_le_bytes());
        let body = &gz[10..gz.len() - 8];
        let inflated = miniz_oxide::inflate::decompress_to_vec(body).expect("inflates");
        assert!(inflated == input, "round trip");
        let mut crc = Crc32::new();
        crc.update(&input);
        assert_eq!(gz[gz.len() - 8..gz.len() - 4], crc.finish().to_le_bytes());
        assert_eq!(gz[gz.len() - 4..], (input.len() as u32).to_le_bytes());
        assert!(gz.len() < input.len() / 2, "the log part compresses");
    }

    #[test]
    fn empty_input_is_a_valid_member() {
        let gz = GzipWriter::new(Vec::new(), 0).expect("header").finish().expect("finish");
        assert_eq!(miniz_oxide::inflate::decompress_to_vec(&gz[10..gz.len() - 8]).expect("inflates"), Vec::<u8>::new());
        assert_eq!(gz[gz.len() - 8..], [0u8; 8]);
    }
}

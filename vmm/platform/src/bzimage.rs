//! Kernel images as distributions ship them: a bzImage (x86 boot protocol 2.08 or
//! later) whose payload is the compressed ELF kernel, as Xen's loader unpacks it
//! (`xc_dom_bzimageloader`). The payload's compression is recognised by its magic: xz
//! and lzma (xz2), gzip (flate2), zstd (ruzstd), lz4 in the kernel's legacy framing
//! (lz4_flex for the blocks) and bzip2 (bzip2) are unpacked; lzo is refused by name.
//! An image that is not a bzImage is returned as it is (a plain ELF kernel).

use std::io::Read;

/// Errors unpacking a bzImage.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BzImageError {
    /// The setup header or the payload lies outside the file.
    #[error("bzImage: truncated ({0})")]
    Truncated(&'static str),
    /// Boot protocol older than 2.08 (no payload fields).
    #[error("bzImage: boot protocol {0:#x} has no payload description")]
    Protocol(u16),
    /// A compression this build does not unpack.
    #[error(
        "bzImage: {0}-compressed kernels are not supported (gzip, xz, lzma, zstd, lz4 and bzip2 are)"
    )]
    Compression(&'static str),
    /// Unpacking failed.
    #[error("bzImage: corrupt {0} payload: {1}")]
    Corrupt(&'static str, String),
    /// The unpacked kernel would be larger than the limit.
    #[error("bzImage: the unpacked kernel exceeds {0} bytes")]
    TooBig(usize),
}

/// Offset of the setup header's "HdrS" magic.
const HDRS_OFFSET: usize = 0x202;
/// Largest unpacked kernel accepted (512 MiB).
pub const MAX_KERNEL: usize = 512 << 20;

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Whether `image` is a bzImage (has the setup header's magic).
pub fn is_bzimage(image: &[u8]) -> bool {
    image.get(HDRS_OFFSET..HDRS_OFFSET + 4) == Some(b"HdrS")
}

/// The kernel inside `image`: unpacked from a bzImage's payload, or `image` itself.
///
/// ```
/// let elf = b"\\x7fELF plain kernels pass through".to_vec();
/// assert_eq!(platform::bzimage::unpack(&elf).unwrap(), elf);
/// ```
pub fn unpack(image: &[u8]) -> Result<Vec<u8>, BzImageError> {
    if !is_bzimage(image) {
        return Ok(image.to_vec());
    }
    let version = u16_at(image, 0x206).ok_or(BzImageError::Truncated("header"))?;
    if version < 0x208 {
        return Err(BzImageError::Protocol(version));
    }
    let setup_sects = match image.get(0x1f1).copied().unwrap_or(0) {
        0 => 4,
        n => usize::from(n),
    };
    let offset = u32_at(image, 0x248).ok_or(BzImageError::Truncated("header"))? as usize;
    let length = u32_at(image, 0x24c).ok_or(BzImageError::Truncated("header"))? as usize;
    let start = (setup_sects + 1) * 512 + offset;
    let payload = start
        .checked_add(length)
        .and_then(|end| image.get(start..end))
        .ok_or(BzImageError::Truncated("payload"))?;
    decompress(payload)
}

/// Unpacks `payload` by its magic.
fn decompress(payload: &[u8]) -> Result<Vec<u8>, BzImageError> {
    let magic = |m: &[u8]| payload.starts_with(m);
    let limited = |name: &'static str, r: &mut dyn Read| -> Result<Vec<u8>, BzImageError> {
        let mut out = Vec::new();
        r.take(MAX_KERNEL as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|e| BzImageError::Corrupt(name, e.to_string()))?;
        Ok(out)
    };
    let out = if magic(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        let stream = xz2::stream::Stream::new_stream_decoder(u64::MAX, 0)
            .map_err(|e| BzImageError::Corrupt("xz", e.to_string()))?;
        lzma_stream("xz", stream, payload)?
    } else if magic(&[0x5d, 0, 0]) {
        let stream = xz2::stream::Stream::new_lzma_decoder(u64::MAX)
            .map_err(|e| BzImageError::Corrupt("lzma", e.to_string()))?;
        lzma_stream("lzma", stream, payload)?
    } else if magic(&[0x1f, 0x8b]) {
        limited("gzip", &mut flate2::read::GzDecoder::new(payload))?
    } else if magic(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let mut input = payload;
        let mut d = ruzstd::decoding::StreamingDecoder::new(&mut input)
            .map_err(|e| BzImageError::Corrupt("zstd", e.to_string()))?;
        limited("zstd", &mut d)?
    } else if magic(&LZ4_LEGACY_MAGIC.to_le_bytes()) {
        lz4_legacy(payload)?
    } else if magic(b"BZh") {
        limited("bzip2", &mut bzip2::read::BzDecoder::new(payload))?
    } else if magic(&[0x89, b'L', b'Z', b'O']) {
        return Err(BzImageError::Compression("lzo"));
    } else {
        return Err(BzImageError::Compression("unknown"));
    };
    if out.len() > MAX_KERNEL {
        return Err(BzImageError::TooBig(MAX_KERNEL));
    }
    Ok(out)
}

/// Runs one xz or lzma stream over `payload` to its end (the kernel's build appends the
/// unpacked size after the stream, which is not more data).
fn lzma_stream(
    name: &'static str,
    mut stream: xz2::stream::Stream,
    payload: &[u8],
) -> Result<Vec<u8>, BzImageError> {
    let mut out = Vec::with_capacity(payload.len() * 4);
    loop {
        let consumed = stream.total_in() as usize;
        if out.len() == out.capacity() {
            out.reserve(out.len().max(1 << 20));
        }
        let status = stream
            .process_vec(&payload[consumed..], &mut out, xz2::stream::Action::Run)
            .map_err(|e| BzImageError::Corrupt(name, e.to_string()))?;
        if status == xz2::stream::Status::StreamEnd {
            return Ok(out);
        }
        if out.len() > MAX_KERNEL {
            return Err(BzImageError::TooBig(MAX_KERNEL));
        }
        if stream.total_in() as usize == payload.len() && out.len() < out.capacity() {
            return Err(BzImageError::Corrupt(name, "truncated stream".into()));
        }
    }
}

/// The lz4 legacy frame's magic (`lz4 -l`, what the kernel's build uses).
const LZ4_LEGACY_MAGIC: u32 = 0x184c_2102;
/// Largest block of the legacy frame, unpacked.
const LZ4_LEGACY_BLOCK: usize = 8 << 20;

/// The legacy lz4 frame, as the kernel's `unlz4` reads it: the magic, then blocks of
/// (compressed length, data), each unpacking to at most 8 MiB; the magic may repeat
/// (concatenated frames). Four bytes left after a block are the size the build
/// appends.
fn lz4_legacy(payload: &[u8]) -> Result<Vec<u8>, BzImageError> {
    let corrupt = |what: &str| BzImageError::Corrupt("lz4", what.to_string());
    let mut out = Vec::new();
    let mut at = 0;
    let mut blocks = 0;
    while at < payload.len() {
        let rest = &payload[at..];
        let Some(word) = u32_at(rest, 0) else {
            return Err(corrupt("truncated block header"));
        };
        if word == LZ4_LEGACY_MAGIC {
            at += 4;
            continue;
        }
        if rest.len() == 4 && blocks > 0 {
            break; // the appended size
        }
        let len = word as usize;
        let block = rest
            .get(4..4 + len)
            .ok_or_else(|| corrupt("truncated block"))?;
        let start = out.len();
        if start + LZ4_LEGACY_BLOCK > MAX_KERNEL + LZ4_LEGACY_BLOCK {
            return Err(BzImageError::TooBig(MAX_KERNEL));
        }
        out.resize(start + LZ4_LEGACY_BLOCK, 0);
        let n = lz4_flex::block::decompress_into(block, &mut out[start..])
            .map_err(|e| BzImageError::Corrupt("lz4", e.to_string()))?;
        out.truncate(start + n);
        blocks += 1;
        at += 4 + len;
    }
    if blocks == 0 {
        return Err(corrupt("no blocks"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A bzImage around `payload`: one setup sector, protocol 2.15.
    fn bzimage(payload: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 2 * 512];
        b[0x1f1] = 1;
        b[0x202..0x206].copy_from_slice(b"HdrS");
        b[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
        b[0x248..0x24c].copy_from_slice(&16u32.to_le_bytes());
        b[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        b.extend([0u8; 16]);
        b.extend(payload);
        b
    }

    #[test]
    fn gzip_and_xz_payloads_unpack() {
        let kernel = b"\x7fELF the kernel".repeat(100);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&kernel).unwrap();
        assert_eq!(unpack(&bzimage(&gz.finish().unwrap())).unwrap(), kernel);
        let mut xz = xz2::write::XzEncoder::new(Vec::new(), 1);
        xz.write_all(&kernel).unwrap();
        assert_eq!(unpack(&bzimage(&xz.finish().unwrap())).unwrap(), kernel);
    }

    /// The 4-byte unpacked size the kernel's build appends after the payload.
    fn with_size(mut c: Vec<u8>, n: usize) -> Vec<u8> {
        c.extend((n as u32).to_le_bytes());
        c
    }

    #[test]
    fn every_compression_the_kernel_builds_with_unpacks() {
        let kernel = b"\x7fELF the kernel, compressible and long enough".repeat(4000);
        let n = kernel.len();
        let mut lzma = Vec::new();
        let opts = xz2::stream::LzmaOptions::new_preset(1).unwrap();
        let enc = xz2::stream::Stream::new_lzma_encoder(&opts).unwrap();
        let mut w = xz2::write::XzEncoder::new_stream(&mut lzma, enc);
        w.write_all(&kernel).unwrap();
        w.finish().unwrap();
        assert_eq!(lzma[..3], [0x5d, 0, 0]);
        let zstd = ruzstd::encoding::compress_to_vec(
            &kernel[..],
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        let mut bz = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
        bz.write_all(&kernel).unwrap();
        // lz4 legacy: the magic, two blocks (the second after a repeated magic).
        let half = n / 2;
        let mut lz4 = LZ4_LEGACY_MAGIC.to_le_bytes().to_vec();
        for (i, part) in [&kernel[..half], &kernel[half..]].into_iter().enumerate() {
            if i == 1 {
                lz4.extend(LZ4_LEGACY_MAGIC.to_le_bytes());
            }
            let c = lz4_flex::block::compress(part);
            lz4.extend((c.len() as u32).to_le_bytes());
            lz4.extend(c);
        }
        for (name, payload) in [
            ("lzma", lzma),
            ("zstd", zstd),
            ("bzip2", bz.finish().unwrap()),
            ("lz4", lz4),
        ] {
            let image = bzimage(&with_size(payload, n));
            assert_eq!(unpack(&image).as_deref(), Ok(&kernel[..]), "{name}");
        }
    }

    #[test]
    fn corrupt_and_truncated_payloads_are_errors_not_panics() {
        let kernel = b"\x7fELF payload".repeat(500);
        let zstd = ruzstd::encoding::compress_to_vec(
            &kernel[..],
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        let mut bz = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
        bz.write_all(&kernel).unwrap();
        let bz = bz.finish().unwrap();
        let c = lz4_flex::block::compress(&kernel);
        let mut lz4 = LZ4_LEGACY_MAGIC.to_le_bytes().to_vec();
        lz4.extend((c.len() as u32).to_le_bytes());
        lz4.extend(&c);
        for (name, good) in [("zstd", zstd), ("bzip2", bz), ("lz4", lz4)] {
            // Cut short, and with bytes flipped in the middle.
            let short = bzimage(&good[..good.len() / 2]);
            let r = unpack(&short);
            assert!(
                matches!(r, Err(BzImageError::Corrupt(n, _)) if n == name),
                "{name}: {r:?}"
            );
            let mut flipped = good.clone();
            for b in &mut flipped[good.len() / 3..good.len() / 3 + 8] {
                *b ^= 0x5a;
            }
            let r = unpack(&bzimage(&flipped));
            assert!(
                r.is_err() || r.as_deref() != Ok(&kernel[..]),
                "{name}: {r:?}"
            );
        }
        // An lz4 block claiming more data than there is.
        let mut lz4 = LZ4_LEGACY_MAGIC.to_le_bytes().to_vec();
        lz4.extend(1000u32.to_le_bytes());
        lz4.extend([0u8; 10]);
        assert!(matches!(
            unpack(&bzimage(&lz4)),
            Err(BzImageError::Corrupt("lz4", _))
        ));
    }

    #[test]
    fn bad_images_are_refused_with_a_reason() {
        let lzo = bzimage(&[0x89, b'L', b'Z', b'O', 1, 2]);
        assert_eq!(unpack(&lzo), Err(BzImageError::Compression("lzo")));
        let mut truncated = bzimage(&[0xfd, b'7', b'z', b'X', b'Z', 0, 1, 2, 3]);
        truncated.truncate(truncated.len() - 4);
        assert_eq!(unpack(&truncated), Err(BzImageError::Truncated("payload")));
        let corrupt = bzimage(&[0xfd, b'7', b'z', b'X', b'Z', 0, 1, 2, 3]);
        assert!(matches!(
            unpack(&corrupt),
            Err(BzImageError::Corrupt("xz", _))
        ));
        let mut old = bzimage(b"x");
        old[0x206..0x208].copy_from_slice(&0x204u16.to_le_bytes());
        assert_eq!(unpack(&old), Err(BzImageError::Protocol(0x204)));
    }
}

//! Kernel images as distributions ship them: a bzImage (x86 boot protocol 2.08 or
//! later) whose payload is the compressed ELF kernel, as Xen's loader unpacks it
//! (`xc_dom_bzimageloader`). The payload's compression is recognised by its magic; xz
//! and gzip are unpacked (xz2, flate2), the others are refused with their name.
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
    #[error("bzImage: {0}-compressed kernels are not supported (xz and gzip are)")]
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
    let mut out = Vec::new();
    let magic = |m: &[u8]| payload.starts_with(m);
    if magic(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        // One stream: the kernel's build appends the unpacked size after it, which is
        // not a second stream; decoding stops at the stream's end.
        let mut stream = xz2::stream::Stream::new_stream_decoder(u64::MAX, 0)
            .map_err(|e| BzImageError::Corrupt("xz", e.to_string()))?;
        out.reserve(payload.len() * 4);
        loop {
            let consumed = stream.total_in() as usize;
            if out.len() == out.capacity() {
                out.reserve(out.len().max(1 << 20));
            }
            let status = stream
                .process_vec(&payload[consumed..], &mut out, xz2::stream::Action::Run)
                .map_err(|e| BzImageError::Corrupt("xz", e.to_string()))?;
            if status == xz2::stream::Status::StreamEnd {
                break;
            }
            if out.len() > MAX_KERNEL {
                return Err(BzImageError::TooBig(MAX_KERNEL));
            }
            if stream.total_in() as usize == payload.len() && out.len() < out.capacity() {
                return Err(BzImageError::Corrupt("xz", "truncated stream".into()));
            }
        }
    } else if magic(&[0x1f, 0x8b]) {
        flate2::read::GzDecoder::new(payload)
            .take(MAX_KERNEL as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|e| BzImageError::Corrupt("gzip", e.to_string()))?;
    } else if magic(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Err(BzImageError::Compression("zstd"));
    } else if magic(&[0x02, 0x21, 0x4c, 0x18]) {
        return Err(BzImageError::Compression("lz4"));
    } else if magic(b"BZh") {
        return Err(BzImageError::Compression("bzip2"));
    } else if magic(&[0x5d, 0, 0]) {
        return Err(BzImageError::Compression("lzma"));
    } else if magic(&[0x89, b'L', b'Z', b'O']) {
        return Err(BzImageError::Compression("lzo"));
    } else {
        return Err(BzImageError::Compression("unknown"));
    }
    if out.len() > MAX_KERNEL {
        return Err(BzImageError::TooBig(MAX_KERNEL));
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

    #[test]
    fn bad_images_are_refused_with_a_reason() {
        let zstd = bzimage(&[0x28, 0xb5, 0x2f, 0xfd, 1, 2]);
        assert_eq!(unpack(&zstd), Err(BzImageError::Compression("zstd")));
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

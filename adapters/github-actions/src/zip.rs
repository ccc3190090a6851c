//! Just enough of the zip format to read one small file from an artifact: the central
//! directory names the entry, the local header gives where its data starts, and the data
//! is stored or deflated (the two methods GitHub's artifact zips use). The CRC is checked.
//! Format: PKWARE's APPNOTE.TXT, sections 4.3.7 (local header), 4.3.12 (central directory
//! header) and 4.3.16 (end of central directory).

/// Why an entry could not be read.
pub(crate) type ZipError = String;

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    b.get(at..at + 2).map(|s| u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// The contents of the entry named `name`, at most `cap` bytes once inflated; `Ok(None)`
/// when the archive has no such entry.
pub(crate) fn read_entry(zip: &[u8], name: &str, cap: usize) -> Result<Option<Vec<u8>>, ZipError> {
    const EOCD: u32 = 0x0605_4b50;
    const CENTRAL: u32 = 0x0201_4b50;
    const LOCAL: u32 = 0x0403_4b50;
    // The end record is the last 22 bytes, or earlier by the length of a comment.
    let eocd = (0..zip.len().saturating_sub(21))
        .rev()
        .take(22 + 65_535)
        .find(|&at| u32_at(zip, at) == Some(EOCD))
        .ok_or("not a zip archive (no end of central directory)")?;
    let entries = u16_at(zip, eocd + 10).ok_or("truncated end record")? as usize;
    let mut at = u32_at(zip, eocd + 16).ok_or("truncated end record")? as usize;
    for _ in 0..entries {
        if u32_at(zip, at) != Some(CENTRAL) {
            return Err("a damaged central directory".into());
        }
        let field = |off: usize| {
            u16_at(zip, at + off)
                .map(usize::from)
                .ok_or("truncated central directory")
        };
        let method = field(10)?;
        let crc = u32_at(zip, at + 16).ok_or("truncated central directory")?;
        let packed = u32_at(zip, at + 20).ok_or("truncated central directory")? as usize;
        let size = u32_at(zip, at + 24).ok_or("truncated central directory")? as usize;
        let (name_len, extra_len, comment_len) = (field(28)?, field(30)?, field(32)?);
        let local = u32_at(zip, at + 42).ok_or("truncated central directory")? as usize;
        let entry_name = zip
            .get(at + 46..at + 46 + name_len)
            .ok_or("truncated entry name")?;
        at += 46 + name_len + extra_len + comment_len;
        if entry_name != name.as_bytes() {
            continue;
        }
        if size > cap {
            return Err(format!(
                "`{name}` is {size} bytes, more than the {cap} baton reads"
            ));
        }
        if u32_at(zip, local) != Some(LOCAL) {
            return Err(format!("`{name}` has a damaged local header"));
        }
        let start = local
            + 30
            + u16_at(zip, local + 26).unwrap_or(0) as usize
            + u16_at(zip, local + 28).unwrap_or(0) as usize;
        let data = zip
            .get(start..start + packed)
            .ok_or_else(|| format!("`{name}` is cut short"))?;
        let bytes = match method {
            0 => data.to_vec(),
            8 => miniz_oxide::inflate::decompress_to_vec_with_limit(data, cap)
                .map_err(|e| format!("`{name}` does not inflate: {e:?}"))?,
            m => {
                return Err(format!(
                    "`{name}` is compressed with method {m}; baton reads stored and deflated entries"
                ));
            }
        };
        if bytes.len() != size || crc32fast::hash(&bytes) != crc {
            return Err(format!("`{name}` fails its size or CRC check"));
        }
        return Ok(Some(bytes));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_and_deflated_entries_read_back() {
        let text = br#"{"version": "1.2.3", "image": "reg/app@sha256:ab"}"#;
        {
            let z = baton_forge_fakes::github::zip_archive(&[("outputs.json", text)]);
            assert_eq!(
                read_entry(&z, "outputs.json", 1024).unwrap().as_deref(),
                Some(&text[..])
            );
            assert_eq!(read_entry(&z, "other.json", 1024).unwrap(), None);
            assert!(read_entry(&z, "outputs.json", 10).is_err());
        }
        let mut bad = baton_forge_fakes::github::zip_archive(&[("outputs.json", text)]);
        let at = 30 + "outputs.json".len() + 2;
        bad[at] ^= 0x55;
        assert!(read_entry(&bad, "outputs.json", 1024).is_err());
        assert!(read_entry(b"garbage", "outputs.json", 1024).is_err());
        assert!(read_entry(&[], "outputs.json", 1024).is_err());
    }
}

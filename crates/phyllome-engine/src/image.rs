//! Screenshot conversion: QEMU hands libvirt PPM or PNG depending on its
//! version; Phyllome always saves PNG.

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("not a binary PPM (P6) image")]
    NotPpm,
    #[error("PNG encoding failed: {0}")]
    Png(#[from] png::EncodingError),
}

impl crate::errors::Classify for ImageError {
    fn kind(&self) -> crate::errors::ErrorKind {
        crate::errors::ErrorKind::Failed
    }
}

/// Converts a binary PPM (P6, 8-bit) to PNG.
pub fn ppm_to_png(ppm: &[u8]) -> Result<Vec<u8>, ImageError> {
    if !ppm.starts_with(b"P6") {
        return Err(ImageError::NotPpm);
    }
    // Header: P6 <width> <height> <maxval>, whitespace separated, then one whitespace byte.
    let mut fields = Vec::new();
    let mut i = 2;
    while fields.len() < 3 {
        while i < ppm.len() && ppm[i].is_ascii_whitespace() {
            i += 1;
        }
        if i < ppm.len() && ppm[i] == b'#' {
            while i < ppm.len() && ppm[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        let start = i;
        while i < ppm.len() && ppm[i].is_ascii_digit() {
            i += 1;
        }
        let n: u32 = std::str::from_utf8(&ppm[start..i]).ok().and_then(|s| s.parse().ok()).ok_or(ImageError::NotPpm)?;
        fields.push(n);
    }
    let (w, h, max) = (fields[0], fields[1], fields[2]);
    let pixels = ppm.get(i + 1..i + 1 + (w * h * 3) as usize).ok_or(ImageError::NotPpm)?;
    if max != 255 {
        return Err(ImageError::NotPpm);
    }
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header()?;
        writer.write_image_data(pixels)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_a_tiny_ppm() {
        let mut ppm = b"P6\n# c\n2 1\n255\n".to_vec();
        ppm.extend_from_slice(&[255, 0, 0, 0, 255, 0]);
        let png = ppm_to_png(&ppm).unwrap();
        assert!(png.starts_with(b"\x89PNG"));
        assert!(matches!(ppm_to_png(b"P3 1 1 255 0 0 0"), Err(ImageError::NotPpm)));
        assert!(matches!(ppm_to_png(b"P6 2 2 255\n\x00"), Err(ImageError::NotPpm)));
    }
}

//! A compact byte encoding for rows kept in shared memory: fields written in order, integers
//! little-endian, strings and byte strings length-prefixed. A reader that runs out of bytes or
//! meets a bad length answers None, and the caller treats the entry as absent.

#[derive(Default)]
pub struct Writer(Vec<u8>);

impl Writer {
    pub fn new() -> Self {
        Writer(Vec::with_capacity(192))
    }

    pub fn finish(self) -> Vec<u8> {
        self.0
    }

    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }

    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.u8(v as u8)
    }

    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn i64(&mut self, v: i64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.u32(v.len() as u32);
        self.0.extend_from_slice(v);
        self
    }

    pub fn str(&mut self, v: &str) -> &mut Self {
        self.bytes(v.as_bytes())
    }

    /// A presence flag, then the value if present.
    pub fn opt<T>(&mut self, v: Option<T>, mut put: impl FnMut(&mut Self, T)) -> &mut Self {
        self.bool(v.is_some());
        if let Some(v) = v {
            put(self, v);
        }
        self
    }
}

pub struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader(bytes)
    }

    /// Were all bytes read? A decoder checks it last: trailing bytes mean a different layout.
    pub fn is_done(&self) -> bool {
        self.0.is_empty()
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    pub fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    pub fn bool(&mut self) -> Option<bool> {
        match self.u8()? {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }

    pub fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }

    pub fn i64(&mut self) -> Option<i64> {
        self.take(8)
            .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    pub fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    pub fn str(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.bytes()?).ok()
    }

    /// The value if its presence flag says so: Some(None) for absent, None for bad input.
    pub fn opt<T>(&mut self, get: impl FnOnce(&mut Self) -> Option<T>) -> Option<Option<T>> {
        if self.bool()? {
            get(self).map(Some)
        } else {
            Some(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_truncation_fails_cleanly() {
        let mut w = Writer::new();
        w.u8(7)
            .bool(true)
            .u32(0xdead_beef)
            .i64(-5)
            .str("owner ü")
            .bytes(&[0, 1, 2]);
        w.opt(Some(9i64), |w, v| {
            w.i64(v);
        });
        w.opt(None::<i64>, |w, v| {
            w.i64(v);
        });
        let bytes = w.finish();
        let read = |b: &[u8]| {
            let mut r = Reader::new(b);
            let v = (
                r.u8()?,
                r.bool()?,
                r.u32()?,
                r.i64()?,
                r.str()?.to_owned(),
                r.bytes()?.to_vec(),
                r.opt(|r| r.i64())?,
                r.opt(|r| r.i64())?,
            );
            r.is_done().then_some(v)
        };
        assert_eq!(
            read(&bytes),
            Some((
                7,
                true,
                0xdead_beef,
                -5,
                "owner ü".to_owned(),
                vec![0, 1, 2],
                Some(9),
                None
            ))
        );
        for cut in 0..bytes.len() {
            assert_eq!(read(&bytes[..cut]), None, "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(read(&longer), None);
    }

    #[test]
    fn bad_flags_lengths_and_utf8_are_refused() {
        assert_eq!(Reader::new(&[2]).bool(), None);
        assert_eq!(Reader::new(&[255, 255, 255, 255, 1]).bytes(), None);
        assert_eq!(Reader::new(&[2, 0, 0, 0, 0xff, 0xfe]).str(), None);
    }
}

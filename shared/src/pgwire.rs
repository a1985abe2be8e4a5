//! What a PostgreSQL server asks for before the password is sent: the
//! authentication requests in the first bytes it writes, read as they
//! arrive, so a connection without TLS can be cut before a password is
//! sent in clear to a server that asked for one.
//!
//! The server's messages are a type byte, a 4-byte big-endian length
//! (itself included) and a body; an authentication request is type `R`
//! whose body starts with a 4-byte code: 0 done, 3 a cleartext password,
//! 5 an MD5 hash, 10 SASL (SCRAM).

/// What the server asked for that must not be answered without TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `AuthenticationCleartextPassword` (code 3).
    CleartextPassword,
}

/// Reads the server's side of a connection until authentication is over.
#[derive(Debug, Default, Clone)]
pub struct AuthWatch {
    /// The current message's header and the first 4 bytes of its body.
    head: Vec<u8>,
    /// Bytes of the current message's body still to skip.
    skip: usize,
    /// Authentication succeeded (`R` code 0) or the server sent something
    /// else than an authentication step: nothing more to watch.
    done: bool,
}

impl AuthWatch {
    /// Reads `bytes`, the next ones the server sent; `Err` as soon as it
    /// asks for something refused.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), Refusal> {
        while !self.done && !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let want = 9 - self.head.len();
            let n = want.min(bytes.len());
            self.head.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            // Anything but an authentication request (an error, which ends
            // the connection, or the session's own messages) ends the watch.
            if self.head[0] != b'R' {
                self.done = true;
                continue;
            }
            if self.head.len() < 9 {
                continue;
            }
            let length = u32::from_be_bytes([self.head[1], self.head[2], self.head[3], self.head[4]]) as usize;
            let code = u32::from_be_bytes([self.head[5], self.head[6], self.head[7], self.head[8]]);
            match code {
                3 => return Err(Refusal::CleartextPassword),
                0 => self.done = true,
                _ => {}
            }
            self.skip = length.saturating_sub(8);
            self.head.clear();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(code: u32, extra: &[u8]) -> Vec<u8> {
        let mut m = vec![b'R'];
        m.extend_from_slice(&(8 + extra.len() as u32).to_be_bytes());
        m.extend_from_slice(&code.to_be_bytes());
        m.extend_from_slice(extra);
        m
    }

    #[test]
    fn a_cleartext_request_is_refused_however_the_bytes_arrive() {
        let bytes = auth(3, &[]);
        for split in 0..bytes.len() {
            let mut w = AuthWatch::default();
            let first = w.feed(&bytes[..split]);
            assert_eq!(first.and_then(|()| w.feed(&bytes[split..])), Err(Refusal::CleartextPassword), "split {split}");
        }
    }

    #[test]
    fn md5_and_scram_go_through_and_nothing_is_read_after_authentication() {
        let mut w = AuthWatch::default();
        assert_eq!(w.feed(&auth(5, b"salt")), Ok(()));
        let mut sasl = auth(10, b"SCRAM-SHA-256\0\0");
        sasl.extend(auth(11, b"r=abc,s=xyz,i=4096"));
        sasl.extend(auth(12, b"v=sig"));
        sasl.extend(auth(0, &[]));
        assert_eq!(AuthWatch::default().feed(&sasl), Ok(()));
        // After `R` 0, the rest of the stream is the session's own.
        let mut after = auth(0, &[]);
        after.extend(auth(3, &[]));
        assert_eq!(AuthWatch::default().feed(&after), Ok(()));
    }

    #[test]
    fn an_error_instead_of_a_request_ends_the_watch() {
        let mut w = AuthWatch::default();
        let mut bytes = vec![b'E', 0, 0, 0, 6, b'S', 0];
        bytes.extend(auth(3, &[]));
        assert_eq!(w.feed(&bytes), Ok(()));
    }
}

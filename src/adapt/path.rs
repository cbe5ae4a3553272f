//! The JSON path of a request field the gateway refuses (`$.messages[2].content[0].type`),
//! for the `param` of the 400 answer.
//!
//! A translator that refuses a value returns [`Invalid`] and every level it passes on the way
//! out puts its own step in front ([`Invalid::at`] and friends), so a request that is accepted
//! costs nothing here. The path is written into a buffer the request owns.

/// Why a request cannot be sent on: answered `400 invalid_request_error` with this message,
/// and the path of the field in the error's `param`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invalid {
    pub message: &'static str,
}

/// One step of a path.
#[derive(Debug, Clone, Copy)]
pub enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

/// Puts `seg` in front of `path`.
pub fn prepend(path: &mut String, seg: Seg<'_>) {
    match seg {
        Seg::Key(k) if is_ident(k) => {
            path.insert_str(0, k);
            path.insert(0, '.');
        }
        Seg::Key(k) => {
            path.insert_str(0, "']");
            for c in k.chars().rev() {
                path.insert(0, c);
                if c == '\'' || c == '\\' {
                    path.insert(0, '\\');
                }
            }
            path.insert_str(0, "['");
        }
        Seg::Index(i) => {
            path.insert(0, ']');
            let mut n = i;
            loop {
                path.insert(0, char::from(b'0' + (n % 10) as u8));
                n /= 10;
                if n == 0 {
                    break;
                }
            }
            path.insert(0, '[');
        }
    }
}

/// Finishes a path: the root `$` in front.
pub fn root(path: &mut String) {
    path.insert(0, '$');
}

fn is_ident(k: &str) -> bool {
    let mut chars = k.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Adds `seg` in front of the error's path on the way out.
pub trait At<T> {
    fn at(self, seg: Seg<'_>, path: &mut String) -> Result<T, Invalid>;
    fn key(self, key: &str, path: &mut String) -> Result<T, Invalid>;
    fn index(self, i: usize, path: &mut String) -> Result<T, Invalid>;
}

impl<T> At<T> for Result<T, Invalid> {
    #[inline]
    fn at(self, seg: Seg<'_>, path: &mut String) -> Result<T, Invalid> {
        if self.is_err() {
            prepend(path, seg);
        }
        self
    }
    #[inline]
    fn key(self, key: &str, path: &mut String) -> Result<T, Invalid> {
        self.at(Seg::Key(key), path)
    }
    #[inline]
    fn index(self, i: usize, path: &mut String) -> Result<T, Invalid> {
        self.at(Seg::Index(i), path)
    }
}

/// `Err(Invalid { message })`.
pub fn invalid<T>(message: &'static str) -> Result<T, Invalid> {
    Err(Invalid { message })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_read_as_json_paths() {
        let mut p = String::new();
        let r: Result<(), Invalid> = invalid("x");
        let _ = r
            .key("type", &mut p)
            .index(0, &mut p)
            .key("content", &mut p)
            .index(12, &mut p)
            .key("messages", &mut p)
            .key("odd key's", &mut p);
        root(&mut p);
        assert_eq!(p, r"$['odd key\'s'].messages[12].content[0].type");
        let mut p = String::new();
        let ok: Result<(), Invalid> = Ok(());
        let _ = ok.key("a", &mut p);
        assert!(p.is_empty());
    }
}

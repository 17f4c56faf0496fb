//! Layered configuration: defaults, then a TOML file, then `VETO_*`
//! variables and flags (clap puts each variable under its flag).

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// A configuration that cannot be used; the message names the file or
/// the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// Path given.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML for these settings.
    #[error("config file {path}: {source}")]
    Parse {
        /// Path given.
        path: PathBuf,
        /// Cause.
        source: Box<toml::de::Error>,
    },
    /// A value is missing or out of range.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The text of a file the configuration names.
pub fn read_text(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// The settings in `path`, or the defaults when no file is given.
pub fn read_toml<T: DeserializeOwned + Default>(path: Option<&Path>) -> Result<T, ConfigError> {
    let Some(path) = path else {
        return Ok(T::default());
    };
    toml::from_str(&read_text(path)?).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        source: Box::new(e),
    })
}

/// Replaces `dst` with the flag's value when the flag (or its variable)
/// was given.
pub fn overlay<T: Clone>(dst: &mut T, flag: &Option<T>) {
    if let Some(v) = flag {
        *dst = v.clone();
    }
}

/// The transport flags every veto process takes. Each also reads its
/// `VETO_*` variable; both override the TOML file's `tls` and `insecure`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsFlags {
    /// CA certificate (PEM) that signs every veto certificate.
    #[arg(long = "tls-ca", env = "VETO_TLS_CA")]
    pub ca: Option<PathBuf>,
    /// This process's certificate (PEM; role `server` for veto-server,
    /// `edge` with CN = the edge id for veto-edge).
    #[arg(long = "tls-cert", env = "VETO_TLS_CERT")]
    pub cert: Option<PathBuf>,
    /// This process's private key (PEM).
    #[arg(long = "tls-key", env = "VETO_TLS_KEY")]
    pub key: Option<PathBuf>,
    /// Plaintext with no client authentication: local demos and tests
    /// only (a warning is logged).
    #[arg(long, env = "VETO_INSECURE", value_parser = clap::builder::BoolishValueParser::new())]
    pub insecure: bool,
}

impl TlsFlags {
    /// Overlays these flags on the file's settings, each path alone;
    /// `--insecure` can only turn plaintext on.
    pub fn overlay(&self, tls: &mut veto_auth::TlsFiles, insecure: &mut bool) {
        for (d, s) in [
            (&mut tls.ca, &self.ca),
            (&mut tls.cert, &self.cert),
            (&mut tls.key, &self.key),
        ] {
            if s.is_some() {
                *d = s.clone();
            }
        }
        *insecure |= self.insecure;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct S {
        a: u32,
        b: String,
    }

    #[test]
    fn file_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "a = 3\nb = \"x\"\n").unwrap();
        let mut s: S = read_toml(Some(&p)).unwrap();
        assert_eq!(
            s,
            S {
                a: 3,
                b: "x".into()
            }
        );
        overlay(&mut s.a, &Some(7));
        overlay(&mut s.b, &None);
        assert_eq!(
            s,
            S {
                a: 7,
                b: "x".into()
            }
        );
        assert_eq!(read_toml::<S>(None).unwrap(), S::default());
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.toml");
        std::fs::write(&p, "c = 1\n").unwrap();
        let e = read_toml::<S>(Some(&p)).unwrap_err();
        assert!(matches!(e, ConfigError::Parse { .. }));
        assert!(e.to_string().contains("bad.toml"));
        let missing = dir.path().join("none.toml");
        assert!(matches!(
            read_toml::<S>(Some(&missing)),
            Err(ConfigError::Read { .. })
        ));
    }

    #[test]
    fn tls_paths_overlay_one_by_one() {
        let mut t = veto_auth::TlsFiles {
            ca: Some("a".into()),
            cert: Some("b".into()),
            key: None,
        };
        let flags = TlsFlags {
            cert: Some("c".into()),
            key: Some("k".into()),
            ..TlsFlags::default()
        };
        let mut insecure = true;
        flags.overlay(&mut t, &mut insecure);
        assert_eq!(t.ca, Some(PathBuf::from("a")));
        assert_eq!(t.cert, Some(PathBuf::from("c")));
        assert_eq!(t.key, Some(PathBuf::from("k")));
        assert!(insecure, "a file's insecure = true stays without the flag");
    }
}

//! What keeps secrets out of a debug dump, applied to every entry after it is gathered: PEM
//! private key blocks removed, the credentials of any `scheme://user:password@host` URL and
//! the site's known secrets (its links' proxy passwords, its grant codes) replaced by
//! `<redacted>`. The parts are built without secrets in the first place; this is the second
//! line, for words a log line or a status answer might carry.

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use skiff_site_controller::folder::SiteFolder;

/// Shorter known secrets are not replaced everywhere (a 3-letter password would garble every
/// word holding those letters); URLs carrying them are still redacted by their form.
const MIN_SECRET_LEN: usize = 6;

/// The replacement text.
const REDACTED: &str = "<redacted>";

/// The secrets of one site folder, to scrub from a dump.
pub struct Redactor {
    secrets: Vec<String>,
}

impl Redactor {
    /// The proxy passwords (as written and percent-decoded) of the folder's links, and its
    /// grant codes. A folder that cannot be read gives none: the parts are built without
    /// secrets anyway.
    /// `read_links`, `read_grants`: false when that folder holds a file the dump refuses to
    /// read.
    pub fn from_folder(folder: &SiteFolder, read_links: bool, read_grants: bool) -> Redactor {
        let mut secrets = Vec::new();
        if read_links && let Ok(links) = skiff_site_controller::site::list_links(folder) {
            for (l, _) in links {
                if let Some(url) = &l.spec.proxy
                    && let Some((_, password)) = userinfo(url).and_then(|u| u.split_once(':'))
                {
                    secrets.push(password.to_string());
                    secrets.push(percent_decode(password));
                }
            }
        }
        if read_grants && let Ok(grants) = skiff_site_controller::site::list_grants(folder) {
            secrets.extend(grants.into_iter().map(|g| g.spec.code));
        }
        secrets.retain(|s| s.len() >= MIN_SECRET_LEN);
        secrets.sort();
        secrets.dedup();
        // Longest first, so a secret holding another is replaced whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Redactor { secrets }
    }

    /// Scrubs one entry in place. Binary entries (not UTF-8) are replaced by a note: a dump
    /// holds text only.
    pub fn scrub(&self, name: &str, bytes: &mut Vec<u8>) {
        let Ok(text) = std::str::from_utf8(bytes) else {
            *bytes = format!("({name} was not text and is left out)\n").into_bytes();
            return;
        };
        let mut text = remove_private_keys(text);
        text = redact_url_credentials(&text);
        for s in &self.secrets {
            if text.contains(s.as_str()) {
                text = text.replace(s.as_str(), REDACTED);
            }
        }
        *bytes = text.into_bytes();
    }
}

/// `user:password` of `scheme://user:password@host...`, if any: everything between `://` and
/// the LAST `@` of the value. A password with an unescaped `/`, `?`, `#` or `@` (a URL the
/// link refuses, and so one a user makes a dump about) is still taken whole.
fn userinfo(url: &str) -> Option<&str> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.rsplit_once('@').map(|(u, _)| u)
}

/// How `user:password` is shown: the user kept, the rest replaced; a user alone (it may be a
/// token), or one with characters no user name holds, is replaced whole.
fn shown_userinfo(info: &str) -> String {
    match info.split_once(':') {
        Some((user, _)) if !user.contains(['/', '?', '#']) => format!("{user}:{REDACTED}"),
        _ => REDACTED.to_string(),
    }
}

/// A proxy URL as a dump shows it: `http://user:<redacted>@host:port` (a user alone is
/// replaced whole: it may be a token).
pub fn proxy_url(url: &str) -> String {
    let Some(info) = userinfo(url) else {
        return url.to_string();
    };
    url.replacen(
        &format!("{info}@"),
        &format!("{}@", shown_userinfo(info)),
        1,
    )
}

/// Every `scheme://user:password@` in the text with the password replaced. The URL runs to
/// the first space or quote-like character, and everything up to its LAST `@` counts as
/// credentials, so a password holding an unescaped `/`, `?` or `#` is replaced whole (a path
/// holding `@` is replaced too: a dump rather shows too little than a password).
fn redact_url_credentials(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (before, after) = rest.split_at(i + 3);
        out.push_str(before);
        let end = after
            .find(|c: char| c.is_whitespace() || "\"'<>`,;)]}".contains(c))
            .unwrap_or(after.len());
        let url = &after[..end];
        match url.rsplit_once('@') {
            Some((info, host)) => {
                let shown = match info.split_once(':') {
                    Some((user, pw)) if pw == REDACTED => format!("{user}:{pw}"),
                    _ if info == REDACTED => info.to_string(),
                    _ => shown_userinfo(info),
                };
                out.push_str(&format!("{shown}@{host}"));
            }
            None => out.push_str(url),
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// The text with every `-----BEGIN ... PRIVATE KEY-----` block (to its END line, or to the
/// end of the text) replaced by a note.
fn remove_private_keys(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("-----BEGIN") {
        let line_end = rest[i..].find('\n').map_or(rest.len(), |n| i + n);
        if !rest[i..line_end].contains("PRIVATE KEY") {
            out.push_str(&rest[..line_end]);
            rest = &rest[line_end..];
            continue;
        }
        out.push_str(&rest[..i]);
        out.push_str("<private key removed>");
        let after = &rest[i..];
        rest = match after.find("-----END") {
            Some(e) => {
                let tail = &after[e..];
                // Past the END line's closing dashes.
                let close = tail[8..].find("-----").map_or(tail.len(), |c| 8 + c + 5);
                &tail[close..]
            }
            None => "",
        };
    }
    out.push_str(rest);
    out
}

/// `%41` → `A`; anything malformed stays as it is.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(hex) = std::str::from_utf8(&b[i + 1..i + 3])
            && let Ok(v) = u8::from_str_radix(hex, 16)
        {
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The folder's files, by name, type, mode and size (never their contents): enough to spot a
/// wrong owner or mode. Its subfolders are listed one level down.
pub fn file_listing(folder: &SiteFolder) -> String {
    use std::os::unix::fs::FileTypeExt;
    const MAX_ENTRIES: usize = 2000;
    let root = folder.root();
    let mut lines: Vec<(String, String)> = Vec::new();
    let mut dirs = vec![(root.to_path_buf(), 0)];
    let mut more = false;
    while let Some((dir, depth)) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            let rel = dir.strip_prefix(root).unwrap_or(&dir).display().to_string();
            lines.push((rel.clone(), format!("?    {rel}/: cannot be listed")));
            continue;
        };
        for e in entries.flatten() {
            if lines.len() >= MAX_ENTRIES {
                more = true;
                break;
            }
            let path = e.path();
            let rel = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .display()
                .to_string();
            let line = match std::fs::symlink_metadata(&path) {
                Ok(m) => {
                    let t = m.file_type();
                    let kind = if t.is_dir() {
                        "dir "
                    } else if t.is_symlink() {
                        "link"
                    } else if t.is_socket() {
                        "sock"
                    } else if t.is_file() {
                        "file"
                    } else {
                        "othr"
                    };
                    if t.is_dir() && depth == 0 {
                        dirs.push((path.clone(), depth + 1));
                    }
                    format!(
                        "{kind} {:04o} uid {:<6} {:>9}  {rel}",
                        m.permissions().mode() & 0o7777,
                        m.uid(),
                        m.len()
                    )
                }
                Err(err) => format!("?    {rel}: {err}"),
            };
            lines.push((rel, line));
        }
    }
    lines.sort();
    let mut out =
        String::from("# the site folder's files (names only; contents are not in this dump)\n");
    for (_, line) in lines {
        out.push_str(&line);
        out.push('\n');
    }
    if more {
        out.push_str(&format!(
            "... (more than {MAX_ENTRIES} entries: the rest is left out)\n"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_passwords_are_replaced_and_users_kept() {
        assert_eq!(
            proxy_url("http://alice:s3cret@10.0.0.1:3128"),
            "http://alice:<redacted>@10.0.0.1:3128"
        );
        assert_eq!(proxy_url("http://tok@h:1"), "http://<redacted>@h:1");
        assert_eq!(proxy_url("http://h:1"), "http://h:1");
    }

    #[test]
    fn url_credentials_anywhere_in_text_are_redacted() {
        let t = "dial via http://bob:pa%40ss@proxy:3128/x and \"https://h/a\" ok";
        assert_eq!(
            redact_url_credentials(t),
            "dial via http://bob:<redacted>@proxy:3128/x and \"https://h/a\" ok"
        );
        // Already redacted text stays as it is.
        let done = "http://bob:<redacted>@proxy:3128";
        assert_eq!(redact_url_credentials(done), done);
    }

    #[test]
    fn passwords_with_slash_question_mark_or_hash_are_redacted_whole() {
        for pw in [
            "Sup3r/Secret9",
            "Sup3r?Secret9",
            "Sup3r#Secret9",
            "a/b?c#d@e",
        ] {
            let url = format!("http://bob:{pw}@proxy.example:3128");
            let shown = proxy_url(&url);
            assert_eq!(shown, "http://bob:<redacted>@proxy.example:3128", "{url}");
            let text = format!("links:\n  proxy: {url}\nlog: dial via {url} failed\n");
            let out = redact_url_credentials(&text);
            assert!(!out.contains("Secret9") && !out.contains("c#d"), "{out}");
            assert!(out.contains("bob:<redacted>@proxy.example:3128"), "{out}");
            assert_eq!(
                userinfo(&url).and_then(|u| u.split_once(':')).unwrap().1,
                pw
            );
        }
        // A user name holding `/` is no user name: replaced whole.
        assert_eq!(proxy_url("http://to/ken@h:1"), "http://<redacted>@h:1");
    }

    #[test]
    fn private_key_blocks_are_removed_and_certificates_kept() {
        let t = "a\n-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n\
                 -----BEGIN PRIVATE KEY-----\nMIGH\n-----END PRIVATE KEY-----\nb\n\
                 -----BEGIN EC PRIVATE KEY-----\nunterminated";
        let out = remove_private_keys(t);
        assert_eq!(
            out,
            "a\n-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n\
             <private key removed>\nb\n<private key removed>"
        );
    }

    #[test]
    fn known_secrets_are_replaced_everywhere_but_short_ones_are_not() {
        let r = Redactor {
            secrets: vec!["grant-code-123".into()],
        };
        let mut b = b"code grant-code-123 used".to_vec();
        r.scrub("x", &mut b);
        assert_eq!(b, b"code <redacted> used");
        assert_eq!(percent_decode("p%40ss%zz"), "p@ss%zz");
    }
}

//! Which RabbitMQ nodes to use: one URL (`amqp_url`) or the nodes of a cluster (`amqp_urls`),
//! validated the same way by the coordinator and the agent, and the order in which a client
//! that lost its connection tries them again.
//!
//! Every URL of a list must name the same virtual host (the cluster's queues live there) and a
//! different node; passwords never appear in messages or logs ([`redact`]).

/// Validates the configured broker URLs: `single` (`amqp_url`) or `list` (`amqp_urls`), at most
/// one of them; neither gives `[default]`. Errors name the key and show the URL redacted.
pub fn resolve_urls(
    single: Option<String>,
    list: Option<Vec<String>>,
    default: &str,
) -> Result<Vec<String>, String> {
    let (key, urls) =
        match (single, list) {
            (Some(_), Some(_)) => return Err(
                "set either amqp_url (one broker) or amqp_urls (the nodes of a cluster), not both"
                    .into(),
            ),
            (Some(u), None) => ("amqp_url", vec![u]),
            (None, Some(l)) => ("amqp_urls", l),
            (None, None) => ("amqp_url", vec![default.to_string()]),
        };
    if urls.is_empty() {
        return Err("amqp_urls is empty: list at least one broker URL".into());
    }
    let mut seen: Vec<String> = Vec::new();
    let mut vhost: Option<String> = None;
    for (i, url) in urls.iter().enumerate() {
        let name = if key == "amqp_urls" {
            format!("amqp_urls[{i}]")
        } else {
            key.to_string()
        };
        let parsed = parse(url).map_err(|e| format!("{name} = {:?}: {e}", redact(url)))?;
        let node = parsed.node();
        if let Some(j) = seen.iter().position(|n| *n == node) {
            return Err(format!(
                "amqp_urls[{i}] = {:?} names the same node ({node}) as amqp_urls[{j}]",
                redact(url),
            ));
        }
        match &vhost {
            Some(v) if *v != parsed.vhost => {
                return Err(format!(
                    "amqp_urls[{i}] = {:?} names virtual host {:?}, amqp_urls[0] names {v:?}: every node of the list must serve the same virtual host",
                    redact(url),
                    parsed.vhost
                ))
            }
            Some(_) => {}
            None => vhost = Some(parsed.vhost),
        }
        seen.push(node);
    }
    Ok(urls)
}

/// The parts of an AMQP URL that validation compares.
#[derive(Debug, PartialEq, Eq)]
struct Parsed {
    host: String,
    port: u16,
    vhost: String,
}

impl Parsed {
    fn node(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Checks the shape of an AMQP URI (`amqp[s]://[user[:password]@]host[:port][/vhost][?query]`,
/// RabbitMQ's URI specification) and returns host, port and the decoded virtual host.
fn parse(url: &str) -> Result<Parsed, String> {
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("contains white space or control characters".into());
    }
    let (scheme, rest) = url
        .split_once("://")
        .ok_or("must start with amqp:// or amqps://")?;
    let default_port = match scheme {
        "amqp" => 5672,
        "amqps" => 5671,
        _ => return Err("must start with amqp:// or amqps://".into()),
    };
    let (before_query, _query) = rest.split_once('?').unwrap_or((rest, ""));
    if before_query.contains('#') {
        return Err("must not contain a fragment (#)".into());
    }
    let (authority, path) = match before_query.find('/') {
        Some(i) => (&before_query[..i], Some(&before_query[i + 1..])),
        None => (before_query, None),
    };
    if !authority.contains('@') && path.is_some_and(|p| p.contains('@')) {
        if let Some((_, after)) = authority.split_once(':') {
            if !after.bytes().all(|c| c.is_ascii_digit()) {
                return Err(
                    "has a '/' before its '@': write a '/' in the user name or password as %2F"
                        .into(),
                );
            }
        }
    }
    let host_port = match authority.rsplit_once('@') {
        Some((userinfo, hp)) => {
            if userinfo.is_empty() {
                return Err("has an empty user name before '@'".into());
            }
            decode(userinfo).map_err(|e| format!("user or password: {e}"))?;
            hp
        }
        None => authority,
    };
    if let Some(v6) = host_port.strip_prefix('[') {
        // The AMQP client's URI parser takes the host from `Url::domain`, which is empty for
        // an IPv6 literal: it would silently connect to `localhost` instead.
        let h = v6.split_once(']').map_or(v6, |(h, _)| h);
        return Err(format!(
            "IPv6 address literals are not supported by the AMQP client; use a host name for [{h}]"
        ));
    }
    let (host, port) = match host_port.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (host_port, None),
    };
    if host.is_empty() {
        return Err("has no host".into());
    }
    if !host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        return Err(format!("host {host:?} is not a host name or IPv4 address"));
    }
    let port = match port {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => return Err("port is not a number 1–65535".into()),
        },
    };
    let vhost = match path {
        // RabbitMQ's URI spec: no path is the default virtual host "/".
        None => "/".to_string(),
        Some(p) => {
            if p.contains('/') {
                return Err(
                    "the virtual host must be one path segment; write '/' inside it as %2f".into(),
                );
            }
            decode(p).map_err(|e| format!("virtual host: {e}"))?
        }
    };
    Ok(Parsed {
        host: host.to_ascii_lowercase(),
        port,
        vhost,
    })
}

/// Percent-decodes `s`; refuses malformed escapes and non-UTF-8 results.
fn decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("malformed %-escape")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "%-escapes do not decode to UTF-8".to_string())
}

/// Replaces the password of an AMQP (or any) URL with `***`, for logs and messages.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let at = rest[..authority_end].rfind('@').or_else(|| {
        // A password with an unescaped '/' ("user:pa/ss@host") ends the authority early; the
        // URL is invalid, and its message must not show the password either.
        let first_at = rest.find('@')?;
        let colon = rest[..authority_end].find(':')?;
        let after_colon = &rest[colon + 1..authority_end];
        let is_port = !after_colon.is_empty() && after_colon.bytes().all(|c| c.is_ascii_digit());
        (!is_port).then_some(first_at)
    });
    match at {
        Some(at) => {
            let creds = &rest[..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{scheme}://{user}:***@{}", &rest[at + 1..]),
                None => url.to_string(),
            }
        }
        None => url.to_string(),
    }
}

/// [`redact`] of every URL, comma-separated.
pub fn redact_all(urls: &[String]) -> String {
    urls.iter()
        .map(|u| redact(u))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The order in which a client tries the nodes. A client stays with the node it is connected
/// to (the first of the list that answered) while that node works — a session that ends with
/// the connection still up, say a refused declare, reconnects to the same node. When the
/// connection itself was lost ([`Failover::lost`]), the next round starts with the node after
/// it, round the list, so the client goes to the next node at once instead of waiting for the
/// lost one first. A single URL is simply tried again.
#[derive(Clone, Debug)]
pub struct Failover {
    urls: Vec<String>,
    next: usize,
}

impl Failover {
    /// `urls` must not be empty (configurations are validated by [`resolve_urls`]).
    pub fn new(urls: Vec<String>) -> Failover {
        assert!(!urls.is_empty(), "at least one broker URL");
        Failover { urls, next: 0 }
    }

    /// The URLs of one connection attempt round, with their index in the list.
    pub fn round(&self) -> Vec<(usize, String)> {
        let n = self.urls.len();
        (0..n)
            .map(|k| {
                let i = (self.next + k) % n;
                (i, self.urls[i].clone())
            })
            .collect()
    }

    /// Records that node `i` accepted the connection: the next round starts with it again.
    pub fn connected(&mut self, i: usize) {
        self.next = i % self.urls.len();
    }

    /// Records that the connection to the current node was lost: the next round starts with
    /// the node after it.
    pub fn lost(&mut self) {
        self.next = (self.next + 1) % self.urls.len();
    }

    pub fn len(&self) -> usize {
        self.urls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.urls.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

    fn list(v: &[&str]) -> Option<Vec<String>> {
        Some(v.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn one_url_a_list_or_the_default() {
        assert_eq!(resolve_urls(None, None, D).expect("default"), vec![D]);
        assert_eq!(
            resolve_urls(Some("amqp://b:5673/x".into()), None, D).expect("one"),
            vec!["amqp://b:5673/x"]
        );
        let l = resolve_urls(
            None,
            list(&[
                "amqp://u:p@n1:5701/lockstep",
                "amqp://u:p@n2:5701/lockstep",
                "amqp://u:p@n1:5702/lockstep",
            ]),
            D,
        )
        .expect("cluster");
        assert_eq!(l.len(), 3);
    }

    #[test]
    fn refusals_name_the_key_and_never_show_the_password() {
        let both = resolve_urls(Some(D.into()), list(&[D]), D).expect_err("both");
        assert!(both.contains("not both"), "{both}");
        let empty = resolve_urls(None, list(&[]), D).expect_err("empty");
        assert!(empty.contains("amqp_urls"), "{empty}");
        for (bad, why) in [
            ("http://u:secret@h/x", "amqp://"),
            ("amqp://u:secret@/x", "no host"),
            ("amqp://u:secret@h:99999/x", "port"),
            ("amqp://u:secret@h:0/x", "port"),
            ("amqp://u:secret@h/a/b", "one path segment"),
            ("amqp://u:secret@h/%zz", "escape"),
            ("amqp://u:secret@h /x", "white space"),
            ("amqp://u:secret@[::1]:5672/x", "IPv6"),
            ("amqp://u:sec/ret@h:5672/x", "%2F"),
        ] {
            let e = resolve_urls(None, list(&["amqp://a/x", bad]), D).expect_err(bad);
            assert!(e.contains("amqp_urls[1]"), "{bad}: {e}");
            assert!(e.contains(why), "{bad}: {e}");
            assert!(!e.contains("secret") && !e.contains("ret@"), "{bad}: {e}");
            let e = resolve_urls(Some(bad.into()), None, D).expect_err(bad);
            assert!(e.starts_with("amqp_url ="), "{bad}: {e}");
        }
    }

    #[test]
    fn a_list_is_one_vhost_on_different_nodes() {
        let e = resolve_urls(None, list(&["amqp://a/x", "amqp://b/y"]), D).expect_err("vhosts");
        assert!(e.contains("virtual host"), "{e}");
        // No path is "/", and %2f is "/" too.
        resolve_urls(None, list(&["amqp://a", "amqp://b/%2f", "amqp://c/%2F"]), D)
            .expect("all the default vhost");
        let e = resolve_urls(None, list(&["amqp://u:p@A:5672/x", "amqp://v:q@a/x"]), D)
            .expect_err("same node");
        assert!(e.contains("same node (a:5672) as amqp_urls[0]"), "{e}");
        assert!(!e.contains(":q@"), "{e}");
        resolve_urls(None, list(&["amqps://a/x", "amqp://a/x"]), D)
            .expect("5671 and 5672 are different listeners");
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact(D), "amqp://guest:***@127.0.0.1:5672/%2f");
        assert_eq!(redact("amqp://h:5672/v@x"), "amqp://h:5672/v@x");
        assert_eq!(redact("amqp://user@h/x"), "amqp://user@h/x");
        assert_eq!(redact("amqp://u:p@ss@h/x"), "amqp://u:***@h/x");
        assert_eq!(redact("amqp://u:pa/ss@h/x"), "amqp://u:***@h/x");
        assert_eq!(redact("not a url"), "not a url");
        assert_eq!(
            redact_all(&[D.to_string(), "amqp://h/x".to_string()]),
            "amqp://guest:***@127.0.0.1:5672/%2f, amqp://h/x"
        );
    }

    #[test]
    fn clients_stay_with_a_working_node_and_move_on_when_it_is_lost() {
        let mut f = Failover::new(vec!["a".into(), "b".into(), "c".into()]);
        let order = |f: &Failover| f.round().into_iter().map(|(_, u)| u).collect::<String>();
        assert_eq!(order(&f), "abc");
        f.connected(0);
        assert_eq!(
            order(&f),
            "abc",
            "a session error on a working node: same node"
        );
        f.lost();
        assert_eq!(order(&f), "bca", "the node went away: the next one first");
        // b is down too: the round reaches c.
        f.connected(2);
        f.lost();
        assert_eq!(order(&f), "abc");
        let mut one = Failover::new(vec!["a".into()]);
        one.connected(0);
        one.lost();
        assert_eq!(order(&one), "a");
    }
}

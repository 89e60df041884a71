//! The checks of a merged configuration: bounds, the log's, the tier's, the HTTP origins', the
//! admin key's.

use super::*;

/// Why `origin` is not an origin as a browser sends it in its `Origin` header, if it is not:
/// `scheme://host[:port]`, scheme and host in lowercase, without the scheme's default port, and
/// nothing after (no path, not even `/`). The server compares the header with the setting byte
/// for byte, so any other spelling would never match.
fn origin_error(origin: &str) -> Option<String> {
    let Some((scheme, authority)) = origin.split_once("://") else {
        return Some("no scheme://".into());
    };
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_lowercase())
        && scheme
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
    if !scheme_ok {
        return Some(format!(
            "the scheme {scheme:?} is not a URL scheme in lowercase (browsers send it so)"
        ));
    }
    if let Some(c) = authority.chars().find(|c| "/\\?#@".contains(*c)) {
        return Some(format!(
            "{c:?}: an origin has no path (not even a trailing slash), query, fragment or user"
        ));
    }
    // The host ends at the first `:`, or after the `]` of an IPv6 literal.
    let host_end = if authority.starts_with('[') {
        authority.find(']').map_or(authority.len(), |i| i + 1)
    } else {
        authority.find(':').unwrap_or(authority.len())
    };
    let (host, rest) = authority.split_at(host_end);
    if let Some(why) = host_error(host) {
        return Some(why);
    }
    match rest.strip_prefix(':') {
        Some(port) => port_error(scheme, host, port),
        None if rest.is_empty() => None,
        None => Some(format!("{rest:?} after the host")),
    }
}

/// Why `host` (of an origin) is not one as a browser sends it, if it is not.
fn host_error(host: &str) -> Option<String> {
    if let Some(inner) = host.strip_prefix('[') {
        let Some(ip) = inner.strip_suffix(']') else {
            return Some("an IPv6 host without its closing ]".into());
        };
        return match ip.parse::<std::net::Ipv6Addr>() {
            Ok(addr) if ipv6_as_browsers_write(addr) == ip => None,
            Ok(addr) => Some(format!(
                "browsers write [{ip}] as [{}]",
                ipv6_as_browsers_write(addr)
            )),
            Err(_) => Some(format!("[{ip}] is not an IPv6 address")),
        };
    }
    if host.is_empty() {
        return Some("no host".into());
    }
    if ends_in_a_number(host) {
        // An IPv4 address, to a browser, however written (`127.0.0.01`, `0x7f.1`, `2130706433`):
        // it sends the dotted decimal form.
        return match host.parse::<std::net::Ipv4Addr>() {
            Ok(addr) if addr.to_string() == host => None,
            _ => Some(format!(
                "{host:?} is an IPv4 address to a browser, which sends it in the dotted decimal form without leading zeros"
            )),
        };
    }
    let c = host
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "-._".contains(*c)))?;
    let why = if c.is_ascii_uppercase() {
        "browsers send the host in lowercase"
    } else if !c.is_ascii() {
        "browsers send an internationalized name in its xn-- form"
    } else {
        "no host name has it"
    };
    Some(format!("{c:?} in the host: {why}"))
}

/// Whether a browser takes `host` for an IPv4 address (the URL standard's "ends in a number":
/// its last label, a trailing dot aside, is decimal digits or `0x` and hex digits).
fn ends_in_a_number(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    let last = host.rsplit('.').next().unwrap_or(host);
    let hex = last
        .strip_prefix("0x")
        .or_else(|| last.strip_prefix("0X"))
        .is_some_and(|h| h.chars().all(|c| c.is_ascii_hexdigit()));
    hex || (!last.is_empty() && last.chars().all(|c| c.is_ascii_digit()))
}

/// An IPv6 address as a browser writes it in an origin (the URL standard's serializer):
/// lowercase hex without leading zeros, the first longest run of two or more zero pieces as
/// `::`, and no dotted IPv4 tail (`::ffff:c000:280`, where Rust writes `::ffff:192.0.2.128`).
fn ipv6_as_browsers_write(addr: std::net::Ipv6Addr) -> String {
    let pieces = addr.segments();
    // The first longest run of zeros, if two or more long.
    let (mut best, mut run) = (None::<(usize, usize)>, None::<(usize, usize)>);
    for (i, &p) in pieces.iter().enumerate() {
        run = match (p, run) {
            (0, Some((start, len))) => Some((start, len + 1)),
            (0, None) => Some((i, 1)),
            _ => None,
        };
        if let Some((start, len)) = run
            && len >= 2
            && best.is_none_or(|(_, l)| len > l)
        {
            best = Some((start, len));
        }
    }
    let hex = |ps: &[u16]| {
        ps.iter()
            .map(|p| format!("{p:x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    match best {
        Some((start, len)) => format!("{}::{}", hex(&pieces[..start]), hex(&pieces[start + len..])),
        None => hex(&pieces),
    }
}

/// Why `port` (of an origin of `scheme` and `host`) is not one as a browser sends it, if it is
/// not: a browser leaves the scheme's default port out, and writes no leading zeros.
fn port_error(scheme: &str, host: &str, port: &str) -> Option<String> {
    let Ok(n) = port.parse::<u16>() else {
        return Some(format!("the port {port:?} is not a number up to 65535"));
    };
    if n.to_string() != port {
        return Some(format!("the port {port:?}: browsers send it as {n}"));
    }
    let default = matches!((scheme, n), ("http", 80) | ("https", 443));
    default.then(|| format!("browsers leave the default port out: {scheme}://{host}"))
}

/// Why `key` (trimmed) cannot be the admin key, if it cannot. It is compared with the bearer
/// token of an `Authorization` header, which `auth::bearer` takes only as visible ASCII with
/// spaces or tabs between (`HeaderValue::to_str`) and trims: a key holding any other character
/// (a control character, a letter outside ASCII), or nothing, could never match, and every
/// admin call would be refused. The reason names the character, never the key.
pub(crate) fn admin_key_error(key: &str) -> Option<String> {
    if key.is_empty() {
        return Some("nothing but whitespace".into());
    }
    let (at, c) = key
        .char_indices()
        .find(|&(_, c)| !(c.is_ascii_graphic() || c == ' ' || c == '\t'))?;
    Some(format!(
        "{c:?} at byte {at}: an Authorization header carries visible ASCII (and spaces and tabs inside) \
         only, so no admin call could match the key"
    ))
}

/// Refuses setting `name` above `max` (in `unit`).
fn at_most<T: PartialOrd + std::fmt::Display>(
    name: &str,
    value: T,
    max: T,
    unit: &str,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        value <= max,
        "{name} ({value}) must be at most {max} {unit}"
    );
    Ok(())
}

impl Config {
    /// Durations and capacities within what the code that uses them can hold.
    fn check_bounds(&self) -> anyhow::Result<()> {
        let t = &self.tier;
        let secs = [
            ("limits.ws_idle_secs", self.limits_ws_idle_secs),
            (
                "limits.http_read_timeout_secs",
                self.limits_http_read_timeout_secs,
            ),
            (
                "projections.snapshot_interval_secs",
                self.projections_snapshot_interval_secs,
            ),
            (
                "projections.idempotency_secs",
                self.projections_idempotency_secs,
            ),
            ("shutdown.grace_secs", self.shutdown_grace_secs),
            (
                "compaction.purge_interval_secs",
                self.compaction_purge_interval_secs,
            ),
            (
                "compaction.retention_secs",
                self.compaction_retention_secs.unwrap_or(0),
            ),
            (
                "compaction.retention_interval_secs",
                self.compaction_retention_interval_secs,
            ),
            (
                "tier.local_retention_secs",
                t.local_retention_secs.unwrap_or(0),
            ),
            ("tier.upload_interval_secs", t.upload_interval_secs),
            ("tier.lease_secs", t.lease_secs),
        ];
        for (name, value) in secs {
            at_most(name, value, MAX_DURATION_SECS, "(seconds: about 31 years)")?;
        }
        let ms = [
            ("acks.flush_ms", self.acks_flush_ms),
            ("tier.read_timeout_ms", t.read_timeout_ms),
        ];
        for (name, value) in ms {
            at_most(
                name,
                value,
                MAX_DURATION_MS,
                "(milliseconds: about 31 years)",
            )?;
        }
        if let FsyncPolicy::Every(d) = self.log_fsync {
            at_most(
                "log.fsync every(MS)",
                d.as_millis(),
                u128::from(MAX_DURATION_MS),
                "(milliseconds: about 31 years)",
            )?;
        }
        let capacities = [
            ("limits.max_connections", self.limits_max_connections),
            ("limits.session_queue", self.limits_session_queue),
        ];
        for (name, value) in capacities {
            at_most(name, value, MAX_CAPACITY, "(2^30)")?;
        }
        Ok(())
    }

    /// The log's options as the log checks them when it opens (`LogOptions::validate`), named
    /// as settings: refused there, they failed the start after the data directory and the
    /// admin key were made, with the log's own names. The rest of what it checks follows from
    /// the checks here: `preallocate_bytes` is at most the segment size (a larger one is taken
    /// as that), `every(0)` does not parse, and the largest append is within its bounds.
    fn check_log(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (LOG_MIN_SEGMENT_BYTES..=LOG_MAX_SEGMENT_BYTES).contains(&self.log_segment_bytes),
            "log.segment_bytes ({}) must be in [{LOG_MIN_SEGMENT_BYTES}, {LOG_MAX_SEGMENT_BYTES}] \
             (1 KiB to 2 GiB)",
            self.log_segment_bytes
        );
        Ok(())
    }

    /// Counts and rates that 0 does not turn off: the code takes it as 1 (a limit of "more
    /// than 0 sends per second" let two sends through, then one a second; a `sample_every`
    /// of 0 sampled every message), so it is refused rather than taken for something else.
    /// Intervals of 0 (`acks.flush_ms`, `projections.snapshot_interval_secs`,
    /// `tier.upload_interval_secs`) are taken as the shortest, as the README says.
    fn check_zeros(&self) -> anyhow::Result<()> {
        let zeros = [
            ("limits.sends_per_second", self.limits_sends_per_second == 0),
            (
                "limits.send_bytes_per_second",
                self.limits_send_bytes_per_second == 0,
            ),
            (
                "limits.new_person_channels_per_hour",
                self.limits_new_person_channels_per_hour == 0,
            ),
            (
                "limits.frames_per_second",
                self.limits_frames_per_second == 0,
            ),
            ("limits.session_queue", self.limits_session_queue == 0),
            (
                "limits.session_queue_bytes",
                self.limits_session_queue_bytes == 0,
            ),
            ("trace.sample_every", self.trace_sample_every == 0),
        ];
        if let Some((name, _)) = zeros.iter().find(|(_, zero)| *zero) {
            anyhow::bail!(
                "{name} must be at least 1 (0 would not turn it off: it was taken as 1 before)"
            );
        }
        Ok(())
    }

    /// `tier.url` names a store the server can open, and the S3 settings go with an `s3://`
    /// one: without it they were ignored (a tier the operator set up silently did not exist),
    /// an endpoint without a scheme panicked the server in the S3 client, one of another
    /// scheme failed only when the store was built, and `file://relative/dir` made a directory
    /// relative to wherever the server was started. Checked before anything is created.
    fn check_tier(&self) -> anyhow::Result<()> {
        let t = &self.tier;
        let given = |v: Option<&str>| v.is_some_and(|v| !v.is_empty());
        if let Some(e) = &t.endpoint {
            let rest = e
                .strip_prefix("https://")
                .or_else(|| e.strip_prefix("http://"));
            anyhow::ensure!(
                rest.is_some_and(|r| !r.is_empty()),
                "tier.endpoint {e:?} must start with http:// or https:// (e.g. \
                 http://127.0.0.1:9000)"
            );
        }
        let s3_only = [
            ("tier.endpoint", given(t.endpoint.as_deref())),
            ("tier.region", given(t.region.as_deref())),
            ("tier.access_key_id", given(t.access_key_id.as_deref())),
            (
                "tier.secret_access_key",
                given(t.secret_access_key.as_deref()),
            ),
        ];
        let s3_setting = s3_only.iter().find(|(_, set)| *set).map(|(name, _)| *name);
        let Some(url) = t.url.as_deref() else {
            if let Some(name) = s3_setting {
                anyhow::bail!(
                    "{name} is set but tier.url is not: without tier.url nothing is tiered \
                     (set tier.url = \"s3://bucket/prefix\", or remove {name})"
                );
            }
            return Ok(());
        };
        if let Some(rest) = url.strip_prefix("s3://") {
            let bucket = rest.split('/').next().unwrap_or_default();
            anyhow::ensure!(
                !bucket.is_empty(),
                "tier.url {url:?}: no bucket (expected s3://bucket/prefix)"
            );
            // The object-store client escapes some characters of a key (`%`, `#`, `~`, `*`,
            // `?`, brackets, non-ASCII ones, `.` and `..` as a whole name …), and the prefix went through it
            // twice: the keys came out under another prefix than the one written (`a#b` as
            // `a%2523b`), which `tidings tier gc` listed as once escaped and so never found.
            // A prefix that needs no escaping is the same wherever it is used.
            let prefix = rest[bucket.len()..].trim_matches('/');
            let escaped = object_store::path::Path::from(prefix);
            anyhow::ensure!(
                escaped.as_ref() == prefix,
                "tier.url {url:?}: the prefix {prefix:?} would be stored as {:?}: name it \
                 with ASCII letters, digits and - _ . / (no empty, \".\" or \"..\" part; \
                 none of % # ~ * ? \\ ^ ` | \" < > [ ] {{ }}, control or non-ASCII \
                 characters)",
                escaped.as_ref()
            );
            return Ok(());
        }
        let Some(dir) = url.strip_prefix("file://") else {
            anyhow::bail!("tier.url {url:?}: expected s3://bucket/prefix or file:///dir");
        };
        anyhow::ensure!(
            std::path::Path::new(dir).is_absolute(),
            "tier.url {url:?}: a file URL names an absolute directory, file:///dir (three \
             slashes); {dir:?} is relative"
        );
        if let Some(name) = s3_setting {
            anyhow::bail!("{name} is set but tier.url {url:?} is not s3://: it applies to S3 only");
        }
        Ok(())
    }

    /// `http.cors_origins` holds origins as browsers send them (see [`origin_error`]), or `*`
    /// alone. A misspelt one (a trailing slash, a default port, uppercase) would never match
    /// the `Origin` header: the server would answer that page without the header it needs,
    /// and the failure would show only in the browser's console.
    fn check_http(&self) -> anyhow::Result<()> {
        let origins = &self.http_cors_origins;
        if origins.iter().any(|o| o == "*") {
            anyhow::ensure!(
                origins.len() == 1,
                "http.cors_origins {origins:?}: \"*\" allows every origin and must be the only \
                 entry"
            );
            return Ok(());
        }
        for origin in origins {
            if let Some(why) = origin_error(origin) {
                anyhow::bail!(
                    "http.cors_origins: {origin:?} is not an origin as a browser sends it: {why} \
                     (expected scheme://host[:port], e.g. https://app.example.com, or * alone)"
                );
            }
        }
        Ok(())
    }

    /// `admin_key`, trimmed, is a key some admin call can send (see [`admin_key_error`]):
    /// one that cannot was taken, and every admin call was answered 401.
    fn check_admin_key(&self) -> anyhow::Result<()> {
        if let Some(why) = self.admin_key.as_deref().and_then(admin_key_error) {
            anyhow::bail!(
                "admin_key: {why} (surrounding whitespace is trimmed; leave it empty or unset \
                 to use DATA/admin.key)"
            );
        }
        Ok(())
    }

    /// The projections settings `rebuild` shapes its state by, with the bounds `serve` holds
    /// them to (a rebuild with a setting `serve` then refused made a state no start could
    /// keep: it rebuilt again under the setting it could start with).
    pub(crate) fn check_projections(&self) -> anyhow::Result<()> {
        at_most(
            "projections.idempotency_secs",
            self.projections_idempotency_secs,
            MAX_DURATION_SECS,
            "(seconds: about 31 years)",
        )?;
        anyhow::ensure!(
            self.projections_index_flush_entries >= 1,
            "projections.index_flush_entries must be at least 1"
        );
        Ok(())
    }

    /// Values that each parse but together (or alone) would break the server.
    pub(super) fn check(&self) -> anyhow::Result<()> {
        self.check_admin_key()?;
        self.check_projections()?;
        self.check_bounds()?;
        self.check_log()?;
        self.check_zeros()?;
        self.check_tier()?;
        self.check_http()?;
        let t = &self.tier;
        // The lease is renewed by upload passes (at the first pass a third of a lease after
        // the last manifest write, and every third of it during an upload): passes further
        // apart than that let the lease lapse while the owner runs idle, and a second server
        // (or a copy of this directory) would take the prefix over.
        anyhow::ensure!(
            t.url.is_none()
                || (t.lease_secs >= 3
                    && t.lease_secs >= t.upload_interval_secs.max(1).saturating_mul(3)),
            "tier.lease_secs ({}) must be at least 3 and at least 3 × tier.upload_interval_secs ({}): \
             the owner renews its lease at upload passes (and during uploads)",
            t.lease_secs,
            t.upload_interval_secs
        );
        anyhow::ensure!(
            t.read_timeout_ms > 0,
            "tier.read_timeout_ms must be above 0 (it bounds every call to the object store)"
        );
        anyhow::ensure!(
            self.limits_sessions_per_user >= 1,
            "limits.sessions_per_user must be at least 1"
        );
        anyhow::ensure!(
            self.limits_http_read_timeout_secs >= 1,
            "limits.http_read_timeout_secs must be at least 1"
        );
        anyhow::ensure!(
            self.limits_ws_idle_secs >= 3,
            "limits.ws_idle_secs ({}) must be at least 3 (the server pings after a third of it)",
            self.limits_ws_idle_secs
        );
        anyhow::ensure!(
            (1..=MAX_PAYLOAD_LIMIT).contains(&self.limits_max_payload_bytes),
            "limits.max_payload_bytes ({}) must be in [1, {MAX_PAYLOAD_LIMIT}]",
            self.limits_max_payload_bytes
        );
        // Binary frames up to this size are read as sends: below it, a send HTTP takes closed
        // the connection (1009) instead of being answered, and 0 closed it at every frame.
        let frame_floor = self.max_binary_frame_bytes();
        anyhow::ensure!(
            self.limits_max_frame_bytes >= frame_floor,
            "limits.max_frame_bytes ({}) must be at least 3 × limits.max_payload_bytes + \
             {CBOR_FRAME_OVERHEAD} ({frame_floor}): a binary frame up to that size may be a \
             valid send, and a frame past limits.max_frame_bytes closes the connection",
            self.limits_max_frame_bytes
        );
        anyhow::ensure!(
            (1..=MAX_UIDS_PER_CALL).contains(&self.limits_max_uids_per_call),
            "limits.max_uids_per_call ({}) must be in [1, {MAX_UIDS_PER_CALL}]: the event of a \
             call, up to {UID_EVENT_BYTES} bytes a uid, must fit one log append \
             ({LOG_MAX_APPEND} bytes at most)",
            self.limits_max_uids_per_call
        );
        Ok(())
    }
}

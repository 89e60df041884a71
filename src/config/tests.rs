use super::*;
use tidings_projections::{Envelope, Event, ListKind, ListOp, ListOwner};

#[test]
fn flags_beat_the_file_which_beats_the_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.toml");
    std::fs::write(
        &path,
        "listen = \"0.0.0.0:9000\"\n[log]\nsegment_bytes = 4096\nfsync = \"every(50)\"\n[limits]\nmax_payload_bytes = 100\n",
    )
    .unwrap();
    let args = ServeArgs {
        config: Some(path.clone()),
        limits_max_payload_bytes: Some(7),
        ..ServeArgs::default()
    };
    let c = args.resolve().unwrap();
    assert_eq!(c.listen.port(), 9000);
    assert_eq!(c.log_segment_bytes, 4096);
    assert_eq!(c.log_preallocate_bytes, 4096, "the segment size by default");
    assert_eq!(c.log_fsync, FsyncPolicy::Every(Duration::from_millis(50)));
    assert_eq!(c.limits_max_payload_bytes, 7);
    assert_eq!(
        c.limits_session_queue,
        Config::default().limits_session_queue
    );

    std::fs::write(&path, "[log]\nsegmnt_bytes = 1\n").unwrap();
    let err = ServeArgs {
        config: Some(path),
        ..ServeArgs::default()
    }
    .resolve()
    .unwrap_err();
    assert!(format!("{err:#}").contains("segmnt_bytes"), "{err:#}");
}

/// `[compaction] purge_interval_secs`: an hour by default, from the file, the flag over it,
/// 0 turning the purge off; a duration past the bound is refused, and so is an unknown key
/// in the section.
#[test]
fn the_purge_interval_comes_from_the_file_or_the_flag() {
    let d = ServeArgs::default().resolve().unwrap();
    assert_eq!(d.purge_interval(), Some(Duration::from_secs(3600)));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.toml");
    std::fs::write(&path, "[compaction]\npurge_interval_secs = 0\n").unwrap();
    let from = |flag: Option<u64>| {
        ServeArgs {
            config: Some(path.clone()),
            compaction_purge_interval_secs: flag,
            ..ServeArgs::default()
        }
        .resolve()
    };
    assert_eq!(from(None).unwrap().purge_interval(), None);
    assert_eq!(
        from(Some(5)).unwrap().purge_interval(),
        Some(Duration::from_secs(5))
    );
    let err = format!("{:#}", from(Some(MAX_DURATION_SECS + 1)).unwrap_err());
    assert!(err.contains("compaction.purge_interval_secs"), "{err}");
    std::fs::write(&path, "[compaction]\npurge_interval = 60\n").unwrap();
    let err = format!("{:#}", from(None).unwrap_err());
    assert!(err.contains("unknown field `purge_interval`"), "{err}");
}

/// `[compaction] retention_*`: off by default; from the file, the flag over it; the
/// interval a minute by default; taken with a tier too (refused with one until the tiered
/// log could remove from its store); refused past the duration bound.
#[test]
fn retention_comes_from_the_file_or_the_flag_with_or_without_a_tier() {
    let d = ServeArgs::default().resolve().unwrap();
    assert_eq!(d.retention_interval(), None);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.toml");
    std::fs::write(
        &path,
        "[compaction]\nretention_secs = 86400\nretention_interval_secs = 0\n",
    )
    .unwrap();
    let with = |args: ServeArgs| {
        ServeArgs {
            config: Some(path.clone()),
            ..args
        }
        .resolve()
    };
    let c = with(ServeArgs::default()).unwrap();
    assert_eq!(c.compaction_retention_secs, Some(86400));
    assert_eq!(c.compaction_retention_bytes, None);
    assert_eq!(c.retention_interval(), Some(Duration::from_secs(1)));
    let c = with(ServeArgs {
        compaction_retention_secs: Some(60),
        compaction_retention_bytes: Some(1 << 30),
        compaction_retention_interval_secs: Some(5),
        ..ServeArgs::default()
    })
    .unwrap();
    assert_eq!(
        (c.compaction_retention_secs, c.compaction_retention_bytes),
        (Some(60), Some(1 << 30))
    );
    assert_eq!(c.retention_interval(), Some(Duration::from_secs(5)));
    let bytes_only = ServeArgs {
        compaction_retention_bytes: Some(0),
        ..ServeArgs::default()
    }
    .resolve()
    .unwrap();
    assert_eq!(
        bytes_only.retention_interval(),
        Some(Duration::from_secs(60))
    );
    let tiered = with(ServeArgs {
        tier_url: Some("file:///tmp/tidings-store".into()),
        compaction_retention_bytes: Some(1 << 30),
        ..ServeArgs::default()
    })
    .unwrap();
    assert_eq!(
        tiered.tier.url.as_deref(),
        Some("file:///tmp/tidings-store")
    );
    assert_eq!(
        (
            tiered.compaction_retention_secs,
            tiered.compaction_retention_bytes
        ),
        (Some(86400), Some(1 << 30))
    );
    assert_eq!(tiered.retention_interval(), Some(Duration::from_secs(1)));
    let err = format!(
        "{:#}",
        with(ServeArgs {
            compaction_retention_secs: Some(MAX_DURATION_SECS + 1),
            ..ServeArgs::default()
        })
        .unwrap_err()
    );
    assert!(err.contains("compaction.retention_secs"), "{err}");
}

#[test]
fn values_that_would_break_the_server_are_refused() {
    let refused = |args: ServeArgs, what: &str| {
        let err = format!("{:#}", args.resolve().unwrap_err());
        assert!(err.contains(what), "{err}");
    };
    // A lease that lapses between upload passes (the default interval is 5 s).
    refused(
        ServeArgs {
            tier_lease_secs: Some(10),
            tier_url: Some("file:///nowhere".into()),
            ..ServeArgs::default()
        },
        "tier.lease_secs",
    );
    refused(
        ServeArgs {
            tier_lease_secs: Some(0),
            tier_upload_interval_secs: Some(0),
            tier_url: Some("file:///nowhere".into()),
            ..ServeArgs::default()
        },
        "tier.lease_secs",
    );
    refused(
        ServeArgs {
            tier_upload_interval_secs: Some(60),
            tier_url: Some("file:///nowhere".into()),
            ..ServeArgs::default()
        },
        "tier.lease_secs",
    );
    refused(
        ServeArgs {
            tier_read_timeout_ms: Some(0),
            ..ServeArgs::default()
        },
        "tier.read_timeout_ms",
    );
    refused(
        ServeArgs {
            limits_max_payload_bytes: Some(MAX_PAYLOAD_LIMIT + 1),
            ..ServeArgs::default()
        },
        "limits.max_payload_bytes",
    );
    refused(
        ServeArgs {
            limits_ws_idle_secs: Some(2),
            ..ServeArgs::default()
        },
        "limits.ws_idle_secs",
    );
    // Durations a deadline cannot hold (2^63 s and up panicked: hyper's read timeout at
    // every connection, the shutdown's deadline at SIGTERM; the idempotency window wrapped
    // in milliseconds), and one second past the bound.
    let huge = u64::MAX;
    let durations = [
        (
            ServeArgs {
                limits_http_read_timeout_secs: Some(1 << 63),
                ..ServeArgs::default()
            },
            "limits.http_read_timeout_secs",
        ),
        (
            ServeArgs {
                limits_ws_idle_secs: Some(huge),
                ..ServeArgs::default()
            },
            "limits.ws_idle_secs",
        ),
        (
            ServeArgs {
                shutdown_grace_secs: Some(1 << 63),
                ..ServeArgs::default()
            },
            "shutdown.grace_secs",
        ),
        (
            ServeArgs {
                shutdown_grace_secs: Some(MAX_DURATION_SECS + 1),
                ..ServeArgs::default()
            },
            "shutdown.grace_secs",
        ),
        (
            ServeArgs {
                projections_snapshot_interval_secs: Some(huge),
                ..ServeArgs::default()
            },
            "projections.snapshot_interval_secs",
        ),
        (
            ServeArgs {
                projections: ProjectionsArgs {
                    projections_idempotency_secs: Some(huge / 1000 + 1),
                    ..ProjectionsArgs::default()
                },
                ..ServeArgs::default()
            },
            "projections.idempotency_secs",
        ),
        (
            ServeArgs {
                acks_flush_ms: Some(huge),
                ..ServeArgs::default()
            },
            "acks.flush_ms",
        ),
        (
            ServeArgs {
                tier_read_timeout_ms: Some(huge),
                ..ServeArgs::default()
            },
            "tier.read_timeout_ms",
        ),
        (
            ServeArgs {
                tier_local_retention_secs: Some(huge),
                ..ServeArgs::default()
            },
            "tier.local_retention_secs",
        ),
        (
            ServeArgs {
                tier_upload_interval_secs: Some(huge),
                ..ServeArgs::default()
            },
            "tier.upload_interval_secs",
        ),
        (
            ServeArgs {
                log_fsync: Some(format!("every({huge})")),
                ..ServeArgs::default()
            },
            "log.fsync",
        ),
        // The lease in milliseconds was cut to 64 bits; checked with or without a tier.
        (
            ServeArgs {
                tier_lease_secs: Some(huge),
                ..ServeArgs::default()
            },
            "tier.lease_secs",
        ),
    ];
    for (args, what) in durations {
        refused(args, what);
    }
    // Capacities tokio refuses with a panic (above `usize::MAX >> 3`): at start-up for the
    // connections' semaphore, at every WebSocket upgrade for a session's queue.
    for n in [usize::MAX, (1 << 61) + 1, MAX_CAPACITY + 1] {
        refused(
            ServeArgs {
                limits_max_connections: Some(n),
                ..ServeArgs::default()
            },
            "limits.max_connections",
        );
        refused(
            ServeArgs {
                limits_session_queue: Some(n),
                ..ServeArgs::default()
            },
            "limits.session_queue",
        );
    }
    // A frame limit below what a send's binary frame may take (3 × the payload limit and
    // 4 KiB): a 1.5 MB send closed the connection (1009) where HTTP took it; 0 closed
    // every connection at its first frame.
    for (payload, frame) in [(4 << 20, 1 << 20), (64 << 10, 0), (1024, 3 * 1024 + 4095)] {
        refused(
            ServeArgs {
                limits_max_payload_bytes: Some(payload),
                limits_max_frame_bytes: Some(frame),
                ..ServeArgs::default()
            },
            "limits.max_frame_bytes",
        );
    }
    // More uids per call than one log append holds the event of (and none at all).
    for n in [MAX_UIDS_PER_CALL + 1, usize::MAX, 0] {
        refused(
            ServeArgs {
                limits_max_uids_per_call: Some(n),
                ..ServeArgs::default()
            },
            "limits.max_uids_per_call",
        );
    }
    // Segment sizes the log refuses when it opens (after the data directory and the admin
    // key were made, and without the `log.` name).
    for n in [
        0,
        5,
        LOG_MIN_SEGMENT_BYTES - 1,
        LOG_MAX_SEGMENT_BYTES + 1,
        u64::MAX,
    ] {
        refused(
            ServeArgs {
                log_segment_bytes: Some(n),
                ..ServeArgs::default()
            },
            "log.segment_bytes",
        );
    }
    // Counts and rates that 0 does not turn off (they were taken as 1).
    let zeros = [
        (
            ServeArgs {
                limits_sends_per_second: Some(0),
                ..ServeArgs::default()
            },
            "limits.sends_per_second",
        ),
        (
            ServeArgs {
                limits_frames_per_second: Some(0),
                ..ServeArgs::default()
            },
            "limits.frames_per_second",
        ),
        (
            ServeArgs {
                limits_session_queue: Some(0),
                ..ServeArgs::default()
            },
            "limits.session_queue",
        ),
        (
            ServeArgs {
                limits_session_queue_bytes: Some(0),
                ..ServeArgs::default()
            },
            "limits.session_queue_bytes",
        ),
        (
            ServeArgs {
                trace_sample_every: Some(0),
                ..ServeArgs::default()
            },
            "trace.sample_every",
        ),
    ];
    for (args, what) in zeros {
        refused(args, what);
    }
    // An S3 endpoint without a scheme (the S3 client panicked at start: InvalidUri) or of
    // another scheme (a late "builder error").
    for endpoint in [
        "127.0.0.1:17650",
        "ftp://127.0.0.1:21",
        "http://",
        "HTTP://x",
    ] {
        refused(
            ServeArgs {
                tier_url: Some("s3://bucket/prefix".into()),
                tier_endpoint: Some(endpoint.into()),
                ..ServeArgs::default()
            },
            "tier.endpoint",
        );
    }
    // S3 settings without an S3 tier.url (ignored without a word).
    let s3_settings = [
        (
            ServeArgs {
                tier_endpoint: Some("http://127.0.0.1:9000".into()),
                ..ServeArgs::default()
            },
            "tier.endpoint is set but tier.url is not",
        ),
        (
            ServeArgs {
                tier_region: Some("eu-west-1".into()),
                ..ServeArgs::default()
            },
            "tier.region is set but tier.url is not",
        ),
        (
            ServeArgs {
                tier_access_key_id: Some("k".into()),
                ..ServeArgs::default()
            },
            "tier.access_key_id is set but tier.url is not",
        ),
        (
            ServeArgs {
                tier_secret_access_key: Some("s".into()),
                ..ServeArgs::default()
            },
            "tier.secret_access_key is set but tier.url is not",
        ),
        (
            ServeArgs {
                tier_url: Some("file:///nowhere".into()),
                tier_endpoint: Some("http://127.0.0.1:9000".into()),
                ..ServeArgs::default()
            },
            "tier.endpoint is set but tier.url \"file:///nowhere\" is not s3://",
        ),
    ];
    for (args, what) in s3_settings {
        refused(args, what);
    }
    // Store URLs the server cannot open: a relative directory (it was made relative to
    // wherever the server started), none, no bucket, another scheme.
    for url in [
        "file://relative/dir",
        "file://",
        "s3://",
        "s3:///prefix",
        "gs://b/p",
        // Prefixes the object-store client escapes (stored under another name).
        "s3://b/node#a",
        "s3://b/100%",
        "s3://b/a/../b",
        "s3://b/a//b",
        "s3://b/~home",
        "s3://b/naïve",
    ] {
        refused(
            ServeArgs {
                tier_url: Some(url.into()),
                ..ServeArgs::default()
            },
            "tier.url",
        );
    }
    // A prefix that needs no escaping is taken as written.
    for url in [
        "s3://b",
        "s3://b/",
        "s3://b/tidings/node-1.a_b/",
        "s3://b/a=b,c;d@e",
    ] {
        let c = ServeArgs {
            tier_url: Some(url.into()),
            ..ServeArgs::default()
        }
        .resolve();
        if let Err(e) = c {
            panic!("{url}: {e:#}");
        }
    }
    // CORS origins no browser sends (the `Origin` header is compared byte for byte, so each
    // would never match), and `*` beside others.
    for origins in [
        "https://app.example.com/",
        "https://app.example.com/app",
        "https://app.example.com?x",
        "https://user@app.example.com",
        "app.example.com",
        "//app.example.com",
        "null",
        "HTTPS://app.example.com",
        "https://App.example.com",
        "https://app.exämple.com",
        "https://app example.com",
        "https://",
        "https://:8443",
        "https://app.example.com:443",
        "http://app.example.com:80",
        "https://app.example.com:",
        "https://app.example.com:08443",
        "https://app.example.com:65536",
        "https://app.example.com:x",
        "http://[::1",
        "http://[::1]x",
        "http://[::G]",
        "http://[::A]",
        // Browsers send the canonical forms: [::1], 127.0.0.1.
        "http://[0:0:0:0:0:0:0:1]",
        "http://[::0:1]",
        "http://[::ffff:192.0.2.128]",
        "http://127.0.0.01",
        "http://0x7f.0.0.1",
        "http://2130706433",
        "http://127.1",
        "http://1.2.3.4.",
        "*,https://app.example.com",
        "https://app.example.com, https://other.example.com/",
    ] {
        refused(
            ServeArgs {
                http_cors_origins: Some(origins.into()),
                ..ServeArgs::default()
            },
            "http.cors_origins",
        );
    }
    // Without a tier the lease is not used: a leftover interval is no reason to refuse.
    let untiered = ServeArgs {
        tier_upload_interval_secs: Some(60),
        ..ServeArgs::default()
    };
    assert!(untiered.resolve().is_ok());
    let ok = ServeArgs {
        tier_lease_secs: Some(15),
        limits_max_payload_bytes: Some(MAX_PAYLOAD_LIMIT),
        limits_max_frame_bytes: Some(3 * MAX_PAYLOAD_LIMIT + CBOR_FRAME_OVERHEAD),
        ..ServeArgs::default()
    };
    assert_eq!(ok.resolve().unwrap().tier.lease_secs, 15);
}

/// The admin key is trimmed, as the bearer tokens it is compared with are: a key ending in
/// a newline (a Kubernetes secret, `$(cat key)`) was taken whole, and every admin call was
/// then 401. One that no `Authorization` header can carry is refused, naming the setting
/// and not the key; an empty one is unset (generated into DATA/admin.key).
#[test]
fn the_admin_key_is_trimmed_and_one_no_header_carries_is_refused() {
    let resolve = |key: &str| {
        ServeArgs {
            admin_key: Some(key.into()),
            ..ServeArgs::default()
        }
        .resolve()
    };
    for key in [
        "s3cret-admin-key\n",
        " s3cret-admin-key\t",
        "\r\ns3cret-admin-key \r\n",
    ] {
        let c = resolve(key).unwrap();
        assert_eq!(c.admin_key.as_deref(), Some("s3cret-admin-key"), "{key:?}");
    }
    // Spaces inside reach the server (a header value loses only its ends).
    assert_eq!(
        resolve("two words").unwrap().admin_key.as_deref(),
        Some("two words")
    );
    assert_eq!(resolve("").unwrap().admin_key, None);
    for key in [
        " ",
        "\n\n",
        "s3cret\nkey",
        "s3cret\u{7f}",
        "s3cr\u{e9}t",
        "key\0",
    ] {
        let err = format!("{:#}", resolve(key).unwrap_err());
        assert!(err.contains("admin_key"), "{key:?}: {err}");
        assert!(!err.contains("s3cr"), "the key itself is not shown: {err}");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.toml");
    std::fs::write(&path, "admin_key = \"from-the-file\\n\"\n").unwrap();
    let c = ServeArgs {
        config: Some(path.clone()),
        ..ServeArgs::default()
    }
    .resolve()
    .unwrap();
    assert_eq!(c.admin_key.as_deref(), Some("from-the-file"));
    // An empty flag or variable is not given: the file's key holds (it was replaced by a
    // generated one), as do its tier url and node id, and an empty `data` is the default.
    std::fs::write(
        &path,
        "admin_key = \"from-the-file\"\nnode_id = \"n1\"\ndata = \"\"\n\
         [log]\nfsync = \"never\"\n[tier]\nurl = \"file:///srv/tier\"\n",
    )
    .unwrap();
    let c = ServeArgs {
        config: Some(path.clone()),
        admin_key: Some(String::new()),
        node_id: Some(String::new()),
        tier_url: Some(String::new()),
        log_fsync: Some(String::new()),
        ..ServeArgs::default()
    }
    .resolve()
    .unwrap();
    assert_eq!(c.log_fsync, FsyncPolicy::Never);
    assert_eq!(c.admin_key.as_deref(), Some("from-the-file"));
    assert_eq!(c.node_id.as_deref(), Some("n1"));
    assert_eq!(c.tier.url.as_deref(), Some("file:///srv/tier"));
    assert_eq!(c.data, Config::default().data);
    // The tier's region and keys too (an empty one overrode the file's and `AWS_*`).
    std::fs::write(
        &path,
        "[tier]\nurl = \"s3://b/p\"\nregion = \"eu-west-3\"\naccess_key_id = \"AK\"\n\
         secret_access_key = \"SK\"\n",
    )
    .unwrap();
    let c = ServeArgs {
        config: Some(path),
        tier_region: Some(String::new()),
        tier_access_key_id: Some(String::new()),
        tier_secret_access_key: Some(String::new()),
        ..ServeArgs::default()
    }
    .resolve()
    .unwrap();
    assert_eq!(c.tier.region.as_deref(), Some("eu-west-3"));
    assert_eq!(c.tier.access_key_id.as_deref(), Some("AK"));
    assert_eq!(c.tier.secret_access_key.as_deref(), Some("SK"));
}

/// CORS origins come from the file as a list, from the variable or the flag as one
/// comma-separated value (which replaces the file's; an empty one turns CORS off), and
/// every form of origin a browser sends is taken.
#[test]
fn cors_origins_from_the_file_or_a_comma_separated_flag() {
    assert!(
        ServeArgs::default()
            .resolve()
            .unwrap()
            .http_cors_origins
            .is_empty()
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.toml");
    std::fs::write(
        &path,
        "[http]\ncors_origins = [\"https://app.example.com\", \"http://localhost:5173\"]\n",
    )
    .unwrap();
    let from = |flag: Option<&str>| {
        ServeArgs {
            config: Some(path.clone()),
            http_cors_origins: flag.map(str::to_owned),
            ..ServeArgs::default()
        }
        .resolve()
        .unwrap()
        .http_cors_origins
    };
    assert_eq!(
        from(None),
        ["https://app.example.com", "http://localhost:5173"]
    );
    assert_eq!(
        from(Some(" https://a.example.com ,https://b.example.com:8443,")),
        ["https://a.example.com", "https://b.example.com:8443"]
    );
    assert!(from(Some("")).is_empty(), "an empty value turns CORS off");
    assert_eq!(from(Some("*")), ["*"]);
    let taken = [
        "http://127.0.0.1:7070",
        "http://[::1]:8080",
        "http://[2001:db8::1]",
        "http://[::ffff:c000:280]",
        "http://[1:0:0:2::3]",
        "http://[1::2:0:0:3]",
        "http://10.0.0.255:3000",
        "https://1a.example",
        "https://xn--exmple-cua.com",
        "https://my_host.internal:1",
        "capacitor://localhost",
        "chrome-extension://abcdefghijklmnop",
        "https://app.example.com:8443",
        "http://app.example.com:443",
    ];
    for origin in taken {
        let resolved = ServeArgs {
            http_cors_origins: Some(origin.into()),
            ..ServeArgs::default()
        }
        .resolve();
        if let Err(e) = resolved {
            panic!("{origin} refused: {e:#}");
        }
    }
}

/// Every bound is a value that is taken, and the defaults are within them all.
#[test]
fn an_unset_frame_limit_follows_a_raised_payload_limit() {
    // Only the payload limit raised (as configurations did before the frame floor): the
    // frame limit follows it instead of refusing the start.
    let c = ServeArgs {
        limits_max_payload_bytes: Some(4 << 20),
        ..ServeArgs::default()
    }
    .resolve()
    .unwrap();
    assert_eq!(
        c.limits_max_frame_bytes,
        3 * (4 << 20) + CBOR_FRAME_OVERHEAD
    );
    // The default stays 1 MiB while it is enough.
    let c = ServeArgs::default().resolve().unwrap();
    assert_eq!(c.limits_max_frame_bytes, 1 << 20);
    // One set below the floor is still refused.
    let e = ServeArgs {
        limits_max_payload_bytes: Some(4 << 20),
        limits_max_frame_bytes: Some(1 << 20),
        ..ServeArgs::default()
    }
    .resolve()
    .unwrap_err();
    assert!(e.to_string().contains("limits.max_frame_bytes"), "{e}");
}

#[test]
fn values_at_the_bounds_are_taken() {
    let at_bounds = ServeArgs {
        limits_ws_idle_secs: Some(MAX_DURATION_SECS),
        limits_http_read_timeout_secs: Some(MAX_DURATION_SECS),
        projections_snapshot_interval_secs: Some(MAX_DURATION_SECS),
        projections: ProjectionsArgs {
            projections_idempotency_secs: Some(MAX_DURATION_SECS),
            ..ProjectionsArgs::default()
        },
        shutdown_grace_secs: Some(MAX_DURATION_SECS),
        acks_flush_ms: Some(MAX_DURATION_MS),
        tier_url: Some("file:///nowhere".into()),
        tier_local_retention_secs: Some(MAX_DURATION_SECS),
        tier_upload_interval_secs: Some(MAX_DURATION_SECS / 3),
        tier_lease_secs: Some(MAX_DURATION_SECS),
        tier_read_timeout_ms: Some(MAX_DURATION_MS),
        log_fsync: Some(format!("every({MAX_DURATION_MS})")),
        limits_max_connections: Some(MAX_CAPACITY),
        limits_session_queue: Some(MAX_CAPACITY),
        limits_max_payload_bytes: Some(MAX_PAYLOAD_LIMIT),
        limits_max_frame_bytes: Some(3 * MAX_PAYLOAD_LIMIT + CBOR_FRAME_OVERHEAD),
        limits_max_uids_per_call: Some(MAX_UIDS_PER_CALL),
        ..ServeArgs::default()
    };
    let c = at_bounds.resolve().unwrap();
    for n in [LOG_MIN_SEGMENT_BYTES, LOG_MAX_SEGMENT_BYTES] {
        let c = ServeArgs {
            log_segment_bytes: Some(n),
            ..ServeArgs::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(c.log_preallocate_bytes, n, "the segment size by default");
    }
    for endpoint in ["http://127.0.0.1:9000", "https://s3.example.com"] {
        let s3 = ServeArgs {
            tier_url: Some("s3://bucket/prefix".into()),
            tier_endpoint: Some(endpoint.into()),
            tier_region: Some("eu-west-1".into()),
            tier_access_key_id: Some("k".into()),
            tier_secret_access_key: Some("s".into()),
            ..ServeArgs::default()
        };
        assert!(s3.resolve().is_ok(), "{endpoint}");
    }
    let rates = ServeArgs {
        limits_sends_per_second: Some(1),
        limits_frames_per_second: Some(1),
        limits_session_queue: Some(1),
        limits_session_queue_bytes: Some(1),
        trace_sample_every: Some(1),
        ..ServeArgs::default()
    };
    assert!(rates.resolve().is_ok());
    assert!(
        c.log_max_append_bytes() <= LOG_MAX_APPEND,
        "{} bytes: more than the log takes",
        c.log_max_append_bytes()
    );
    assert_eq!(c.max_binary_frame_bytes(), c.limits_max_frame_bytes);
    let d = ServeArgs::default().resolve().unwrap();
    assert_eq!(d.max_binary_frame_bytes(), 3 * (64 << 10) + 4096);
}

/// A membership or list call of `limits.max_uids_per_call` uids of the longest kind fits
/// the log's largest append. Sized by the payload limit alone (2 × 64 KiB + 1 MiB), it was
/// below the event of 20,000 such uids (~1.3 MB), and the call answered 500.
#[test]
fn the_largest_uids_call_fits_one_append() {
    let event_bytes = |n: usize| {
        Envelope::new(
            u64::MAX,
            Event::ListChanged {
                owner: ListOwner::Channel("c".repeat(MAX_ID_LEN)),
                list: ListKind::Allow,
                op: ListOp::Set,
                uids: vec!["u".repeat(MAX_ID_LEN); n],
            },
        )
        .encode()
        .len()
    };
    let n = 20_000;
    // Each uid adds at most `UID_EVENT_BYTES` (the array's head grows by a few bytes).
    assert!(event_bytes(n) - event_bytes(0) <= n * UID_EVENT_BYTES + 8);
    let c = ServeArgs {
        limits_max_uids_per_call: Some(n),
        ..ServeArgs::default()
    }
    .resolve()
    .unwrap();
    // The log frames a one-record append with a 40-byte batch header and a 4-byte length.
    let append = event_bytes(n) + 44;
    assert!(
        append <= c.log_max_append_bytes(),
        "an append of {append} bytes, the log's largest {}",
        c.log_max_append_bytes()
    );
    assert!(append > 2 * c.limits_max_payload_bytes + (1 << 20));
}

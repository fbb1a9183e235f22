//! TLS: `rediss://` to a Redis that only speaks TLS, trusting a CA file.
//! The test makes a throwaway CA and server certificate with `openssl`.

use std::path::{Path, PathBuf};
use std::process::Command;

use adapters::backend::{RedisBackend, RedisConfig, RedisSetupError};
use ports::CacheBackend;
use serde_json::Value;
use tests::{TestRedis, spawn_app};

/// A folder holding `ca.crt`, `server.crt` and `server.key`, removed on drop.
struct Certificates(PathBuf);

impl Certificates {
    fn make() -> Self {
        let dir = std::env::temp_dir().join(format!("cm-tls-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let run = |args: &[&str]| {
            let output = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .output()
                .expect("openssl is installed");
            assert!(
                output.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        run(&[
            "req",
            "-x509",
            "-new",
            "-nodes",
            "-newkey",
            "rsa:2048",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "1",
            "-subj",
            "/CN=cachemanager-test-ca",
        ]);
        run(&[
            "req",
            "-new",
            "-nodes",
            "-newkey",
            "rsa:2048",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ]);
        std::fs::write(
            dir.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "1",
            "-extfile",
            "ext.cnf",
        ]);
        // Redis in the container may run as another user.
        for file in ["ca.crt", "server.crt", "server.key"] {
            std::fs::set_permissions(
                dir.join(file),
                std::os::unix::fs::PermissionsExt::from_mode(0o644),
            )
            .unwrap();
        }
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        Self(dir)
    }

    fn ca(&self) -> PathBuf {
        self.0.join("ca.crt")
    }

    fn dir(&self) -> &Path {
        &self.0
    }
}

impl Drop for Certificates {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A Redis that accepts only TLS on its port (6379 inside the container).
async fn tls_redis(certificates: &Certificates) -> TestRedis {
    TestRedis::start_custom(
        None,
        &[
            "--port",
            "0",
            "--tls-port",
            "6379",
            "--tls-cert-file",
            "/tls/server.crt",
            "--tls-key-file",
            "/tls/server.key",
            "--tls-ca-cert-file",
            "/tls/ca.crt",
            "--tls-auth-clients",
            "no",
        ],
        Some((certificates.dir(), "/tls")),
    )
    .await
}

#[tokio::test]
async fn rediss_with_the_ca_file_connects_and_serves() {
    let certificates = Certificates::make();
    let redis = tls_redis(&certificates).await;
    let config = RedisConfig {
        url: format!("rediss://127.0.0.1:{}", redis.port),
        ca_file: Some(certificates.ca()),
        ..redis.config()
    };
    let backend = RedisBackend::connect(&config).await.unwrap();
    backend
        .set("user:tls:1", bytes::Bytes::from_static(b"1"), None)
        .await
        .unwrap();
    assert_eq!(
        backend.get("user:tls:1").await.unwrap(),
        Some(bytes::Bytes::from_static(b"1"))
    );
}

#[tokio::test]
async fn rediss_without_trusting_the_ca_is_refused() {
    let certificates = Certificates::make();
    let redis = tls_redis(&certificates).await;
    let untrusted = RedisConfig {
        url: format!("rediss://127.0.0.1:{}", redis.port),
        ..redis.config()
    };
    let error = RedisBackend::connect(&untrusted).await.unwrap_err();
    assert!(
        matches!(error, RedisSetupError::Unreachable { .. }),
        "{error:?}"
    );
    let plaintext = RedisConfig {
        url: redis.url(),
        ..redis.config()
    };
    assert!(
        RedisBackend::connect(&plaintext).await.is_err(),
        "plain text reached a TLS-only Redis"
    );
}

#[tokio::test]
async fn the_service_serves_over_tls() {
    let certificates = Certificates::make();
    let redis = tls_redis(&certificates).await;
    let url = format!("rediss://127.0.0.1:{}", redis.port);
    let ca = certificates.ca().display().to_string();
    let app = spawn_app(&[
        ("CACHEMANAGER__CACHE__BACKEND", "redis"),
        ("REDIS_URL", url.as_str()),
        ("REDIS_PASSWORD", redis.password.as_str()),
        ("CACHEMANAGER__REDIS__CA_FILE", ca.as_str()),
    ])
    .await;
    app.wait_for_health(200).await;
    let user: Value = app
        .get("/users/550e8400-e29b-41d4-a716-446655440005")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(user["first_name"], "Charlie");
    app.stop().await;
}

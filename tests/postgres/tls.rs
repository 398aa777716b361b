//! TLS (feature `postgres-tls`): a throwaway server that admits TLS connections only, with
//! a CA and a certificate for 127.0.0.1 and localhost made here. Both storages pass the
//! conformance kit over it and the server sees their sessions as TLS; a client that trusts
//! another CA, a host name the certificate does not name, and a plain connection are each
//! refused with an error that names the cause. Against the shared server, which has no
//! certificate the test trusts, `sslmode=require` fails clearly too.

use std::sync::Arc;
use std::time::{Duration, Instant};

use circuitpy::testing::{Options, check_async_storage, check_storage};
use circuitpy::{AsyncPostgresStorage, PostgresOptions, PostgresStorage, StorageError};
use circuitpy_tests::postgres::{TestCa, TlsServer, fresh_table, options, server};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A plain TLS client trusting `ca_pem`, for looking at the server's view of sessions.
async fn tls_client(url: &str, ca_pem: &str) -> tokio_postgres::Client {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(certificate.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(config);
    let (client, connection) = tokio_postgres::connect(url, tls).await.unwrap();
    tokio::spawn(connection);
    client
}

fn expect_error<T>(result: Result<T, StorageError>, what: &str) -> String {
    match result {
        Ok(_) => panic!("{what}: connected"),
        Err(error) => {
            let text = error.to_string();
            eprintln!("{what}: {text}");
            text
        }
    }
}

#[test]
fn storages_work_over_tls_and_refuse_what_is_not_trusted() {
    let started = Instant::now();
    let ca = TestCa::new("circuitpy test CA");
    let Some(server) = TlsServer::start(&ca) else {
        return;
    };
    eprintln!("TLS server up in {:?}", started.elapsed());
    let ca_file = server.ca_file();
    let app = "circuitpy_tls";
    let url = server.url(&format!(
        "sslmode=require&sslrootcert={}&application_name={app}",
        ca_file.display()
    ));

    // The blocking storage, CA from the URL (libpq's `sslrootcert`).
    let table = fresh_table("tls");
    let blocking: &'static PostgresStorage = Box::leak(Box::new(
        PostgresStorage::connect_with(&url, options(&table)).unwrap(),
    ));
    check_storage(blocking, Options::default()).unwrap_or_else(|f| panic!("{f}"));

    let runtime = runtime();
    runtime.block_on(async {
        // The async storage, CA from the options, no sslmode: naming a CA means TLS.
        let table = fresh_table("atls");
        let plain_url = server.url(&format!("application_name={app}"));
        let storage: &'static AsyncPostgresStorage = Box::leak(Box::new(
            AsyncPostgresStorage::connect_with(&plain_url, options(&table).ca_file(&ca_file))
                .await
                .unwrap(),
        ));
        check_async_storage(storage, Options::default())
            .await
            .unwrap_or_else(|f| panic!("{f}"));

        // The server's view: every session of both storages' pools is TLS.
        let client = tls_client(&server.url("sslmode=require"), &ca.pem()).await;
        let own: bool = client
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert!(own, "the raw client's own session is not TLS");
        let row = client
            .query_one(
                "SELECT count(*), coalesce(bool_and(s.ssl), false), min(s.version)
                 FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
                 WHERE a.application_name = $1",
                &[&app],
            )
            .await
            .unwrap();
        let (sessions, all_tls, version): (i64, bool, Option<String>) =
            (row.get(0), row.get(1), row.get(2));
        eprintln!("{sessions} storage sessions, all TLS: {all_tls}, {version:?}");
        assert!(sessions >= 2, "the storages hold {sessions} sessions");
        assert!(all_tls, "a storage session is not TLS");

        // A whole client configuration of the application's.
        let mut roots = rustls::RootCertStore::empty();
        for certificate in rustls::pki_types::pem::PemObject::pem_slice_iter(ca.pem().as_bytes()) {
            roots.add(certificate.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
        let table = fresh_table("ctls");
        AsyncPostgresStorage::connect_with(
            &server.url("sslmode=require"),
            options(&table).tls_config(config),
        )
        .await
        .unwrap();
        let table = fresh_table("rtls");
        AsyncPostgresStorage::connect_with(
            &server.url("sslmode=verify-full"),
            options(&table).root_certificates(roots),
        )
        .await
        .unwrap();
    });

    // Refusals: short timeouts, each must fail on the first connection.
    let refused = |url: &str, options: PostgresOptions| {
        PostgresStorage::connect_with(url, options.timeout(Duration::from_secs(5)))
    };
    let other = TestCa::new("another CA");
    let other_file =
        std::env::temp_dir().join(format!("circuitpy-other-ca-{}.pem", std::process::id()));
    std::fs::write(&other_file, other.pem()).unwrap();
    let error = expect_error(
        refused(
            &server.url("sslmode=require"),
            options("t").ca_file(&other_file),
        ),
        "a client trusting another CA",
    );
    std::fs::remove_file(&other_file).unwrap();
    assert!(
        error.contains("UnknownIssuer") && error.contains("does not chain to a trusted root"),
        "{error}"
    );
    let error = expect_error(
        refused(&server.url("sslmode=require"), options("t")),
        "a client trusting Mozilla's roots only",
    );
    assert!(error.contains("UnknownIssuer"), "{error}");
    let wrong_host = server
        .url("sslmode=require")
        .replace("127.0.0.1", "127.0.0.2");
    let error = expect_error(
        refused(&wrong_host, options("t").ca_file(&ca_file)),
        "a host name the certificate does not name",
    );
    assert!(
        error.contains("not valid for name") && error.contains("does not name the host"),
        "{error}"
    );
    let error = expect_error(
        refused(&server.url("sslmode=disable"), options("t")),
        "sslmode=disable against a TLS-only server",
    );
    assert!(
        error.contains("no pg_hba.conf entry") && error.contains("try sslmode=require"),
        "{error}"
    );
    eprintln!("TLS test done in {:?}", started.elapsed());
}

#[test]
fn require_against_a_server_without_a_trusted_certificate_fails_clearly() {
    let Some(url) = server() else { return };
    let separator = if url.contains('?') { '&' } else { '?' };
    let error = expect_error(
        PostgresStorage::connect_with(
            &format!("{url}{separator}sslmode=require"),
            options("t").timeout(Duration::from_secs(5)),
        ),
        "sslmode=require against the shared server",
    );
    // Without TLS the server says so; with TLS (Debian's default snakeoil certificate) the
    // certificate is not one the client trusts.
    assert!(
        error.contains("does not support TLS") || error.contains("UnknownIssuer"),
        "{error}"
    );
}

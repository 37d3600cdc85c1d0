//! The tunnel takes client certificates from `tunnel_client_ca` for tokens bound to
//! them, but only the gateway's own CA makes agents: a certificate from the other CA
//! that names an agent (`edge.agents.keyway`) is refused as an agent's, and audited.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::*;
use keyway_core::tunnel::{self, AgentHello, Hello};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_from_the_client_ca_does_not_make_an_agent() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let people = TestCa::new("keyway test people CA");
    people.write(&dir.join("people-ca.pem"));
    people.client_named(dir, "forged", "edge", &["edge.agents.keyway"]);
    let (admin, tunnel_port) = (free_port(), free_port());
    std::fs::write(
        dir.join("keyway.toml"),
        format!(
            "data_dir = \"data\"\nadmin_listen = \"127.0.0.1:{admin}\"\n\
             tunnel_listen = \"127.0.0.1:{tunnel_port}\"\ntunnel_client_ca = \"people-ca.pem\"\n\
             [agents.edge]\nservices = [\"cache\"]\n\
             [services.cache]\nprotocol = \"tcp\"\nupstream = \"10.0.0.9:6379\"\nvia = \"edge\"\nmax_ttl = \"1h\"\n"
        ),
    )
    .unwrap();
    let _gateway = start_gateway(dir, admin);

    // The tunnel's TLS takes the forged certificate (the people CA signed it)...
    let config = keyway_gateway::tls::client_config(
        &dir.join("data/ca.pem"),
        Some((&dir.join("forged.pem"), &dir.join("forged.key"))),
    )
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", tunnel_port))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::clone(&config))
        .connect(name, tcp)
        .await
        .unwrap();
    // ...but an agent's hello with it is refused.
    let hello = Hello::Agent(AgentHello {
        agent: "edge".into(),
        version: "test".into(),
    });
    tls.write_all(&tunnel::encode(&hello)).await.unwrap();
    let mut header = [0u8; 4];
    tls.read_exact(&mut header).await.unwrap();
    let mut body = vec![0u8; tunnel::body_len(header).unwrap()];
    tls.read_exact(&mut body).await.unwrap();
    let reply = String::from_utf8_lossy(&body).into_owned();
    assert!(reply.contains("agent refused"), "{reply}");
    let event = store_query(
        dir,
        "select decision || ' ' || reason from audit_events where kind = 'agent.connect'",
    );
    assert_eq!(event.trim(), "deny no_agent_certificate");
}

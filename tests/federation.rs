//! Federation between nodes in one process over the in-process network.

mod mesh;

use glia::p2p::memory::MemoryNetwork;
use mesh::Node;
use ruma::{api::federation::discovery::get_server_version::v1, ServerName};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_answers_another_through_frames() {
    let network = MemoryNetwork::new();
    let (a, b) = (Node::start(&network).await, Node::start(&network).await);
    let b_name = ServerName::parse(&b.name).unwrap();
    let version = a.hs.federation().request(&b_name, v1::Request::new(), false).await.unwrap();
    assert_eq!(version.server.unwrap().name.as_deref(), Some("glia"));
    drop(a);
}

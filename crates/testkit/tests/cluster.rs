//! Tests for `RedisCluster`.

use larder_testkit::RedisCluster;

fn field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

#[test]
fn three_masters_cover_all_slots() {
    let cluster = RedisCluster::start();
    assert_eq!(cluster.nodes().len(), 3);
    let urls = cluster.urls();
    assert_eq!(urls.len(), 3);

    for (node, url) in cluster.nodes().iter().zip(&urls) {
        assert_eq!(url, &format!("redis://127.0.0.1:{}/", node.port()));
        let info = node.cli(&["CLUSTER", "INFO"]);
        assert_eq!(field(&info, "cluster_state"), Some("ok"), "{info}");
        assert_eq!(
            field(&info, "cluster_slots_assigned"),
            Some("16384"),
            "{info}"
        );
        assert_eq!(field(&info, "cluster_slots_ok"), Some("16384"), "{info}");
        assert_eq!(field(&info, "cluster_known_nodes"), Some("3"), "{info}");
        assert_eq!(field(&info, "cluster_size"), Some("3"), "{info}");

        let nodes = node.cli(&["CLUSTER", "NODES"]);
        let masters = nodes.lines().filter(|l| l.contains("master")).count();
        assert_eq!(masters, 3, "{nodes}");
    }

    // "foo" hashes to slot 12182, owned by the third node: the first redirects there.
    let nodes = cluster.nodes();
    assert_eq!(nodes[0].cli(&["CLUSTER", "KEYSLOT", "foo"]).trim(), "12182");
    assert_eq!(
        nodes[0].cli(&["SET", "foo", "bar"]).trim(),
        format!("MOVED 12182 127.0.0.1:{}", nodes[2].port())
    );
    assert_eq!(nodes[2].cli(&["SET", "foo", "bar"]).trim(), "OK");
    // redis-cli -c follows the redirect.
    assert_eq!(nodes[0].cli(&["-c", "GET", "foo"]).trim(), "bar");
}

//! Lab topologies of LAB.md, checked with real packets: a mesh of endpoints through a core
//! router, and the home → cpe → isp → transit → anchor chain whose routers answer
//! TTL-limited probes. The idle-link accuracy check runs the real agent on the mesh.

use std::time::Duration;

use pathpulse_tests::lab::impair::{Delay, Impairment};
use pathpulse_tests::lab::topo::Topo;
use pathpulse_tests::{bin, median, parse_metrics, require_program, require_root};

use crate::setup::value;

/// RTTs (ms) that `ping` printed, one per reply.
fn ping_times(out: &str) -> Vec<f64> {
    out.lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|t| t.split_whitespace().next()?.parse().ok())
        .collect()
}

#[test]
fn lab_mesh_endpoints_reach_each_other_through_the_core_with_the_link_delay() {
    let _serial = crate::lab::lab_lock();
    let test = "lab_mesh_endpoints_reach_each_other_through_the_core_with_the_link_delay";
    if !require_root(test) || !require_program(test, "ping") {
        return;
    }
    let slow = Impairment {
        delay: Delay::Constant { ms: 10.0 },
        ..Impairment::default()
    };
    let mesh = Topo::mesh(3, &[(1, slow, slow)], 5);
    for from in ["e1", "e2", "e3"] {
        for to in ["e1", "e2", "e3"] {
            if from == to {
                continue;
            }
            let addr = mesh.addr(to, "core");
            let (code, out) = mesh
                .ns(from)
                .run("ping", &["-n", "-c", "3", "-i", "0.05", "-W", "1", &addr]);
            assert_eq!(code, 0, "{from} -> {to} ({addr}):\n{out}");
            let rtt = median(&ping_times(&out));
            // e1's link delays 10 ms each way: 20 ms on every path through it, nothing on
            // the others (veth: well under a millisecond).
            if from == "e1" || to == "e1" {
                assert!((20.0..25.0).contains(&rtt), "{from} -> {to}: {rtt} ms");
            } else {
                assert!(rtt < 5.0, "{from} -> {to}: {rtt} ms");
            }
        }
    }
}

#[test]
fn lab_isp_chain_routers_answer_ttl_limited_probes_in_order() {
    let _serial = crate::lab::lab_lock();
    let test = "lab_isp_chain_routers_answer_ttl_limited_probes_in_order";
    if !require_root(test) || !require_program(test, "ping") {
        return;
    }
    let chain = Topo::isp_chain(&[], 6);
    let anchor = chain.addr("anchor", "transit");
    let expect = [
        chain.addr("cpe", "home"),
        chain.addr("isp", "cpe"),
        chain.addr("transit", "isp"),
    ];
    for (ttl, router) in expect.iter().enumerate() {
        let t = (ttl + 1).to_string();
        let (_, out) = chain
            .ns("home")
            .run("ping", &["-n", "-c", "1", "-W", "1", "-t", &t, &anchor]);
        assert!(
            out.contains(&format!("From {router} ")) && out.contains("Time to live exceeded"),
            "TTL {t} must expire at {router}:\n{out}"
        );
    }
    let (code, out) = chain
        .ns("home")
        .run("ping", &["-n", "-c", "1", "-W", "1", "-t", "4", &anchor]);
    assert_eq!(code, 0, "TTL 4 reaches the anchor:\n{out}");
}

/// Idle link (veth through the core router): the agent's median RTT is within 1.2× of
/// `ping`'s on the same path in the same run. Both take the receive time from the kernel;
/// `ping` takes its send time in user space before `sendmsg`, pathpulse at the device, so
/// pathpulse is expected below ping, never above 1.2× of it.
#[test]
fn lab_idle_link_median_rtt_is_within_1_2x_of_ping() {
    let _serial = crate::lab::lab_lock();
    let test = "lab_idle_link_median_rtt_is_within_1_2x_of_ping";
    if !require_root(test) || !require_program(test, "ping") {
        return;
    }
    let mesh = Topo::mesh(2, &[], 7);
    let target = mesh.addr("e2", "core");
    let dir = tempfile::tempdir().expect("tempdir");
    let port = 9469;
    let agent = mesh.ns("e1").spawn(
        "agent",
        &bin("pathpulse-agent"),
        &[
            "run",
            "--name",
            "idle",
            "--target",
            &target,
            "--interval",
            "20ms",
            "--report-interval",
            "1s",
            "--metrics-listen",
            &format!("127.0.0.1:{port}"),
        ],
        dir.path(),
    );
    // 400 pings over the same 10 s that the agent's 10 s window covers.
    std::thread::sleep(Duration::from_secs(1));
    let (code, out) = mesh
        .ns("e1")
        .run("ping", &["-n", "-c", "400", "-i", "0.025", &target]);
    assert_eq!(code, 0, "ping:\n{out}");
    let ping = ping_times(&out);
    assert!(ping.len() >= 390, "ping replies: {}\n{out}", ping.len());
    let ping_median_ms = median(&ping);
    std::thread::sleep(Duration::from_millis(1200));
    let script = format!(
        "exec 3<>/dev/tcp/127.0.0.1/{port} && printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3"
    );
    let (_, text) = mesh.ns("e1").run("bash", &["-c", &script]);
    let m = parse_metrics(&text);
    let ours_ms = value(
        &m,
        "pathpulse_rtt_quantile_seconds",
        &[("quantile", "0.5"), ("window", "10s")],
    )
    .unwrap_or_else(|| panic!("no p50 from the agent:\n{}", agent.log()))
        * 1000.0;
    eprintln!(
        "idle link median RTT: pathpulse {:.1} µs, ping {:.1} µs (ratio {:.2})",
        ours_ms * 1000.0,
        ping_median_ms * 1000.0,
        ours_ms / ping_median_ms
    );
    assert!(
        ours_ms <= 1.2 * ping_median_ms,
        "pathpulse {ours_ms} ms vs ping {ping_median_ms} ms"
    );
}

//! The main job: builds the one-arm namespace lab, runs `fulcrum` on it with
//! the embedded default configuration (full-NAT VIP 198.18.100.1, TCP 80 and
//! UDP 7, over three backends), sends traffic from the client, prints how
//! the backends shared it and the daemon's counters, and removes the lab.
//! Run as root, after building `fulcrum`; `scripts/demo.sh` does it all.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use fulcrum_tests::daemon::{self, LabMode};
use fulcrum_tests::{Lab, VIP4, http_get, in_netns, udp_echo};

const REQUESTS: usize = 300;
const T: Duration = Duration::from_secs(3);

fn main() -> ExitCode {
    match demo() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn demo() -> Result<(), String> {
    let server = std::env::current_exe().map_err(|e| e.to_string())?.with_file_name("lab-server");
    println!("building the lab: a client, a balancer and three backends on one bridge ...");
    let mut lab = Lab::new(LabMode::FullNat.topology()).map_err(|e| e.0)?;
    let _none = daemon::prepare(&mut lab, LabMode::FullNat, &server).map_err(|e| e.0)?;
    println!("starting fulcrum with the embedded default configuration:\n\n{}", fulcrum_config::LAB);
    let (d, _file) = daemon::start(&lab, fulcrum_config::LAB).map_err(|e| e.0)?;

    let vip = SocketAddr::new(IpAddr::V4(VIP4), 80);
    println!("{REQUESTS} HTTP requests to {vip}, each on a new TCP connection ...");
    let (by_backend, failed) = in_netns(&lab.client.ns, || {
        let mut by_backend = BTreeMap::new();
        let mut failed = 0;
        for _ in 0..REQUESTS {
            match http_get(vip, "/", T) {
                Ok((200, body)) => *by_backend.entry(String::from_utf8_lossy(&body).trim().to_string()).or_insert(0u32) += 1,
                _ => failed += 1,
            }
        }
        (by_backend, failed)
    })
    .map_err(|e| e.to_string())?;
    println!("\n| backend | requests served | share |\n|---|---|---|");
    for (name, n) in &by_backend {
        println!("| {name} | {n} | {:.1}% |", f64::from(*n) * 100.0 / REQUESTS as f64);
    }
    println!("failed requests: {failed}\n");

    let echo = SocketAddr::new(IpAddr::V4(VIP4), 7);
    let answer = in_netns(&lab.client.ns, || udp_echo(echo, b"hello fulcrum", T)).map_err(|e| e.to_string())?;
    match answer {
        Ok((bytes, from)) => println!("UDP echo via {echo}: {:?} from {from}", String::from_utf8_lossy(&bytes)),
        Err(e) => println!("UDP echo via {echo}: no answer ({e})"),
    }

    let out = daemon::stop(d).map_err(|e| e.0)?;
    println!("\nfulcrum's counters at exit:\n{}", out.lines().filter(|l| !l.starts_with('[') && !l.starts_with("ready")).collect::<Vec<_>>().join("\n"));
    println!("\nremoving the lab ...");
    if failed > 0 { Err(format!("{failed} of {REQUESTS} requests failed")) } else { Ok(()) }
}

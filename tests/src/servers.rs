//! Real servers from Debian for lab tests (nginx, dnsmasq, HAProxy), each
//! one process in the foreground, killed when its `Proc` is dropped, with
//! its files in a `TempDir` removed when dropped.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::{Lab, LabError, Proc, in_netns};

/// How long a server may take to accept connections.
const START: Duration = Duration::from_secs(10);

/// A directory for one test's server files, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Result<TempDir, LabError> {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!("fulcrum-{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
        std::fs::create_dir_all(&path).map_err(|e| LabError(format!("creating {}: {e}", path.display())))?;
        Ok(TempDir(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `name` in the directory; its path.
    pub fn write(&self, name: &str, text: &str) -> Result<PathBuf, LabError> {
        let path = self.0.join(name);
        std::fs::write(&path, text).map_err(|e| LabError(format!("writing {}: {e}", path.display())))?;
        Ok(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A certificate authority made by openssl in `dir`: its certificate
/// (`NAME.crt`, what a client trusts) and key (`NAME.key`).
pub fn ca(dir: &TempDir, name: &str) -> Result<PathBuf, LabError> {
    openssl_req(dir, name, &["-addext", "keyUsage=critical,keyCertSign"]).map(|(cert, _)| cert)
}

/// A server certificate for DNS name `name` in `dir`, signed by `ca` (made
/// by [`ca`], its key beside it): the certificate and key paths.
pub fn signed(dir: &TempDir, ca: &Path, name: &str) -> Result<(PathBuf, PathBuf), LabError> {
    let (ca_cert, ca_key) = (ca.to_string_lossy(), ca.with_extension("key").to_string_lossy().into_owned());
    let san = format!("subjectAltName=DNS:{name}");
    // v3_req (Debian's openssl.cnf): not a CA, which a server's certificate
    // must not be.
    openssl_req(dir, name, &["-extensions", "v3_req", "-addext", &san, "-CA", &ca_cert, "-CAkey", &ca_key])
}

fn openssl_req(dir: &TempDir, name: &str, more: &[&str]) -> Result<(PathBuf, PathBuf), LabError> {
    let (cert, key) = (dir.path().join(format!("{name}.crt")), dir.path().join(format!("{name}.key")));
    let (c, k, subject) = (cert.to_string_lossy(), key.to_string_lossy(), format!("/CN={name}"));
    let mut args = vec!["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj", &subject];
    args.extend_from_slice(more);
    args.extend(["-keyout", &k, "-out", &c]);
    let out = Command::new("openssl").args(&args).output().map_err(|e| LabError(format!("cannot run openssl (package openssl): {e}")))?;
    if !out.status.success() {
        return Err(LabError(format!("openssl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr))));
    }
    Ok((cert, key))
}

/// Starts nginx in `ns` with `http` as the body of its `http { }` block
/// (one process, no daemon, logs to stderr), and waits until `ready`
/// accepts connections.
pub fn nginx(lab: &Lab, ns: &str, dir: &TempDir, http: &str, ready: SocketAddr) -> Result<Proc, LabError> {
    let d = dir.path().display();
    let conf = format!(
        "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log stderr warn;\nevents {{}}\nhttp {{\n\
         access_log off;\nclient_body_temp_path {d};\nproxy_temp_path {d};\nfastcgi_temp_path {d};\nuwsgi_temp_path {d};\nscgi_temp_path {d};\n\
         {http}\n}}\n"
    );
    let path = dir.write("nginx.conf", &conf)?;
    let p = lab.spawn(ns, &["nginx", "-e", "stderr", "-p", &d.to_string(), "-c", &path.to_string_lossy()])?;
    wait_listening(ns, ready, &p)?;
    Ok(p)
}

/// Waits until `addr` accepts a TCP connection from namespace `ns`.
pub fn wait_listening(ns: &str, addr: SocketAddr, server: &Proc) -> Result<(), LabError> {
    let t0 = Instant::now();
    loop {
        let up = in_netns(ns, || TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()).map_err(|e| LabError(format!("entering {ns}: {e}")))?;
        if up {
            return Ok(());
        }
        if t0.elapsed() > START {
            return Err(LabError(format!("nothing listens on {addr} in {ns} after {START:?}: {}", server.output())));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts dnsmasq in `ns` as a server of only `records` (no upstream, no
/// /etc/hosts; `--address=/NAME/ADDRESS` pairs) on port 53 of `listen`,
/// or of every address when `None`; waits for it to start.
pub fn dnsmasq(lab: &Lab, ns: &str, listen: Option<std::net::IpAddr>, records: &[(&str, std::net::IpAddr)]) -> Result<Proc, LabError> {
    let listen: Vec<String> = listen.map(|a| vec!["--bind-interfaces".into(), format!("--listen-address={a}")]).unwrap_or_default();
    let records: Vec<String> = records.iter().map(|(name, a)| format!("--address=/{name}/{a}")).collect();
    let mut args = vec!["dnsmasq", "--keep-in-foreground", "--log-facility=-", "--conf-file=/dev/null", "--no-resolv", "--no-hosts"];
    args.extend(["--pid-file", "--port=53"]);
    args.extend(listen.iter().map(String::as_str));
    args.extend(records.iter().map(String::as_str));
    let p = lab.spawn(ns, &args)?;
    p.wait_for_line(|l| l.contains("started"), START).ok_or_else(|| LabError(format!("dnsmasq did not start: {}", p.output())))?;
    Ok(p)
}

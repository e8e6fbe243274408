//! A real Postfix as the remote side of outbound mail: a private, throwaway instance on a
//! loopback address that takes mail for every domain and delivers all of it into one Maildir.
//! Where [`super::receiver`] scripts replies, this one answers as the most common MTA on the
//! Internet does (its ESMTP extensions, its STARTTLS, its queue), so a client is tested against
//! the real thing.
//!
//! Each instance lives in its own temporary directory (its `main.cf` and `master.cf`, queue,
//! data directory, Maildir and mail log) and listens only on its own `ip:port`, so instances
//! run side by side, in parallel tests, without touching the system's Postfix: nothing under
//! `/etc/postfix` or `/var/spool/postfix` is written, and the system's Postfix need not run.
//!
//! It needs the Debian package `postfix` and root (`postfix start` is reserved for the
//! superuser; as root, `postfix -c DIR` also needs no `alternate_config_directories` entry in
//! the default `main.cf`).
//!
//! [`Postfix::start_relay`] starts one as a smarthost that wants SMTP AUTH instead: it relays
//! (into the same Maildir) only for a client that signed in, over STARTTLS, with the one user
//! and password it was given, by `PLAIN` or `LOGIN`, and refuses every recipient of anyone
//! else with `554 5.7.1 <rcpt>: Relay access denied`. It checks the password with Cyrus SASL
//! against a sasldb of its own, in its directory (no daemon such as saslauthd); that needs the
//! Debian packages `sasl2-bin` (`saslpasswd2`, which makes the sasldb) and `libsasl2-modules`
//! (the `PLAIN` and `LOGIN` mechanisms; the sasldb plugin is in `libsasl2-modules-db`, which
//! `postfix` pulls in).
//!
//! What a test sees of a delivery:
//!
//! - One file per recipient: a message to two recipients is two messages here.
//! - As the virtual delivery agent stores it: `Return-Path:`, `X-Original-To:` and
//!   `Delivered-To:` (the recipient) come first, then Postfix's `Received:` header, then the
//!   message as sent, with LF line ends (a Maildir's lines end in LF, not CRLF), dot-stuffing
//!   undone. No other header is added (no `Date:`, `From:` or `Message-ID:` for a message
//!   without them).
//! - A session that used STARTTLS says so in that `Received:` header, as
//!   `(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits) ...)` and `with ESMTPS`
//!   ([`received_over_tls`]), and in the mail log (`Anonymous TLS connection established`).
//!
//! The instance is stopped when its handle drops. A test process killed with SIGKILL leaves it
//! running (Postfix's master detaches); `postfix -c <dir>/etc stop` ends it.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use super::command::{run_ok, succeeded};

/// The `postfix` command of the Debian package.
const POSTFIX: &str = "/usr/sbin/postfix";

/// The name every instance greets and signs its `Received:` headers with.
pub const HOSTNAME: &str = "mx.postfix.test";

/// Ports tried before giving up on starting: another process may bind the one picked between
/// the probe and Postfix's own bind.
const PORT_TRIES: usize = 5;

/// How long a started instance may take to greet.
const GREETING_TIMEOUT: Duration = Duration::from_secs(30);

/// How long `postfix stop` may leave processes of the instance behind before they are killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The command of the Debian package `sasl2-bin` that makes a sasldb.
const SASLPASSWD2: &str = "/usr/sbin/saslpasswd2";

/// What an instance is started with, besides its address.
struct Options {
    /// The certificate and key (absolute paths to PEM files) STARTTLS offers, if it is offered.
    tls: Option<(PathBuf, PathBuf)>,
    /// The one account a client must sign in with, for a smarthost ([`Postfix::start_relay`]);
    /// without it, mail for every domain is taken from anyone.
    login: Option<Login>,
}

/// A user name and password of SMTP AUTH.
struct Login {
    user: String,
    password: String,
}

/// A private Postfix on a loopback address that takes mail for every domain into one Maildir.
pub struct Postfix {
    /// Where it listens for SMTP.
    pub addr: SocketAddr,
    /// Everything of the instance: `etc/` (its config; a smarthost's SASL config and sasldb in
    /// `etc/sasl/`), `queue/`, `data/`, `maildir/` and `maillog`. Removed on drop, after the
    /// instance stopped.
    dir: tempfile::TempDir,
    /// Whether [`Postfix::stop`] ran already (drop then has nothing to do).
    stopped: bool,
}

impl Postfix {
    /// Start one on `ip` (a 127.x.y.z address) at a free port; `tls` =
    /// `Some((cert_pem_path, key_pem_path))` offers STARTTLS with that certificate. Returns once
    /// it greets with 220; panics with the mail log's tail if it does not start.
    pub fn start(ip: Ipv4Addr, tls: Option<(&Path, &Path)>) -> Postfix {
        let tls = tls.map(|(cert, key)| (absolute(cert, "certificate"), absolute(key, "key")));
        Postfix::start_with(ip, Options { tls, login: None })
    }

    /// One that takes mail only from a client signed in with AUTH (PLAIN or LOGIN, over
    /// STARTTLS only) as `user`/`password`; everything else it refuses to relay (554 5.7.1
    /// Relay access denied). `tls` is `(cert_pem_path, key_pem_path)`, as for
    /// [`Postfix::start`]. It offers AUTH only after STARTTLS; a wrong password gets
    /// `535 5.7.8 Error: authentication failed: ...`. What it takes goes into the Maildir as
    /// with [`Postfix::start`], its `Received:` header saying `with ESMTPSA`.
    pub fn start_relay(ip: Ipv4Addr, tls: (&Path, &Path), user: &str, password: &str) -> Postfix {
        assert!(
            !user.is_empty() && !user.contains(['@', '\n', '\r']),
            "a relay's user name is one plain name, not {user:?}"
        );
        assert!(
            !password.contains(['\n', '\r']),
            "a relay's password is one line"
        );
        let (cert, key) = tls;
        let tls = Some((absolute(cert, "certificate"), absolute(key, "key")));
        let login = Some(Login {
            user: user.to_string(),
            password: password.to_string(),
        });
        Postfix::start_with(ip, Options { tls, login })
    }

    /// What [`Postfix::start`] and [`Postfix::start_relay`] do.
    fn start_with(ip: Ipv4Addr, options: Options) -> Postfix {
        assert!(
            ip.is_loopback(),
            "a test Postfix listens on loopback, not on {ip}"
        );
        assert!(
            Path::new(POSTFIX).exists(),
            "{POSTFIX} is missing: the tests need the Debian package postfix"
        );
        // SAFETY: geteuid(2) has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(
            euid, 0,
            "a test Postfix needs root (postfix start is for the superuser)"
        );

        let dir = tempfile::Builder::new()
            .prefix("postfix-")
            .tempdir()
            .expect("creating a directory for a test Postfix");
        let root = dir.path().to_path_buf();
        // Postfix connects its own processes through sockets under queue/private and
        // queue/public, whose paths must fit in a sockaddr_un.
        let longest = root.join("queue/private/proxywrite");
        assert!(
            longest.as_os_str().len() < 100,
            "{} is too long a path for Postfix's sockets (set TMPDIR to a shorter directory)",
            longest.display()
        );
        assert!(
            !root.to_string_lossy().contains(char::is_whitespace),
            "{} has white space, which main.cf cannot hold",
            root.display()
        );
        let (uid, gid) = postfix_user();
        for sub in ["etc", "queue", "data", "maildir"] {
            std::fs::create_dir(root.join(sub))
                .unwrap_or_else(|e| panic!("creating {}/{sub}: {e}", root.display()));
        }
        // The virtual delivery agent writes the Maildir as the postfix user, by its absolute
        // path: every directory above it must be searchable (a temporary directory is 0700).
        chmod(&root, 0o755);
        // Postfix's own state (master.lock, the TLS PRNG seed) belongs to the postfix user,
        // and so does the Maildir, where mail is delivered with that user's uid and gid.
        for sub in ["data", "maildir"] {
            let path = root.join(sub);
            std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
            chmod(&path, 0o700);
        }
        if let Some(login) = &options.login {
            set_up_sasl(&root, login, gid);
        }
        let etc = root.join("etc");
        write_config(&etc.join("main.cf"), &main_cf(&root, uid, gid, &options));

        let mut postfix = Postfix {
            addr: SocketAddr::from((ip, 0)),
            dir,
            stopped: true,
        };
        let mut failures = Vec::new();
        for _ in 0..PORT_TRIES {
            postfix.addr = SocketAddr::from((ip, free_port_on(ip)));
            write_config(&etc.join("master.cf"), &master_cf(postfix.addr));
            let out = postfix.postfix_command("start");
            if out.status.success() {
                postfix.stopped = false;
                postfix.wait_greeting();
                return postfix;
            }
            let clash = format!(
                "bind {ip} port {}: Address already in use",
                postfix.addr.port()
            );
            let taken = postfix.log().contains(&clash);
            failures.push(format!(
                "postfix start on {} failed ({}): {}{}",
                postfix.addr,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
            if !taken {
                failures.push(postfix.diagnosis());
                break;
            }
        }
        panic!(
            "a test Postfix did not start:\n{}\nthe mail log ends:\n{}",
            failures.join("\n"),
            postfix.log_tail(40)
        );
    }

    /// The instance's config directory, as `postfix -c` and `postconf -c` take it.
    pub fn config_dir(&self) -> PathBuf {
        self.dir.path().join("etc")
    }

    /// The Maildir every message is delivered into.
    pub fn maildir(&self) -> PathBuf {
        self.dir.path().join("maildir")
    }

    /// Every message delivered so far, as stored (bytes), in delivery order.
    pub fn messages(&self) -> Vec<Vec<u8>> {
        let new = self.maildir().join("new");
        let entries = match std::fs::read_dir(&new) {
            Ok(entries) => entries,
            // The virtual agent makes new/ at the first delivery.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
            Err(e) => panic!("reading {}: {e}", new.display()),
        };
        let mut names: Vec<String> = entries
            .map(|entry| {
                let entry = entry.unwrap_or_else(|e| panic!("reading {}: {e}", new.display()));
                entry.file_name().to_string_lossy().into_owned()
            })
            .collect();
        names.sort_by_key(|name| delivery_order(name));
        names
            .iter()
            .map(|name| {
                let path = new.join(name);
                std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
            })
            .collect()
    }

    /// Wait up to `timeout` for at least `n` messages; returns them (all of them, which may be
    /// more than `n`). Panics with the mail log's tail on timeout. It blocks the thread: a test
    /// whose client runs in the same single-threaded runtime calls it through
    /// `tokio::task::spawn_blocking`.
    pub fn wait_messages(&self, n: usize, timeout: Duration) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        loop {
            let messages = self.messages();
            if messages.len() >= n {
                return messages;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} of {n} messages delivered by the Postfix at {} after {timeout:?}; \
                     the mail log ends:\n{}",
                    messages.len(),
                    self.addr,
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The instance's mail log (for assertion messages): every session, TLS handshake, queue
    /// entry and delivery, and why Postfix refused or failed.
    pub fn log(&self) -> String {
        let path = self.dir.path().join("maillog");
        match std::fs::read(&path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => format!("(reading {}: {e})", path.display()),
        }
    }

    /// The last `lines` lines of the mail log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Stop every process of this instance (also done on drop).
    pub fn stop(mut self) {
        self.shutdown();
    }

    /// `postfix stop`, then a wait until no process of the instance is left, killing what
    /// still is after [`STOP_TIMEOUT`]. Every process of an instance is in its master's
    /// process group (the master is a session leader; its children stay in its group).
    fn shutdown(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let master = self.master_pid();
        // It fails when the master is gone already; what is left is looked for below.
        let _ = self.postfix_command("stop");
        let Some(master) = master else {
            return;
        };
        let deadline = Instant::now() + STOP_TIMEOUT;
        while !group_members(master).is_empty() {
            if Instant::now() >= deadline {
                for pid in group_members(master) {
                    // SAFETY: kill(2) on a process of this instance's process group, which is
                    // running (not a zombie) and runs a Postfix program.
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                    }
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The master's process id, from the pid file it keeps in its queue directory.
    fn master_pid(&self) -> Option<i32> {
        let path = self.dir.path().join("queue/pid/master.pid");
        std::fs::read_to_string(path).ok()?.trim().parse().ok()
    }

    /// `postfix -c <etc> <what>`, to its end.
    fn postfix_command(&self, what: &str) -> Output {
        Command::new(POSTFIX)
            .arg("-c")
            .arg(self.config_dir())
            .arg(what)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {POSTFIX} {what}: {e}"))
    }

    /// What `postfix check` says about the instance's config. The `postfix` command reports
    /// its own errors (a parameter it cannot use, before any log is open) only to a terminal,
    /// so it runs under script(1), on a pseudo-terminal.
    fn diagnosis(&self) -> String {
        let check = format!("{POSTFIX} -c {} check", self.config_dir().display());
        let out = Command::new("script")
            .args(["-qec", &check, "/dev/null"])
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(out) => format!(
                "postfix check ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stdout)
                    .replace('\r', "")
                    .trim_end()
            ),
            Err(e) => format!("(script, to run postfix check on a terminal, did not start: {e})"),
        }
    }

    /// Wait until the instance greets with 220. `postfix start` returns once the master has
    /// bound its socket; the first smtpd is started at the first connection.
    fn wait_greeting(&self) {
        let deadline = Instant::now() + GREETING_TIMEOUT;
        loop {
            let last = match greeting(self.addr) {
                Ok(line) if line.starts_with("220 ") => return,
                Ok(line) => format!("greeted with {line:?}"),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                panic!(
                    "the Postfix at {} did not greet within {GREETING_TIMEOUT:?} ({last}); \
                     the mail log ends:\n{}",
                    self.addr,
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A self-signed certificate and key for `host` (PEM files in `dir`), made with openssl: an
/// RSA key, `host` as the common name and the one subject alternative name (an IP address when
/// it is one), valid for 30 days. It is an end-entity certificate (`CA:FALSE`), so a verifying
/// client can take the certificate itself as its only root (rustls refuses a CA certificate as
/// a server's own). The files are `<host>-cert.pem` and `<host>-key.pem`.
pub fn test_certificate(dir: &Path, host: &str) -> (PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    let cert = dir.join(format!("{host}-cert.pem"));
    let key = dir.join(format!("{host}-key.pem"));
    let san = match host.parse::<std::net::IpAddr>() {
        Ok(_) => format!("subjectAltName=IP:{host}"),
        Err(_) => format!("subjectAltName=DNS:{host}"),
    };
    run_ok(
        Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
            ])
            .arg("-subj")
            .arg(format!("/CN={host}"))
            .args(["-addext", &san])
            .args(["-addext", "basicConstraints=critical,CA:FALSE"])
            .args([
                "-addext",
                "keyUsage=critical,digitalSignature,keyEncipherment",
            ])
            .args(["-addext", "extendedKeyUsage=serverAuth"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert),
        "openssl req (a test certificate)",
    );
    (cert, key)
}

/// Whether Postfix took `message` (as [`Postfix::messages`] gives it) over TLS: its own
/// `Received:` header, the first one, says `(using TLS...`.
pub fn received_over_tls(message: &[u8]) -> bool {
    let text = String::from_utf8_lossy(message);
    let mut received = String::new();
    let mut inside = false;
    for line in text.lines() {
        if line.is_empty() {
            break;
        }
        let folded = line.starts_with([' ', '\t']);
        if inside && !folded {
            break;
        }
        let name = line.get(..9).unwrap_or_default();
        if !inside && name.eq_ignore_ascii_case("received:") {
            inside = true;
        }
        if inside {
            received.push_str(line);
            received.push(' ');
        }
    }
    received.contains("(using TLS")
}

/// The instance's `main.cf`: mail for every domain to the one Maildir under `root`, nothing
/// relayed, no DNS, the mail log in `root/maillog`. With a login (a smarthost), no domain is
/// its own: every one is remote, relayed (to the same Maildir, by the virtual delivery agent
/// as the default transport) for a client that signed in, refused by reject_unauth_destination
/// for any other; AUTH is by Cyrus SASL, with the sasldb [`set_up_sasl`] makes.
fn main_cf(root: &Path, uid: u32, gid: u32, options: &Options) -> String {
    let sasl_dir = root.join("etc/sasl");
    let root = root.display();
    let destinations = match options.login {
        None => "default_transport = error:a test Postfix relays nothing\n\
                 relay_transport = error:a test Postfix relays nothing\n\
                 virtual_mailbox_domains = static:all\n\
                 smtpd_relay_restrictions = reject_unauth_destination\n\
                 smtpd_recipient_restrictions =\n"
            .to_string(),
        // With static:all every domain would be a virtual one, its own, which
        // reject_unauth_destination lets any client send to.
        Some(_) => format!(
            "# A smarthost: every domain is remote, and is relayed into the Maildir.\n\
             default_transport = virtual\n\
             relay_transport = error:a test Postfix relays nothing\n\
             virtual_mailbox_domains =\n\
             relay_domains =\n\
             smtpd_relay_restrictions = permit_sasl_authenticated, reject_unauth_destination\n\
             smtpd_recipient_restrictions =\n\
             smtpd_sasl_auth_enable = yes\n\
             smtpd_sasl_type = cyrus\n\
             smtpd_sasl_path = smtpd\n\
             cyrus_sasl_config_path = {}\n\
             # The realm a plain user name is looked up in (saslpasswd2 -u).\n\
             smtpd_sasl_local_domain = {HOSTNAME}\n\
             smtpd_sasl_security_options = noanonymous\n\
             smtpd_tls_auth_only = yes\n",
            sasl_dir.display()
        ),
    };
    let tls = match &options.tls {
        Some((cert, key)) => format!(
            "smtpd_tls_security_level = may\n\
             smtpd_tls_cert_file = {}\n\
             smtpd_tls_key_file = {}\n",
            cert.display(),
            key.display()
        ),
        None => "smtpd_tls_security_level = none\n".to_string(),
    };
    format!(
        "# A test instance: every domain is delivered into {root}/maildir.\n\
         compatibility_level = 3.6\n\
         queue_directory = {root}/queue\n\
         data_directory = {root}/data\n\
         maillog_file = {root}/maillog\n\
         maillog_file_prefixes = {root}\n\
         myhostname = {HOSTNAME}\n\
         mydomain = postfix.test\n\
         myorigin = $myhostname\n\
         mydestination =\n\
         local_recipient_maps =\n\
         alias_maps =\n\
         alias_database =\n\
         # The master.cf service names its own address; inet_interfaces must name an address\n\
         # of an interface (127.0.0.5 is routed on lo but not assigned to it).\n\
         inet_interfaces = loopback-only\n\
         inet_protocols = ipv4\n\
         mynetworks = 127.0.0.0/8\n\
         # Clients on loopback would match permit_inet_interfaces and get Date:, From: and\n\
         # Message-ID: added; a test sees the message as the client sent it.\n\
         local_header_rewrite_clients =\n\
         always_add_missing_headers = no\n\
         relayhost =\n\
         {destinations}\
         virtual_mailbox_base = {root}\n\
         virtual_mailbox_maps = static:maildir/\n\
         virtual_uid_maps = static:{uid}\n\
         virtual_gid_maps = static:{gid}\n\
         virtual_transport = virtual\n\
         smtpd_peername_lookup = no\n\
         disable_dns_lookups = yes\n\
         smtp_host_lookup = native\n\
         biff = no\n\
         smtpd_tls_received_header = yes\n\
         smtpd_tls_loglevel = 1\n\
         {tls}"
    )
}

/// The instance's `master.cf`: smtpd on `addr` only, the services a delivery into a Maildir
/// needs, none chrooted (the queue is not set up as a chroot), no SMTP client.
fn master_cf(addr: SocketAddr) -> String {
    format!(
        "# service type  private unpriv  chroot  wakeup  maxproc command\n\
         {addr} inet n - n - - smtpd\n\
         pickup     unix  n - n 60 1 pickup\n\
         cleanup    unix  n - n - 0 cleanup\n\
         qmgr       unix  n - n 300 1 qmgr\n\
         tlsmgr     unix  - - n 1000? 1 tlsmgr\n\
         rewrite    unix  - - n - - trivial-rewrite\n\
         bounce     unix  - - n - 0 bounce\n\
         defer      unix  - - n - 0 bounce\n\
         trace      unix  - - n - 0 bounce\n\
         verify     unix  - - n - 1 verify\n\
         flush      unix  n - n 1000? 0 flush\n\
         proxymap   unix  - - n - - proxymap\n\
         proxywrite unix  - - n - 1 proxymap\n\
         showq      unix  n - n - - showq\n\
         error      unix  - - n - - error\n\
         retry      unix  - - n - - error\n\
         discard    unix  - - n - - discard\n\
         virtual    unix  - n n - - virtual\n\
         anvil      unix  - - n - 1 anvil\n\
         scache     unix  - - n - 1 scache\n\
         postlog    unix-dgram n - n - 1 postlogd\n"
    )
}

/// The Cyrus SASL side of a smarthost, in `root/etc/sasl`: `smtpd.conf` (`smtpd_sasl_path =
/// smtpd` names it), which checks passwords against the sasldb `sasldb2` next to it, and that
/// sasldb, holding `login` in the realm [`HOSTNAME`] (`smtpd_sasl_local_domain`). Debian's
/// Postfix looks for `smtpd.conf` only in `<config_directory>/sasl` (then `/usr/lib/sasl`),
/// whatever `cyrus_sasl_config_path` says; upstream's, only where that parameter says, so
/// main.cf sets it to the same directory. smtpd runs as the postfix user, whose group (`gid`)
/// must read the sasldb; it stays root's, as `postfix start` wants every file of the config
/// directory to be (it warns "not owned by root" otherwise).
fn set_up_sasl(root: &Path, login: &Login, gid: u32) {
    assert!(
        Path::new(SASLPASSWD2).exists(),
        "{SASLPASSWD2} is missing: a test Postfix that wants AUTH needs the Debian packages \
         sasl2-bin and libsasl2-modules"
    );
    let dir = root.join("etc/sasl");
    std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    let sasldb = dir.join("sasldb2");
    let conf = format!(
        "pwcheck_method: auxprop\n\
         auxprop_plugin: sasldb\n\
         mech_list: PLAIN LOGIN\n\
         sasldb_path: {}\n",
        sasldb.display()
    );
    let path = dir.join("smtpd.conf");
    std::fs::write(&path, conf).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    let what = format!("{SASLPASSWD2} (the sasldb of a test Postfix)");
    let mut child = Command::new(SASLPASSWD2)
        .args(["-p", "-c", "-f"])
        .arg(&sasldb)
        .args(["-u", HOSTNAME])
        .arg(&login.user)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what} did not start: {e}"));
    // In pipe mode it reads the password up to the end of its input (a last newline would be
    // part of it).
    let mut stdin = child.stdin.take().expect("saslpasswd2's standard input");
    stdin
        .write_all(login.password.as_bytes())
        .unwrap_or_else(|e| panic!("writing the password to {what}: {e}"));
    drop(stdin);
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for {what}: {e}"));
    succeeded(&out, &what);
    std::os::unix::fs::chown(&sasldb, Some(0), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", sasldb.display()));
    chmod(&sasldb, 0o640);
}

/// Write a config file, dated a minute back: Postfix rereads a main.cf changed in the last
/// second or so, 300 ms at a time, until it is older (as if it were being edited), which
/// would add two seconds to every start.
fn write_config(path: &Path, text: &str) {
    let mut file =
        std::fs::File::create(path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
    file.write_all(text.as_bytes())
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    let past = SystemTime::now() - Duration::from_secs(60);
    file.set_modified(past)
        .unwrap_or_else(|e| panic!("dating {}: {e}", path.display()));
}

/// A port free on `ip` (and on 127.0.0.1, as [`crate::free_port`] checks), outside the
/// ephemeral range.
fn free_port_on(ip: Ipv4Addr) -> u16 {
    for _ in 0..1000 {
        let port = crate::free_port();
        if TcpListener::bind((ip, port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on {ip}")
}

/// The first line the server at `addr` sends.
fn greeting(addr: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\n") && line.len() < 512 {
        if stream.read(&mut byte)? == 0 {
            break;
        }
        line.push(byte[0]);
    }
    let _ = stream.write_all(b"QUIT\r\n");
    Ok(String::from_utf8_lossy(&line).trim_end().to_string())
}

/// The uid and gid of the `postfix` user (the Debian package makes it).
fn postfix_user() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("reading /etc/passwd");
    passwd
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            match fields.as_slice() {
                ["postfix", _, uid, gid, ..] => Some((uid.parse().ok()?, gid.parse().ok()?)),
                _ => None,
            }
        })
        .expect("no postfix user in /etc/passwd: the tests need the Debian package postfix")
}

/// `path` made absolute (Postfix's daemons run in the queue directory), which must exist.
fn absolute(path: &Path, what: &str) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|e| panic!("the TLS {what} {}: {e}", path.display()))
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

/// The order of a Maildir file name as Postfix's virtual agent makes it,
/// `<seconds>.V<dev>I<inode>M<microseconds>.<host>`: by time, then by name. (The name alone
/// orders deliveries of one second by inode.)
fn delivery_order(name: &str) -> (u64, u64, String) {
    let mut parts = name.split('.');
    let seconds = parts.next().and_then(|s| s.parse().ok());
    let micros = parts
        .next()
        .and_then(|unique| unique.rsplit_once('M'))
        .and_then(|(_, us)| us.parse().ok());
    match (seconds, micros) {
        (Some(s), Some(us)) => (s, us, name.to_string()),
        _ => (u64::MAX, 0, name.to_string()),
    }
}

/// The running (not zombie) processes in process group `pgid` that run a Postfix program.
fn group_members(pgid: i32) -> Vec<i32> {
    let Ok(proc) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    proc.filter_map(|entry| {
        let pid: i32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // pid (comm) state ppid pgrp ...: comm may hold anything, so read after its last ')'.
        let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
        let state = fields.next()?;
        let _ppid = fields.next()?;
        let pgrp: i32 = fields.next()?.parse().ok()?;
        if pgrp != pgid || state == "Z" || state == "X" {
            return None;
        }
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
        let postfix = exe.starts_with("/usr/lib/postfix") || exe.starts_with("/usr/sbin");
        postfix.then_some(pid)
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliveries_of_one_second_are_ordered_by_their_microseconds() {
        let mut names = vec![
            "1796230214.Vfe00I1M5.vm",
            "1796230213.Vfe00I98c0c1M910225.vm",
            "1796230213.Vfe00I98c0c5M067368.vm",
            "garbage",
        ];
        names.sort_by_key(|n| delivery_order(n));
        assert_eq!(
            names,
            [
                "1796230213.Vfe00I98c0c5M067368.vm",
                "1796230213.Vfe00I98c0c1M910225.vm",
                "1796230214.Vfe00I1M5.vm",
                "garbage",
            ]
        );
    }

    #[test]
    fn the_tls_of_a_session_is_read_from_the_first_received_header() {
        let tls = b"Return-Path: <a@o.test>\nDelivered-To: z@remote-a.test\n\
            Received: from c.test (unknown [127.0.0.1])\n\
            \t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits))\n\
            \tby mx.postfix.test (Postfix) with ESMTPS id 1;\n\
            Subject: s\n\nbody (using TLS\n";
        assert!(received_over_tls(tls));
        let plain = b"Return-Path: <a@o.test>\n\
            Received: from c.test (unknown [127.0.0.1])\n\
            \tby mx.postfix.test (Postfix) with ESMTP id 1;\n\
            Received: from elsewhere (using TLSv1.2)\n\
            Subject: s\n\nbody (using TLS\n";
        assert!(!received_over_tls(plain));
    }

    #[test]
    fn the_config_names_the_instance_directory_and_the_address() {
        let plain = Options {
            tls: None,
            login: None,
        };
        let main = main_cf(Path::new("/tmp/pf"), 102, 109, &plain);
        assert!(main.contains("queue_directory = /tmp/pf/queue\n"), "{main}");
        assert!(main.contains("virtual_uid_maps = static:102\n"), "{main}");
        assert!(
            main.ends_with("smtpd_tls_security_level = none\n"),
            "{main}"
        );
        assert!(
            main.contains("virtual_mailbox_domains = static:all\n"),
            "{main}"
        );
        assert!(!main.contains("sasl"), "{main}");
        let master = master_cf(SocketAddr::from(([127, 0, 0, 5], 20025)));
        assert!(
            master.contains("\n127.0.0.5:20025 inet n - n - - smtpd\n"),
            "{master}"
        );
    }

    #[test]
    fn a_smarthost_relays_only_for_a_client_that_signed_in() {
        let relay = Options {
            tls: Some((PathBuf::from("/c.pem"), PathBuf::from("/k.pem"))),
            login: Some(Login {
                user: "u".to_string(),
                password: "p".to_string(),
            }),
        };
        let main = main_cf(Path::new("/tmp/pf"), 102, 109, &relay);
        assert!(!main.contains("static:all"), "{main}");
        assert!(main.contains("\nvirtual_mailbox_domains =\n"), "{main}");
        assert!(main.contains("\ndefault_transport = virtual\n"), "{main}");
        assert!(
            main.contains(
                "\nsmtpd_relay_restrictions = permit_sasl_authenticated, \
                 reject_unauth_destination\n"
            ),
            "{main}"
        );
        assert!(main.contains("\nsmtpd_tls_auth_only = yes\n"), "{main}");
        assert!(
            main.contains("\ncyrus_sasl_config_path = /tmp/pf/etc/sasl\n"),
            "{main}"
        );
        assert!(
            main.contains(&format!("\nsmtpd_sasl_local_domain = {HOSTNAME}\n")),
            "{main}"
        );
        assert!(main.ends_with("smtpd_tls_key_file = /k.pem\n"), "{main}");
    }
}

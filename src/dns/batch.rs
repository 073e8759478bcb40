//! Batched UDP receive and send (Linux `recvmmsg`/`sendmmsg`): one system call moves up to
//! [`BATCH`] datagrams, where `recv_from`/`send_to` need two calls per query. Under load the
//! socket queue holds several queries at once; the kernel's per-call cost, not our code, is
//! what limits a core (DESIGN.md, "Fast path").
//!
//! The only unsafe code of meshdns, kept to these two calls: every pointer handed to the
//! kernel points into buffers owned by [`Batch`], valid and large enough for the lengths
//! given, and nothing reads them while the call runs.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;

/// Datagrams per system call.
pub const BATCH: usize = 32;
/// The largest query read (as hickory-server: 4096 bytes).
const MAX_QUERY: usize = 4096;

/// Receive buffers and addresses for one batch, reused from call to call.
pub struct Batch {
    bufs: Vec<u8>,
    addrs: Vec<libc::sockaddr_storage>,
    iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
    send_addrs: Vec<libc::sockaddr_storage>,
}

impl Default for Batch {
    fn default() -> Self {
        // SAFETY: sockaddr_storage, iovec and mmsghdr are plain C structs for which all-zero
        // bytes are a valid (empty) value.
        let zero_addr: libc::sockaddr_storage = unsafe { zeroed() };
        Batch {
            bufs: vec![0u8; BATCH * MAX_QUERY],
            addrs: vec![zero_addr; BATCH],
            iovecs: Vec::with_capacity(BATCH),
            headers: Vec::with_capacity(BATCH),
            send_addrs: vec![zero_addr; BATCH],
        }
    }
}

impl Batch {
    /// Waits for at least one datagram (up to the socket's read timeout), then takes every
    /// datagram already queued, up to [`BATCH`]. Returns how many were received.
    pub fn recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        self.iovecs.clear();
        self.headers.clear();
        for (i, chunk) in self.bufs.chunks_exact_mut(MAX_QUERY).enumerate() {
            self.iovecs.push(libc::iovec {
                iov_base: chunk.as_mut_ptr().cast(),
                iov_len: MAX_QUERY,
            });
            // SAFETY: mmsghdr is a plain C struct; all-zero is valid before we fill it.
            let mut h: libc::mmsghdr = unsafe { zeroed() };
            h.msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            self.headers.push(h);
        }
        for (h, iov) in self.headers.iter_mut().zip(self.iovecs.iter_mut()) {
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: `headers` holds BATCH initialised mmsghdr, each pointing at its own iovec
        // (into `bufs`, MAX_QUERY bytes) and its own sockaddr_storage; all outlive the call.
        let n = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                self.headers.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Datagram `i` of the last [`Batch::recv`] and its sender (`None`: not IPv4/IPv6).
    pub fn packet(&self, i: usize) -> (&[u8], Option<SocketAddr>) {
        let len = (self.headers[i].msg_len as usize).min(MAX_QUERY);
        let data = &self.bufs[i * MAX_QUERY..i * MAX_QUERY + len];
        (data, to_socket_addr(&self.addrs[i]))
    }

    /// Sends `replies` (at most [`BATCH`]) in as few calls as the kernel allows. An error on
    /// one datagram (e.g. an unreachable client) skips it.
    pub fn send(&mut self, socket: &UdpSocket, replies: &[(Vec<u8>, SocketAddr)]) {
        let mut done = 0;
        while done < replies.len() {
            let pending = &replies[done..replies.len().min(done + BATCH)];
            let mut iovecs: Vec<libc::iovec> = Vec::with_capacity(pending.len());
            let mut headers: Vec<libc::mmsghdr> = Vec::with_capacity(pending.len());
            for (i, (bytes, to)) in pending.iter().enumerate() {
                let len = from_socket_addr(*to, &mut self.send_addrs[i]);
                iovecs.push(libc::iovec {
                    iov_base: bytes.as_ptr() as *mut libc::c_void,
                    iov_len: bytes.len(),
                });
                // SAFETY: plain C struct, all-zero is valid before we fill it.
                let mut h: libc::mmsghdr = unsafe { zeroed() };
                h.msg_hdr.msg_name =
                    (&mut self.send_addrs[i] as *mut libc::sockaddr_storage).cast();
                h.msg_hdr.msg_namelen = len;
                headers.push(h);
            }
            for (h, iov) in headers.iter_mut().zip(iovecs.iter_mut()) {
                h.msg_hdr.msg_iov = iov;
                h.msg_hdr.msg_iovlen = 1;
            }
            // SAFETY: each header points at one iovec (into a reply buffer of `replies`) and
            // one filled sockaddr in `send_addrs`; all outlive the call.
            let sent = unsafe {
                libc::sendmmsg(
                    socket.as_raw_fd(),
                    headers.as_mut_ptr(),
                    headers.len() as libc::c_uint,
                    0,
                )
            };
            if sent <= 0 {
                // The first datagram failed: skip it, send the rest.
                done += 1;
            } else {
                done += sent as usize;
            }
        }
    }
}

fn to_socket_addr(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match s.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in here (family AF_INET); sockaddr_storage
            // is large enough and suitably aligned for it.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6 (family AF_INET6).
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Writes `addr` into `s`; returns its length.
fn from_socket_addr(addr: SocketAddr, s: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(v4) => {
            // SAFETY: sockaddr_storage is large enough and aligned for sockaddr_in.
            let a = unsafe { &mut *(s as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            a.sin_family = libc::AF_INET as libc::sa_family_t;
            a.sin_port = v4.port().to_be();
            a.sin_addr.s_addr = u32::from(*v4.ip()).to_be();
            size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(v6) => {
            // SAFETY: as above, for sockaddr_in6.
            let a =
                unsafe { &mut *(s as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            a.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            a.sin6_port = v6.port().to_be();
            a.sin6_flowinfo = v6.flowinfo();
            a.sin6_addr.s6_addr = v6.ip().octets();
            a.sin6_scope_id = v6.scope_id();
            size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip() {
        for a in [
            "127.0.0.1:53",
            "[::1]:5353",
            "10.1.2.3:65535",
            "[fd00::5%0]:1",
        ] {
            let addr: SocketAddr = a.parse().unwrap();
            // SAFETY: all-zero sockaddr_storage is valid.
            let mut s: libc::sockaddr_storage = unsafe { zeroed() };
            from_socket_addr(addr, &mut s);
            assert_eq!(to_socket_addr(&s), Some(addr));
        }
    }

    #[test]
    fn a_batch_round_trips_datagrams() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        server
            .set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..5u8 {
            client
                .send_to(&[i; 3], server.local_addr().unwrap())
                .unwrap();
        }
        let mut batch = Batch::default();
        let mut got = Vec::new();
        while got.len() < 5 {
            let n = batch.recv(&server).unwrap();
            let mut replies = Vec::new();
            for i in 0..n {
                let (data, from) = batch.packet(i);
                assert_eq!(from, Some(client.local_addr().unwrap()));
                got.push(data[0]);
                replies.push((vec![data[0] + 100], client.local_addr().unwrap()));
            }
            batch.send(&server, &replies);
        }
        assert_eq!(got, [0, 1, 2, 3, 4]);
        let mut buf = [0u8; 8];
        for i in 0..5u8 {
            let (n, _) = client.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], &[100 + i]);
        }
    }
}

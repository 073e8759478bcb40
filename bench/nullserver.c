/* nullserver: the load generator's ceiling for scripts/bench.
 *
 * A UDP "DNS server" that does the least a server can do: it receives a batch of datagrams
 * (recvmmsg), turns each into a response in place (QR=1, RCODE=REFUSED, the question echoed,
 * nothing else) and sends the batch back (sendmmsg). dnsperf's rate against it, pinned to
 * one core, is the most dnsperf can measure on this machine: no real server can look faster.
 *
 *   gcc -O2 -o nullserver bench/nullserver.c && taskset -c 0 ./nullserver 127.0.0.1 5399
 *
 * Runs until killed (SIGTERM/SIGINT).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define BATCH 64
#define BUFSZ 1500

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s ADDR PORT\n", argv[0]);
        return 2;
    }
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) {
        perror("socket");
        return 1;
    }
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(argv[2]))};
    if (inet_pton(AF_INET, argv[1], &addr.sin_addr) != 1) {
        fprintf(stderr, "bad address %s\n", argv[1]);
        return 2;
    }
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        perror("bind");
        return 1;
    }
    static char bufs[BATCH][BUFSZ];
    static struct sockaddr_in peers[BATCH];
    static struct iovec iov[BATCH];
    static struct mmsghdr msgs[BATCH];
    for (;;) {
        for (int i = 0; i < BATCH; i++) {
            iov[i].iov_base = bufs[i];
            iov[i].iov_len = BUFSZ;
            memset(&msgs[i].msg_hdr, 0, sizeof msgs[i].msg_hdr);
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            msgs[i].msg_hdr.msg_name = &peers[i];
            msgs[i].msg_hdr.msg_namelen = sizeof peers[i];
        }
        int n = recvmmsg(fd, msgs, BATCH, MSG_WAITFORONE, NULL);
        if (n < 0) {
            perror("recvmmsg");
            continue;
        }
        int out = 0;
        for (int i = 0; i < n; i++) {
            unsigned len = msgs[i].msg_len;
            unsigned char *p = (unsigned char *)bufs[i];
            if (len < 12 || (p[2] & 0x80))
                continue; /* not a query: drop */
            p[2] = (unsigned char)((p[2] & 0x79) | 0x80); /* QR=1, keep opcode and RD, AA=TC=0 */
            p[3] = 5;                                     /* RA=0, RCODE=REFUSED */
            p[6] = p[7] = p[8] = p[9] = p[10] = p[11] = 0; /* no answer, authority, additional */
            /* keep the question; drop whatever follows it (an OPT record) */
            unsigned off = 12;
            if (p[4] == 0 && p[5] == 1) {
                while (off < len && p[off] != 0 && p[off] < 64)
                    off += p[off] + 1u;
                off += 5; /* root label + QTYPE + QCLASS */
                if (off > len)
                    off = 12, p[4] = p[5] = 0;
            } else {
                p[4] = p[5] = 0;
            }
            iov[i].iov_len = off;
            if (out != i)
                msgs[out] = msgs[i];
            out++;
        }
        for (int sent = 0; sent < out;) {
            int m = sendmmsg(fd, msgs + sent, (unsigned)(out - sent), 0);
            if (m < 0) {
                perror("sendmmsg");
                break;
            }
            sent += m;
        }
    }
}

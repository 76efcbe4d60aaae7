/* The fan-out bench's load generator in C: many WebSocket subscribers on one epoll loop.
 *
 * What bench/fanout.py's asyncio generator does, at a fraction of its CPU, so that on a
 * 2-core machine the server under test, not the generator, is what the bench measures.
 *
 *   fanout_load PORT SUBSCRIBERS EXPECTED LIMIT_SECONDS STALLED PAYLOAD_SIZE [SUBSCRIBE_HEX]
 *
 * Each subscriber sends the HTTP upgrade (offering tickwire.v2 when SUBSCRIBE_HEX is
 * given, then sending that message in a masked frame with a zero key), reads unmasked
 * server frames, answers pings, and for every binary frame of at least PAYLOAD_SIZE bytes
 * records now - the publish time in its last 8 bytes (CLOCK_MONOTONIC nanoseconds, the
 * clock of Python's time.monotonic_ns). STALLED of them (every tenth) stop reading after
 * the upgrade. Prints JSON lines, as the Python generator does: {"event": "connected"} once
 * every subscriber is upgraded, then {"event": "result", ...} when the readers have
 * EXPECTED messages each or LIMIT_SECONDS have passed; then waits to be killed.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BUFFER (256 * 1024)

typedef struct {
    int fd;
    int upgraded, stall;
    size_t used;
    unsigned char *buf;
    long received;
    int64_t first_sent, last;
    int64_t *lat;
    long nlat, caplat;
} sub_t;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void send_all(int fd, const unsigned char *data, size_t n) {
    while (n > 0) {
        ssize_t w = send(fd, data, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EAGAIN || errno == EINTR) continue; /* tiny writes: spin briefly */
            return;
        }
        data += w;
        n -= (size_t)w;
    }
}

static int cmp64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static unsigned char *subscribe;
static size_t subscribe_len;
static long payload_size;

/* Parse what a subscriber has buffered; returns 0, or -1 when it must stop. */
static int consume(sub_t *s, int64_t now) {
    size_t pos = 0;
    if (!s->upgraded) {
        unsigned char *end = memmem(s->buf, s->used, "\r\n\r\n", 4);
        if (!end) return 0;
        if (s->used < 12 || memcmp(s->buf, "HTTP/1.1 101", 12) != 0) {
            fprintf(stderr, "upgrade refused: %.60s\n", s->buf);
            return -1;
        }
        pos = (size_t)(end - s->buf) + 4;
        s->upgraded = 1;
        if (subscribe) {
            unsigned char head[8] = {0x82, 0, 0, 0, 0, 0, 0, 0};
            size_t h;
            if (subscribe_len < 126) {
                head[1] = 0x80 | (unsigned char)subscribe_len;
                h = 6; /* 2 + a zero mask key */
            } else {
                head[1] = 0x80 | 126;
                head[2] = (unsigned char)(subscribe_len >> 8);
                head[3] = (unsigned char)subscribe_len;
                h = 8;
            }
            send_all(s->fd, head, h);
            send_all(s->fd, subscribe, subscribe_len);
        }
        if (s->stall) {
            s->used = 0;
            return 0;
        }
    }
    while (s->used - pos >= 2) {
        unsigned char *f = s->buf + pos;
        uint64_t len = f[1] & 0x7F;
        size_t head = 2;
        if (len == 126) {
            if (s->used - pos < 4) break;
            len = ((uint64_t)f[2] << 8) | f[3];
            head = 4;
        } else if (len == 127) {
            if (s->used - pos < 10) break;
            len = 0;
            for (int i = 0; i < 8; i++) len = (len << 8) | f[2 + i];
            head = 10;
        }
        if (s->used - pos < head + len) break;
        int opcode = f[0] & 0x0F;
        unsigned char *body = f + head;
        if (opcode == 2 && (long)len >= payload_size) {
            int64_t sent = 0;
            for (int i = 0; i < 8; i++) sent = (sent << 8) | body[len - 8 + i];
            if (!s->received) s->first_sent = sent;
            if (s->nlat == s->caplat) {
                s->caplat = s->caplat ? 2 * s->caplat : 1024;
                s->lat = realloc(s->lat, (size_t)s->caplat * sizeof(int64_t));
            }
            s->lat[s->nlat++] = now - sent;
            s->received++;
            s->last = now;
        } else if (opcode == 9 && len < 126) { /* ping: pong with a zero mask key */
            unsigned char pong[6 + 125] = {0x8A, (unsigned char)(0x80 | len), 0, 0, 0, 0};
            memcpy(pong + 6, body, len);
            send_all(s->fd, pong, 6 + len);
        } else if (opcode == 8) {
            return -1;
        }
        pos += head + len;
    }
    memmove(s->buf, s->buf + pos, s->used - pos);
    s->used -= pos;
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 7) {
        fprintf(stderr, "usage: %s PORT SUBSCRIBERS EXPECTED LIMIT STALLED SIZE [HEX]\n", argv[0]);
        return 2;
    }
    int port = atoi(argv[1]);
    long n = atol(argv[2]), expected = atol(argv[3]), stalled = atol(argv[5]);
    double limit = atof(argv[4]);
    payload_size = atol(argv[6]);
    if (argc > 7) {
        subscribe_len = strlen(argv[7]) / 2;
        subscribe = malloc(subscribe_len);
        for (size_t i = 0; i < subscribe_len; i++) sscanf(argv[7] + 2 * i, "%2hhx", &subscribe[i]);
    }
    struct rlimit rl = {(rlim_t)n + 64, (rlim_t)n + 64};
    setrlimit(RLIMIT_NOFILE, &rl);
    sub_t *subs = calloc((size_t)n, sizeof(sub_t));
    int ep = epoll_create1(0);
    char request[512];
    int rlen = snprintf(request, sizeof request,
                        "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                        "Sec-WebSocket-Version: 13\r\n%s\r\n",
                        subscribe ? "Sec-WebSocket-Protocol: tickwire.v2\r\n" : "");
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    for (long i = 0; i < n; i++) {
        sub_t *s = &subs[i];
        s->stall = (i % 10 == 0) && (i / 10 < stalled);
        s->buf = malloc(BUFFER);
        s->fd = socket(AF_INET, SOCK_STREAM, 0);
        int one = 1;
        setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (connect(s->fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
            perror("connect");
            return 1;
        }
        send_all(s->fd, (const unsigned char *)request, (size_t)rlen);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = s};
        epoll_ctl(ep, EPOLL_CTL_ADD, s->fd, &ev);
    }
    int64_t start = now_ns(), deadline = start + (int64_t)(limit * 1e9);
    int connected = 0;
    struct epoll_event events[256];
    while (now_ns() < deadline) {
        int k = epoll_wait(ep, events, 256, 100);
        int64_t now = now_ns();
        for (int e = 0; e < k; e++) {
            sub_t *s = events[e].data.ptr;
            ssize_t r = recv(s->fd, s->buf + s->used, BUFFER - s->used, 0);
            if (r <= 0) {
                epoll_ctl(ep, EPOLL_CTL_DEL, s->fd, NULL);
                continue;
            }
            s->used += (size_t)r;
            if (consume(s, now) < 0 || (s->stall && s->upgraded)) {
                epoll_ctl(ep, EPOLL_CTL_DEL, s->fd, NULL); /* a stalled one reads no more */
            }
        }
        long upgraded = 0, done = 0, readers = 0;
        for (long i = 0; i < n; i++) {
            upgraded += subs[i].upgraded;
            if (!subs[i].stall) {
                readers++;
                done += subs[i].received >= expected;
            }
        }
        if (!connected && upgraded == n) {
            printf("{\"event\": \"connected\"}\n");
            fflush(stdout);
            connected = 1;
        }
        if (connected && done == readers) break;
    }
    long delivered = 0, total = 0;
    int64_t first = 0, last = 0;
    for (long i = 0; i < n; i++) {
        if (subs[i].stall) continue;
        delivered += subs[i].received;
        total += subs[i].nlat;
        if (subs[i].received) {
            if (!first || subs[i].first_sent < first) first = subs[i].first_sent;
            if (subs[i].last > last) last = subs[i].last;
        }
    }
    int64_t *all = malloc((size_t)(total ? total : 1) * sizeof(int64_t));
    long at = 0;
    for (long i = 0; i < n; i++) {
        if (subs[i].stall) continue;
        for (long j = 0; j < subs[i].nlat; j++) all[at++] = subs[i].lat[j] / 1000;
    }
    qsort(all, (size_t)total, sizeof(int64_t), cmp64);
    printf("{\"event\": \"result\", \"delivered\": %ld, \"first_sent\": %lld, "
           "\"last_receive\": %lld, \"latencies_us\": [",
           delivered, (long long)first, (long long)last);
    for (long i = 0; i < total; i++) printf(i ? ", %lld" : "%lld", (long long)all[i]);
    printf("]}\n");
    fflush(stdout);
    pause(); /* held open until the orchestrator stops this process */
    return 0;
}

/*
 * recvtty: receive a container's console master over a unix socket.
 *
 * A stand-in for runc's contrib/cmd/recvtty (Go, not built here), with its
 * command line: recvtty [--mode single|null] [--pid-file F] [--no-stdin] SOCK.
 * hack/runc-suite compiles it and runc's integration suite starts it as
 * $RECVTTY. It is C, not a script, because the suite starts it in the
 * background and runs the runtime at once: the socket must exist within a
 * millisecond or two, as with the Go binary.
 *
 * single: accept one connection, take the pty master it carries (SCM_RIGHTS),
 *         clear ONLCR as runc's does, copy master -> stdout and stdin ->
 *         master (unless --no-stdin) until the pty closes, then exit.
 * null:   accept connections forever and drain every master, all in this one
 *         process, so that killing it hangs up every console (the suite's
 *         teardown relies on that, as with runc's recvtty).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <termios.h>
#include <unistd.h>

static void die(const char *what)
{
	fprintf(stderr, "[recvtty] fatal error: %s: %s\n", what, strerror(errno));
	exit(1);
}

static int listen_on(const char *path)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0)
		die("socket");
	if (strlen(path) >= sizeof(addr.sun_path)) {
		errno = ENAMETOOLONG;
		die(path);
	}
	strcpy(addr.sun_path, path);
	if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0)
		die(path);
	if (listen(fd, 16) < 0)
		die("listen");
	return fd;
}

/* The fd a runtime sends with SCM_RIGHTS, or -1. */
static int recv_fd(int conn)
{
	char buf[4096];
	char cbuf[CMSG_SPACE(sizeof(int))];
	struct iovec iov = { .iov_base = buf, .iov_len = sizeof(buf) };
	struct msghdr msg = {
		.msg_iov = &iov, .msg_iovlen = 1,
		.msg_control = cbuf, .msg_controllen = sizeof(cbuf),
	};
	struct cmsghdr *c;
	int fd;

	if (recvmsg(conn, &msg, MSG_CMSG_CLOEXEC) < 0)
		return -1;
	c = CMSG_FIRSTHDR(&msg);
	if (!c || c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
		return -1;
	memcpy(&fd, CMSG_DATA(c), sizeof(int));
	return fd;
}

static int copy_once(int from, int to)
{
	char buf[65536];
	ssize_t n = read(from, buf, sizeof(buf));
	ssize_t off = 0;

	if (n <= 0)
		return -1;
	while (to >= 0 && off < n) {
		ssize_t w = write(to, buf + off, n - off);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		off += w;
	}
	return 0;
}

static void single(const char *path, int no_stdin)
{
	int ln = listen_on(path), conn, master;
	struct termios t;

	conn = accept4(ln, NULL, NULL, SOCK_CLOEXEC);
	if (conn < 0)
		die("accept");
	close(ln);
	master = recv_fd(conn);
	if (master < 0)
		die("receiving the console master");
	close(conn);
	if (tcgetattr(master, &t) == 0) {
		t.c_oflag &= ~ONLCR;
		tcsetattr(master, TCSANOW, &t);
	}
	for (;;) {
		struct pollfd p[2] = { { .fd = master, .events = POLLIN }, { .fd = no_stdin ? -1 : 0, .events = POLLIN } };

		if (poll(p, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			die("poll");
		}
		if (p[0].revents && copy_once(master, 1) < 0)
			break;
		if (p[1].revents && copy_once(0, master) < 0)
			no_stdin = 1;
	}
	close(master);
}

static void null_mode(const char *path)
{
	int ln = listen_on(path);
	struct pollfd p[1024];
	int n = 1;

	p[0].fd = ln;
	p[0].events = POLLIN;
	for (;;) {
		if (poll(p, n, -1) < 0) {
			if (errno == EINTR)
				continue;
			die("poll");
		}
		for (int i = n - 1; i >= 1; i--) {
			if (p[i].revents && copy_once(p[i].fd, -1) < 0) {
				close(p[i].fd);
				p[i] = p[--n];
			}
		}
		if (p[0].revents & POLLIN) {
			int conn = accept4(ln, NULL, NULL, SOCK_CLOEXEC), m;

			if (conn < 0)
				continue;
			m = recv_fd(conn);
			close(conn);
			if (m >= 0 && n < (int)(sizeof(p) / sizeof(p[0]))) {
				p[n].fd = m;
				p[n].events = POLLIN;
				n++;
			} else if (m >= 0) {
				close(m);
			}
		}
	}
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "mode", required_argument, NULL, 'm' },
		{ "pid-file", required_argument, NULL, 'p' },
		{ "no-stdin", no_argument, NULL, 'n' },
		{ 0 },
	};
	const char *mode = "single", *pid_file = NULL;
	int no_stdin = 0, c;

	while ((c = getopt_long(argc, argv, "m:", opts, NULL)) != -1) {
		switch (c) {
		case 'm': mode = optarg; break;
		case 'p': pid_file = optarg; break;
		case 'n': no_stdin = 1; break;
		default:
			fprintf(stderr, "usage: recvtty [--mode single|null] [--pid-file F] [--no-stdin] SOCK\n");
			return 2;
		}
	}
	if (optind != argc - 1) {
		fprintf(stderr, "usage: recvtty [--mode single|null] [--pid-file F] [--no-stdin] SOCK\n");
		return 2;
	}
	if (pid_file) {
		FILE *f = fopen(pid_file, "w");

		if (!f)
			die(pid_file);
		fprintf(f, "%d", getpid());
		fclose(f);
	}
	if (strcmp(mode, "single") == 0)
		single(argv[optind], no_stdin);
	else if (strcmp(mode, "null") == 0)
		null_mode(argv[optind]);
	else {
		fprintf(stderr, "recvtty: --mode must be single or null\n");
		return 2;
	}
	return 0;
}

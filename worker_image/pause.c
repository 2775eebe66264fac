/*
 * pause: the sandbox container of every pod on a node that cannot pull registry.k8s.io/pause.
 *
 * The container runtime starts it first in each pod; it holds the pod's namespaces open for the
 * pod's other containers. It does nothing else: it sleeps until SIGINT or SIGTERM (then exits 0,
 * so a pod stops promptly), and, being PID 1 when the pod shares its PID namespace, reaps every
 * child reparented to it so none stays a zombie. scripts/build-image.sh compiles it with
 * `gcc -static -Os` into the image localhost/icechunk-operator/pause:1 (one static binary, no
 * libraries, nothing else in the image).
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int signo) {
    (void)signo;
    _exit(0);
}

static void reap(int signo) {
    int saved = errno;
    (void)signo;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
    errno = saved;
}

int main(int argc, char **argv) {
    struct sigaction on_stop, on_child;

    if (argc > 1 && strcmp(argv[1], "-v") == 0) {
        puts("pause (icechunk-operator) 1");
        return 0;
    }
    memset(&on_stop, 0, sizeof on_stop);
    memset(&on_child, 0, sizeof on_child);
    on_stop.sa_handler = stop;
    on_child.sa_handler = reap;
    on_child.sa_flags = SA_NOCLDSTOP | SA_RESTART;
    sigemptyset(&on_stop.sa_mask);
    sigemptyset(&on_child.sa_mask);
    if (sigaction(SIGINT, &on_stop, NULL) < 0 || sigaction(SIGTERM, &on_stop, NULL) < 0 ||
        sigaction(SIGCHLD, &on_child, NULL) < 0) {
        perror("pause: sigaction");
        return 1;
    }
    for (;;) {
        pause();
    }
}

// A statically linked server (as Go and musl builds are): its bind() never reaches a preloaded library, so it
// meets baton's listener with EADDRINUSE, says so the way servers do, and exits.
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(void) {
    const char *port = getenv("PORT");
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons(port ? atoi(port) : 8000)};
    inet_pton(AF_INET, "127.0.0.1", &address.sin_addr);
    if (bind(fd, (struct sockaddr *)&address, sizeof address) != 0) {
        fprintf(stderr, "listen tcp 127.0.0.1:%s: bind: %s\n", port ? port : "8000", strerror(errno));
        return 1;
    }
    listen(fd, 16);
    for (;;) close(accept(fd, NULL, NULL));
}

/* LD_PRELOAD shim for tests/test_powerloss.py: records every write, truncate, sync and
 * unlink of files whose name starts with "catalog.db" (the SQLite catalog and its WAL) to
 * the log named by POWERLOSS_LOG, then does the real call. The test replays the log up to
 * a random instant, keeping what was synced and a random part of what was not: the disk as
 * a power cut at that instant could leave it.
 *
 * Record: kind (1 byte: W write, T truncate, S sync, U unlink, C create), path length (u32),
 * offset (i64), length (i64), the path, then `length` bytes of data for W. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#define MAX_FD 4096
static char *paths[MAX_FD];
static int log_fd = -1;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static int (*real_open)(const char *, int, ...);

static void init(void) {
    if (!real_write) real_write = dlsym(RTLD_NEXT, "write");
    if (!real_pwrite) real_pwrite = dlsym(RTLD_NEXT, "pwrite64");
    if (!real_open) real_open = dlsym(RTLD_NEXT, "open64");
    if (log_fd < 0) {
        const char *name = getenv("POWERLOSS_LOG");
        if (name) log_fd = real_open(name, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    }
}

static int watched(const char *path) {
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    return strncmp(base, "catalog.db", 10) == 0 && strstr(base, "-shm") == NULL;
}

static void put(const void *buf, size_t n) {
    const char *p = buf;
    while (n > 0) {
        ssize_t w = real_write(log_fd, p, n);
        if (w <= 0) return;
        p += w;
        n -= (size_t)w;
    }
}

static void record(char kind, const char *path, int64_t offset, int64_t len, const void *data) {
    pthread_mutex_lock(&lock);
    init();
    if (log_fd >= 0 && path) {
        uint32_t plen = (uint32_t)strlen(path);
        put(&kind, 1);
        put(&plen, 4);
        put(&offset, 8);
        put(&len, 8);
        put(path, plen);
        if (kind == 'W' && len > 0) put(data, (size_t)len);
    }
    pthread_mutex_unlock(&lock);
}

static const char *fd_path(int fd) { return fd >= 0 && fd < MAX_FD ? paths[fd] : NULL; }

static int opened(int fd, const char *path, int flags, int existed) {
    if (fd >= 0 && fd < MAX_FD && watched(path)) {
        char *full = realpath(path, NULL);
        pthread_mutex_lock(&lock);
        free(paths[fd]);
        paths[fd] = full;
        pthread_mutex_unlock(&lock);
        if (!existed && (flags & O_CREAT)) record('C', full, 0, 0, NULL);
    }
    return fd;
}

static int open_common(const char *path, int flags, mode_t mode) {
    init();
    int existed = access(path, F_OK) == 0;
    return opened(real_open(path, flags, mode), path, flags, existed);
}

int open(const char *path, int flags, ...) {
    va_list ap;
    va_start(ap, flags);
    mode_t mode = (flags & O_CREAT) ? va_arg(ap, mode_t) : 0;
    va_end(ap);
    return open_common(path, flags, mode);
}

int open64(const char *path, int flags, ...) {
    va_list ap;
    va_start(ap, flags);
    mode_t mode = (flags & O_CREAT) ? va_arg(ap, mode_t) : 0;
    va_end(ap);
    return open_common(path, flags, mode);
}

int close(int fd) {
    static int (*real_close)(int);
    if (!real_close) real_close = dlsym(RTLD_NEXT, "close");
    if (fd >= 0 && fd < MAX_FD && paths[fd]) {
        pthread_mutex_lock(&lock);
        free(paths[fd]);
        paths[fd] = NULL;
        pthread_mutex_unlock(&lock);
    }
    return real_close(fd);
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off_t offset) {
    init();
    ssize_t done = real_pwrite(fd, buf, n, offset);
    if (done > 0 && fd_path(fd)) record('W', fd_path(fd), offset, done, buf);
    return done;
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t offset) {
    return pwrite64(fd, buf, n, offset);
}

ssize_t write(int fd, const void *buf, size_t n) {
    init();
    if (!fd_path(fd)) return real_write(fd, buf, n);
    off_t offset = lseek(fd, 0, SEEK_CUR);
    ssize_t done = real_write(fd, buf, n);
    if (done > 0) record('W', fd_path(fd), offset, done, buf);
    return done;
}

static int sync_common(int fd, const char *name) {
    int (*real)(int) = dlsym(RTLD_NEXT, name);
    int rc = real(fd);
    if (rc == 0 && fd_path(fd)) record('S', fd_path(fd), 0, 0, NULL);
    return rc;
}

int fsync(int fd) { return sync_common(fd, "fsync"); }
int fdatasync(int fd) { return sync_common(fd, "fdatasync"); }

int ftruncate64(int fd, off_t size) {
    static int (*real)(int, off_t);
    if (!real) real = dlsym(RTLD_NEXT, "ftruncate64");
    int rc = real(fd, size);
    if (rc == 0 && fd_path(fd)) record('T', fd_path(fd), size, 0, NULL);
    return rc;
}

int ftruncate(int fd, off_t size) { return ftruncate64(fd, size); }

int unlink(const char *path) {
    static int (*real)(const char *);
    if (!real) real = dlsym(RTLD_NEXT, "unlink");
    char *full = watched(path) ? realpath(path, NULL) : NULL;
    int rc = real(path);
    if (rc == 0 && full) record('U', full, 0, 0, NULL);
    free(full);
    return rc;
}

# Escape probes, run inside a sandbox. Each prints one line:
#   BLOCKED <how>   the attempt failed the expected way
#   ESCAPED <what>  it worked (the test fails)
# Nothing here harms the host when it "escapes": only preconditions are
# checked (access() instead of a write, a read of one line).
import ctypes, errno, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def sc(nr, *args):
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    return r, ctypes.get_errno()
def verdict(r, e, want):
    if r >= 0:
        print("ESCAPED syscall returned %d" % r)
    elif e == want:
        print("BLOCKED %s" % errno.errorcode.get(e, e))
    else:
        print("ESCAPED? unexpected errno %s" % errno.errorcode.get(e, e))
def first_line(path):
    try:
        with open(path, "rb") as f:
            return f.readline()
    except OSError as ex:
        return ("ERR %s" % errno.errorcode.get(ex.errno, ex.errno)).encode()
p = sys.argv[1]
if p == "open_by_handle_at":
    # name_to_handle_at(AT_FDCWD, "/usr", handle, &mnt, 0), then open_by_handle_at
    buf = ctypes.create_string_buffer(136); ctypes.memmove(buf, (128).to_bytes(4, "little"), 4)
    mnt = ctypes.c_int(0)
    r, e = sc(303, -100, ctypes.addressof(ctypes.create_string_buffer(b"/usr")), ctypes.addressof(buf), ctypes.addressof(mnt), 0)
    if r >= 0:
        print("ESCAPED name_to_handle_at worked"); sys.exit()
    r2, e2 = sc(304, os.open("/usr", os.O_RDONLY), ctypes.addressof(buf), os.O_RDONLY)
    verdict(r2, e2, errno.EPERM)
elif p == "sysctl_writable":
    bad = [x for x in ("/proc/sys/kernel/core_pattern", "/proc/sys/vm/drop_caches", "/proc/sys/kernel/modprobe") if os.access(x, os.W_OK)]
    print("ESCAPED writable: %s" % bad if bad else "BLOCKED EROFS")
elif p == "kmsg":
    l = first_line("/proc/kmsg")
    print("BLOCKED empty" if l in (b"",) or l.startswith(b"ERR") else "ESCAPED %r" % l[:60])
elif p == "syslog":
    r, e = sc(103, 3, ctypes.addressof(ctypes.create_string_buffer(4096)), 4096)  # SYSLOG_ACTION_READ_ALL
    verdict(r, e, errno.EPERM)
elif p == "kallsyms":
    l = first_line("/proc/kallsyms")
    a = l.split()[0] if l.split() else b""
    print("BLOCKED zero addresses" if a.strip(b"0") == b"" else "ESCAPED %r" % l[:60])
elif p in ("keys", "timer_list", "kcore", "sched_debug"):
    path = "/proc/" + p
    if not os.path.exists(path):
        print("BLOCKED absent on this kernel")
    else:
        l = first_line(path)
        print("BLOCKED empty" if l == b"" or l.startswith(b"ERR") else "ESCAPED %r" % l[:60])
elif p == "keyctl":
    verdict(*sc(250, 0, -4, 0), errno.EPERM)  # KEYCTL_GET_KEYRING_ID, user keyring
elif p == "add_key":
    verdict(*sc(248, ctypes.addressof(ctypes.create_string_buffer(b"user")), ctypes.addressof(ctypes.create_string_buffer(b"x")), 0, 0, -4), errno.EPERM)
elif p == "bpf_map_create":
    attr = (2).to_bytes(4, "little") + (4).to_bytes(4, "little") * 2 + (1).to_bytes(4, "little") + bytes(112)
    b = ctypes.create_string_buffer(attr, len(attr))
    verdict(*sc(321, 0, ctypes.addressof(b), len(attr)), errno.EPERM)
elif p == "perf_event_open":
    attr = bytearray(128); attr[0:4] = (1).to_bytes(4, "little"); attr[4:8] = (128).to_bytes(4, "little")  # SOFTWARE, size
    b = ctypes.create_string_buffer(bytes(attr), 128)
    verdict(*sc(298, ctypes.addressof(b), -1, 0, -1, 0), errno.EPERM)  # system-wide on cpu 0
elif p == "userfaultfd":
    verdict(*sc(323, 0), errno.EPERM)
elif p == "io_uring":
    verdict(*sc(425, 8, ctypes.addressof(ctypes.create_string_buffer(120))), errno.EPERM)
elif p == "clone3":
    verdict(*sc(435, 0, 0), errno.ENOSYS)
elif p == "x32":
    verdict(*sc(0x40000000 | 39), errno.ENOSYS)
elif p == "personality":
    verdict(*sc(135, 0x0040000), errno.EPERM)  # ADDR_NO_RANDOMIZE
elif p == "settime":
    verdict(*sc(227, 0, ctypes.addressof(ctypes.create_string_buffer(16))), errno.EPERM)
elif p == "statmount":
    # statmount(2) (Linux 6.8) is newer than the allow list: not on it, so ENOSYS
    req = (0).to_bytes(4, "little") + bytes(4) + (0).to_bytes(8, "little") * 2
    b = ctypes.create_string_buffer(req, 24)
    verdict(*sc(457, ctypes.addressof(b), ctypes.addressof(ctypes.create_string_buffer(512)), 512, 0), errno.ENOSYS)
elif p == "kcmp":
    verdict(*sc(312, os.getpid(), os.getpid(), 0, 0, 0), errno.EPERM)  # KCMP_FILE, itself: allowed without the filter
elif p == "modify_ldt":
    verdict(*sc(154, 0, ctypes.addressof(ctypes.create_string_buffer(64)), 64), errno.EPERM)
elif p == "fanotify":
    verdict(*sc(300, 0x200, 0), errno.EPERM)  # FAN_REPORT_FID: allowed unprivileged since 5.13
elif p == "vsock":
    verdict(*sc(41, 40, 1, 0), errno.EAFNOSUPPORT)  # socket(AF_VSOCK, SOCK_STREAM)
elif p == "ptrace_init":
    verdict(*sc(101, 16, 1, 0, 0), errno.EPERM)  # PTRACE_ATTACH to PID 1 (the hands)
elif p == "mknod":
    try:
        os.mknod("/tmp/x-null", 0o20666, os.makedev(1, 3)); print("ESCAPED mknod worked")
    except OSError as ex:
        print("BLOCKED %s" % errno.errorcode.get(ex.errno))
elif p == "status":
    st = dict(l.split(":", 1) for l in open("/proc/self/status") if ":" in l)
    got = {k: st[k].strip() for k in ("CapEff", "CapBnd", "CapPrm", "CapAmb", "NoNewPrivs", "Seccomp")}
    want = {"CapEff": "00000000800405fb", "CapBnd": "00000000800405fb", "CapPrm": "00000000800405fb",
            "CapAmb": "0000000000000000", "NoNewPrivs": "1", "Seccomp": "2"}
    bad = {k: v for k, v in got.items() if v != want[k]}
    print("ESCAPED %s" % bad if bad else "BLOCKED " + " ".join("%s=%s" % kv for kv in sorted(got.items())))
elif p == "uid_map":
    m = open("/proc/self/uid_map").read().split()
    print("BLOCKED uid_map %s" % " ".join(m) if m[:2] != ["0", "0"] else "ESCAPED root is host uid 0 (needs the user namespace layer)")
elif p == "other":
    # argv[2]: a pid of another sandbox, in the host's numbering
    pid = int(sys.argv[2]); seen = []
    try:
        os.kill(pid, 0); seen.append("signal")
    except OSError:
        pass
    r, e = sc(101, 16, pid, 0, 0)
    if r >= 0:
        seen.append("ptrace")
    try:
        open("/proc/%d/root/work/secret" % pid).read(); seen.append("files")
    except OSError:
        pass
    print("ESCAPED " + ",".join(seen) if seen else "BLOCKED ESRCH (its pids do not exist here)")
# Positive checks: confinement must not break real work. "OK ..." or "FAIL ...".
elif p == "forkbomb":
    import time
    kids = []; n = 0
    try:
        while n < 5000:
            k = os.fork()
            if k == 0:
                time.sleep(60); os._exit(0)
            kids.append(k); n += 1
        print("FAIL %d forks, no limit hit" % n)
    except OSError as ex:
        print("OK contained: fork failed with %s after %d forks" % (errno.errorcode.get(ex.errno), n))
    for k in kids:
        os.kill(k, 9)
    for k in kids:
        os.waitpid(k, 0)
elif p == "memhog":
    import subprocess
    r = subprocess.run([sys.executable, "-c", "b = bytearray(1 << 30)\nfor i in range(0, len(b), 4096): b[i] = 1"])
    print("OK contained: the hog was killed (signal %d)" % -r.returncode if r.returncode < 0 else "FAIL hog exited %d" % r.returncode)
elif p == "bind80":
    import socket
    s = socket.socket(); s.bind(("0.0.0.0", 80)); s.listen(1); print("OK bound port 80")
else:
    print("unknown probe " + p)

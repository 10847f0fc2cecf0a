/* test_alink_tools.c - the six tools of warmpool-hands, their limits and
 * error cases, with the hands as a plain child process. */
#include "alink_harness.h"

#include <sys/time.h>

/* ---- bash ---------------------------------------------------------------- */

static void bash_state_persists(void **state)
{
    struct hh h;
    (void)state;

    hh_start(&h);
    EXPECT_CALL(&h, "bash", "{\"command\":\"mkdir -p sub && cd sub && export WPVAR=42\"}",
                false, "(no output)");
    struct hres r;
    hh_call(&h, "bash", "{\"command\":\"pwd; echo $WPVAR\"}", &r);
    assert_false(r.is_error);
    char want[1200];
    snprintf(want, sizeof(want), "%s/sub\n42", h.work);
    /* The workdir may sit behind a symlink (/tmp): compare the tail. */
    assert_non_null(strstr(r.text, "/work/sub\n42"));
    (void)want;
    hres_free(&r);
    /* stdin is /dev/null: cat ends at once. */
    EXPECT_CALL(&h, "bash", "{\"command\":\"cat\"}", false, "(no output)");
    /* Quotes and newlines in commands go through intact. */
    EXPECT_CALL(&h, "bash", "{\"command\":\"echo 'it'\\\\''s'\\necho \\\"two\\\"\"}", false,
                "it's\ntwo");
    /* A syntax error is an error result, and the shell survives it. */
    hh_call(&h, "bash", "{\"command\":\"if then fi (\"}", &r);
    assert_true(r.is_error);
    hres_free(&r);
    EXPECT_CALL(&h, "bash", "{\"command\":\"echo $WPVAR\"}", false, "42");
    hh_stop(&h);
}

static void bash_status_and_errors(void **state)
{
    struct hh h;
    (void)state;

    hh_start(&h);
    EXPECT_CALL(&h, "bash", "{\"command\":\"exit 3\"}", true, "exit 3");
    EXPECT_CALL(&h, "bash", "{\"command\":\"echo oops >&2; false\"}", true, "oops");
    EXPECT_CALL(&h, "bash", "{}", true, "bash: command is required");
    EXPECT_CALL(&h, "bash", "{\"command\":5}", true, "bash: invalid input");
    EXPECT_CALL(&h, "bash", "{\"command\":\"printf '\\\\033[31mred\\\\033[0m\\\\n\\\\n'\"}",
                false, "red");
    EXPECT_CALL(&h, "nosuchtool", "{}", true, "Error: unknown tool nosuchtool");
    /* Invalid UTF-8 output arrives as U+FFFD, never as a broken frame. */
    EXPECT_CALL(&h, "bash", "{\"command\":\"printf 'a\\\\377b'\"}", false, "a\xef\xbf\xbd" "b");
    hh_stop(&h);
}

static void bash_restart(void **state)
{
    struct hh h;
    (void)state;

    hh_start(&h);
    EXPECT_CALL(&h, "bash", "{\"command\":\"export GONE=1; echo $GONE\"}", false, "1");
    EXPECT_CALL(&h, "bash", "{\"restart\":true}", false, "bash session restarted");
    EXPECT_CALL(&h, "bash", "{\"command\":\"echo x${GONE}x\"}", false, "xx");
    EXPECT_CALL(&h, "bash", "{\"restart\":true,\"command\":\"echo fresh\"}", false, "fresh");
    hh_stop(&h);
}

static void bash_output_truncated(void **state)
{
    struct hh h;
    struct hres r;
    (void)state;

    hh_start(&h);
    hh_call(&h, "bash", "{\"command\":\"seq 1 200000\"}", &r);
    assert_false(r.is_error);
    assert_true(strncmp(r.text, "[output truncated]\n", 19) == 0);
    assert_true(r.len <= 100 * 1024 + 19);
    assert_true(r.len > 100 * 1024 - 10);
    assert_true(strcmp(r.text + r.len - 7, "\n200000") == 0);
    hres_free(&r);
    hh_stop(&h);
}

/* A command larger than a pipe buffer goes through the shell's stdin in
 * pieces without blocking the hands. */
static void bash_long_command(void **state)
{
    struct hh h;
    struct hres r;
    size_t n = 300000;
    char *in = malloc(n + 64);
    (void)state;

    hh_start(&h);
    int k = sprintf(in, "{\"command\":\"echo ");
    memset(in + k, 'y', n);
    strcpy(in + k + n, " | wc -c\"}");
    hh_call(&h, "bash", in, &r);
    assert_false(r.is_error);
    assert_string_equal(r.text, "300001");
    hres_free(&r);
    free(in);
    /* Bytes, not characters: UTF-8 content is counted as written. */
    EXPECT_CALL(&h, "write", "{\"file_path\":\"u.txt\",\"content\":\"h\u00e9\u20ac\"}", false,
                "wrote 6 bytes to u.txt");
    EXPECT_CALL(&h, "read", "{\"file_path\":\"u.txt\"}", false, "h\xc3\xa9\xe2\x82\xac");
    hh_stop(&h);
}

static void bash_timeout_kills_everything(void **state)
{
    struct hh h;
    struct hres r;
    pid_t old[4];
    (void)state;

    hh_start(&h);
    /* A daemon from an earlier call (double fork + setsid) is not this
     * call's doing and survives its timeout. */
    EXPECT_CALL(&h, "bash", "{\"command\":\"(setsid sleep 1234.61 >/dev/null 2>&1 &)\"}", false,
                "(no output)");
    usleep(50000);
    /* A background job, a job in its own session, a subshell orphan, a
     * double-forked setsid orphan, and a foreground sleep. */
    hh_call_start(&h, "bash",
                  "{\"command\":\"sleep 1234.51 & setsid sleep 1234.52 & "
                  "(sleep 1234.53 &); (setsid sleep 1234.55 &); sleep 1234.54\",\"timeout_ms\":300}",
                  0, false, &r);
    hh_wait(&h, &r);
    assert_true(r.is_error);
    assert_string_equal(r.text, "bash: bash command timed out after 300ms");
    hres_free(&r);
    /* SIGKILL is asynchronous; allow the kernel a moment. */
    for (int i = 0; i < 100 && hh_proc_with("sleep 1234.5"); i++)
        usleep(20000);
    assert_false(hh_proc_with("sleep 1234.5"));
    assert_int_equal(hh_pids_with("sleep 1234.61", old, 4), 1);
    kill(old[0], SIGKILL);
    /* The next call gets a fresh shell. */
    EXPECT_CALL(&h, "bash", "{\"command\":\"echo alive\"}", false, "alive");
    /* Orphans are reaped (the hands are their subreaper here, PID 1 in a
     * sandbox): no zombie is left. */
    EXPECT_CALL(&h, "bash", "{\"command\":\"(sleep 0.05 &); (true &)\"}", false, "(no output)");
    usleep(300000);
    EXPECT_CALL(&h, "bash", "{\"command\":\"true\"}", false, "(no output)");
    assert_int_equal(hh_zombies_of(h.pid), 0);
    hh_stop(&h);
}

static void bash_100mb_bounded_memory(void **state)
{
    struct hh h;
    struct hres r;
    long before, after;
    (void)state;

    /* Under AddressSanitizer freed memory sits in a quarantine (up to
     * 256 MiB) and would count as peak RSS: turn it off for the hands so
     * the bound measures what the hands keep, not what ASan holds back. */
    const char *old = getenv("ASAN_OPTIONS");
    char opts[512];
    snprintf(opts, sizeof(opts), "%s%squarantine_size_mb=0", old ? old : "", old ? ":" : "");
    setenv("ASAN_OPTIONS", opts, 1);
    hh_start(&h);
    if (old)
        setenv("ASAN_OPTIONS", old, 1);
    else
        unsetenv("ASAN_OPTIONS");
    EXPECT_CALL(&h, "bash", "{\"command\":\"true\"}", false, "(no output)");
    before = hh_vmhwm_kb(h.pid);
    /* Streamed: every chunk goes to the client, memory stays flat. */
    hh_call_start(&h, "bash",
                  "{\"command\":\"head -c 100000000 /dev/zero | tr '\\\\0' a; echo; echo END\"}",
                  60000, true, &r);
    hh_wait(&h, &r);
    assert_false(r.is_error);
    assert_true(strncmp(r.text, "[output truncated]\n", 19) == 0);
    assert_true(strcmp(r.text + r.len - 4, "\nEND") == 0 || strcmp(r.text + r.len - 3, "END") == 0);
    assert_true(r.chunks > 0);
    assert_true(r.chunk_bytes > 0);
    hres_free(&r);
    /* Not streamed. */
    hh_call_start(&h, "bash", "{\"command\":\"head -c 100000000 /dev/zero\"}", 60000, false,
                  &r);
    hh_wait(&h, &r);
    assert_false(r.is_error);
    assert_true(r.len <= 100 * 1024 * 3 + 19); /* NULs become U+FFFD (3 bytes) */
    hres_free(&r);
    after = hh_vmhwm_kb(h.pid);
    printf("# hands VmHWM before=%ld kB after=%ld kB\n", before, after);
    assert_true(before > 0 && after > 0);
    /* 100 MB went through; the hands' peak RSS grew by far less. */
    assert_true(after - before < 40 * 1024);
    hh_stop(&h);
}

/* ---- read / write / edit ----------------------------------------------------- */

static void read_tool(void **state)
{
    struct hh h;
    struct hres r;
    char big[4096];
    (void)state;

    hh_start(&h);
    hh_write_file(&h, "f.txt", "one\ntwo\nthree\nfour\n");
    EXPECT_CALL(&h, "read", "{\"file_path\":\"f.txt\"}", false, "one\ntwo\nthree\nfour\n");
    EXPECT_CALL(&h, "read", "{\"file_path\":\"f.txt\",\"view_range\":[2,3]}", false,
                "two\nthree\n");
    EXPECT_CALL(&h, "read", "{\"file_path\":\"f.txt\",\"view_range\":[3,0]}", false,
                "three\nfour\n");
    EXPECT_CALL(&h, "read", "{\"file_path\":\"f.txt\",\"view_range\":[3,-1]}", false,
                "three\nfour\n");
    EXPECT_CALL(&h, "read", "{\"file_path\":\"f.txt\",\"view_range\":[1]}", true,
                "read: view_range must be an array of exactly 2 integers");
    EXPECT_CALL(&h, "read", "{\"file_path\":\"f.txt\",\"view_range\":[0,2]}", true,
                "read: view_range start must be >= 1");
    EXPECT_CALL(&h, "read", "{\"file_path\":\"f.txt\",\"view_range\":[9,10]}", true,
                "read: f.txt has 4 lines; view_range starts at 9");
    EXPECT_CALL(&h, "read", "{}", true, "read: file_path is required");
    EXPECT_CALL(&h, "read", "{\"file_path\":\"nope.txt\"}", true,
                "read: nope.txt: cannot open: No such file or directory");
    EXPECT_CALL(&h, "read", "{\"file_path\":\".\"}", true, "read: .: not a regular file");
    /* Empty file. */
    hh_write_file(&h, "empty", "");
    EXPECT_CALL(&h, "read", "{\"file_path\":\"empty\"}", false, "(no output)");
    /* Over 256 KiB: refused whole, fine in a range. */
    snprintf(big, sizeof(big), "seq 1 100000 > %s/big.txt", h.work);
    assert_int_equal(system(big), 0);
    hh_call(&h, "read", "{\"file_path\":\"big.txt\"}", &r);
    assert_true(r.is_error);
    assert_non_null(strstr(r.text, "over the 262144-byte limit; use view_range"));
    hres_free(&r);
    EXPECT_CALL(&h, "read", "{\"file_path\":\"big.txt\",\"view_range\":[99999,0]}", false,
                "99999\n100000\n");
    hh_call(&h, "read", "{\"file_path\":\"big.txt\",\"view_range\":[1,0]}", &r);
    assert_true(r.is_error);
    assert_non_null(strstr(r.text, "exceed the 262144-byte limit"));
    hres_free(&r);
    /* A FIFO is refused without blocking. */
    snprintf(big, sizeof(big), "mkfifo %s/fifo", h.work);
    assert_int_equal(system(big), 0);
    EXPECT_CALL(&h, "read", "{\"file_path\":\"fifo\"}", true, "read: fifo: not a regular file");
    hh_stop(&h);
}

static void confinement(void **state)
{
    struct hh h;
    char cmd[4096], in[4096], want[4096];
    (void)state;

    hh_start(&h);
    EXPECT_CALL(&h, "read", "{\"file_path\":\"/etc/passwd\"}", true,
                "read: /etc/passwd is outside the allowed directories");
    EXPECT_CALL(&h, "read", "{\"file_path\":\"../../../etc/passwd\"}", true,
                "read: ../../../etc/passwd is outside the allowed directories");
    /* A symlink pointing out of the workdir. */
    snprintf(cmd, sizeof(cmd), "ln -s /etc %s/etclink && ln -s /nonexistent-wp %s/dangle",
             h.work, h.work);
    assert_int_equal(system(cmd), 0);
    EXPECT_CALL(&h, "read", "{\"file_path\":\"etclink/passwd\"}", true,
                "read: etclink/passwd is outside the allowed directories");
    EXPECT_CALL(&h, "write", "{\"file_path\":\"etclink/wp-test-x\",\"content\":\"x\"}", true,
                "write: etclink/wp-test-x is outside the allowed directories");
    EXPECT_CALL(&h, "write", "{\"file_path\":\"dangle\",\"content\":\"x\"}", true,
                "write: dangle: dangling symlink");
    EXPECT_CALL(&h, "edit",
                "{\"file_path\":\"etclink/hostname\",\"old_string\":\"a\",\"new_string\":\"b\"}",
                true, "edit: etclink/hostname is outside the allowed directories");
    /* An allowed root besides the workdir, by absolute path. */
    snprintf(in, sizeof(in), "{\"file_path\":\"%s/x.txt\",\"content\":\"in extra\"}", h.extra);
    snprintf(want, sizeof(want), "wrote 8 bytes to %s/x.txt", h.extra);
    EXPECT_CALL(&h, "write", in, false, want);
    snprintf(in, sizeof(in), "{\"file_path\":\"%s/x.txt\"}", h.extra);
    EXPECT_CALL(&h, "read", in, false, "in extra");
    hh_stop(&h);
}

static void write_and_edit(void **state)
{
    struct hh h;
    (void)state;

    hh_start(&h);
    EXPECT_CALL(&h, "write", "{\"file_path\":\"a/b/c.txt\",\"content\":\"alpha beta alpha\"}",
                false, "wrote 16 bytes to a/b/c.txt");
    EXPECT_CALL(&h, "read", "{\"file_path\":\"a/b/c.txt\"}", false, "alpha beta alpha");
    EXPECT_CALL(&h, "write", "{\"file_path\":\"a/b/c.txt\"}", true, "write: content is required");
    EXPECT_CALL(&h, "edit",
                "{\"file_path\":\"a/b/c.txt\",\"old_string\":\"beta\",\"new_string\":\"BETA\"}",
                false, "edited a/b/c.txt (1 replacement)");
    EXPECT_CALL(&h, "edit",
                "{\"file_path\":\"a/b/c.txt\",\"old_string\":\"gamma\",\"new_string\":\"x\"}",
                true, "edit: old_string not found in a/b/c.txt");
    EXPECT_CALL(&h, "edit",
                "{\"file_path\":\"a/b/c.txt\",\"old_string\":\"alpha\",\"new_string\":\"x\"}",
                true,
                "edit: old_string found 2 times in a/b/c.txt; it must occur exactly once (add "
                "context to make it unique, or set replace_all)");
    EXPECT_CALL(&h, "edit",
                "{\"file_path\":\"a/b/c.txt\",\"old_string\":\"alpha\",\"new_string\":\"$&\","
                "\"replace_all\":true}",
                false, "edited a/b/c.txt (2 replacements)");
    EXPECT_CALL(&h, "read", "{\"file_path\":\"a/b/c.txt\"}", false, "$& BETA $&");
    EXPECT_CALL(&h, "edit", "{\"file_path\":\"a/b/c.txt\",\"old_string\":\"\",\"new_string\":\"x\"}",
                true, "edit: old_string must not be empty");
    EXPECT_CALL(&h, "edit", "{\"file_path\":\"nope\",\"old_string\":\"a\",\"new_string\":\"x\"}",
                true, "edit: nope: cannot open: No such file or directory");
    hh_stop(&h);
}

/* ---- glob / grep ---------------------------------------------------------------- */

static void set_mtime(struct hh *h, const char *rel, time_t t)
{
    char path[1024];
    struct timeval tv[2] = {{t, 0}, {t, 0}};

    snprintf(path, sizeof(path), "%s/%s", h->work, rel);
    assert_int_equal(utimes(path, tv), 0);
}

static void glob_tool(void **state)
{
    struct hh h;
    struct hres r;
    char cmd[4096];
    (void)state;

    hh_start(&h);
    hh_write_file(&h, "src/a.c", "int a;\n");
    hh_write_file(&h, "src/deep/b.c", "int b;\n");
    hh_write_file(&h, "src/deep/b.h", "int b;\n");
    hh_write_file(&h, "top.c", "int t;\n");
    hh_write_file(&h, ".git/x.c", "skip\n");
    hh_write_file(&h, "node_modules/y.c", "skip\n");
    set_mtime(&h, "src/a.c", 1000);
    set_mtime(&h, "src/deep/b.c", 3000);
    set_mtime(&h, "top.c", 2000);
    EXPECT_CALL(&h, "glob", "{\"pattern\":\"**/*.c\"}", false, "src/deep/b.c\ntop.c\nsrc/a.c");
    EXPECT_CALL(&h, "glob", "{\"pattern\":\"*.c\"}", false, "top.c");
    EXPECT_CALL(&h, "glob", "{\"pattern\":\"**/*.{c,h}\",\"path\":\"src/deep\"}", false,
                "src/deep/b.h\nsrc/deep/b.c"); /* b.h is newest */
    EXPECT_CALL(&h, "glob", "{\"pattern\":\"*.py\"}", false, "no matches");
    EXPECT_CALL(&h, "glob", "{\"pattern\":\"/etc/*\"}", true,
                "glob: pattern must be relative (use path for the directory)");
    EXPECT_CALL(&h, "glob", "{\"pattern\":\"../*\"}", true, "glob: pattern must not contain ..");
    EXPECT_CALL(&h, "glob", "{\"pattern\":\"*\",\"path\":\"/etc\"}", true,
                "glob: /etc is outside the allowed directories");
    EXPECT_CALL(&h, "glob", "{}", true, "glob: pattern is required");
    /* More than 200 matches: capped and marked. */
    snprintf(cmd, sizeof(cmd), "mkdir -p %s/many && cd %s/many && touch $(seq -f f%%g.txt 1 250)",
             h.work, h.work);
    assert_int_equal(system(cmd), 0);
    hh_call(&h, "glob", "{\"pattern\":\"many/*.txt\"}", &r);
    assert_false(r.is_error);
    assert_non_null(strstr(r.text, "[results truncated: showing 200 of 250]"));
    int lines = 0;
    for (char *p = r.text; *p; p++)
        lines += *p == '\n';
    assert_int_equal(lines, 200);
    hres_free(&r);
    /* The walk stops after 50 000 entries and says so. */
    snprintf(cmd, sizeof(cmd), "mkdir -p %s/huge && cd %s/huge && seq -f h%%g 1 50100 | xargs touch",
             h.work, h.work);
    assert_int_equal(system(cmd), 0);
    hh_call(&h, "glob", "{\"pattern\":\"**/*.none\",\"path\":\"huge\"}", &r);
    assert_false(r.is_error);
    assert_string_equal(r.text, "no matches\n[search stopped after 50000 entries]");
    hres_free(&r);
    hh_stop(&h);
}

static void grep_tool(void **state)
{
    struct hh h;
    struct hres r;
    char cmd[4096];
    (void)state;

    hh_start(&h);
    hh_write_file(&h, "a.txt", "hello world\nnothing\nHello again 42\n");
    hh_write_file(&h, "sub/b.txt", "say hello\n");
    hh_write_file(&h, ".git/c.txt", "hello hidden\n");
    EXPECT_CALL(&h, "grep", "{\"pattern\":\"h.llo\",\"path\":\"a.txt\"}", false,
                "a.txt:1:hello world");
    EXPECT_CALL(&h, "grep", "{\"pattern\":\"[0-9]+$\"}", false, "a.txt:3:Hello again 42");
    EXPECT_CALL(&h, "grep", "{\"pattern\":\"again \\\\d\\\\d\"}", false,
                "a.txt:3:Hello again 42");
    EXPECT_CALL(&h, "grep", "{\"pattern\":\"say\",\"path\":\"sub\"}", false,
                "sub/b.txt:1:say hello");
    EXPECT_CALL(&h, "grep", "{\"pattern\":\"zzz\"}", false, "no matches");
    EXPECT_CALL(&h, "grep", "{\"pattern\":\"hidden\"}", false, "no matches");
    hh_call(&h, "grep", "{\"pattern\":\"(unclosed\"}", &r);
    assert_true(r.is_error);
    assert_non_null(strstr(r.text, "grep: invalid regular expression"));
    hres_free(&r);
    EXPECT_CALL(&h, "grep", "{\"pattern\":\"x\",\"path\":\"/etc\"}", true,
                "grep: /etc is outside the allowed directories");
    /* Binary files stop at the NUL; lines over 2000 characters are skipped. */
    snprintf(cmd, sizeof(cmd),
             "cd %s && printf 'findme 1\\n\\0findme 2\\n' > bin.dat && "
             "{ printf 'findme '; head -c 3000 /dev/zero | tr '\\0' x; echo; } > long.txt",
             h.work);
    assert_int_equal(system(cmd), 0);
    EXPECT_CALL(&h, "grep", "{\"pattern\":\"findme\"}", false, "bin.dat:1:findme 1");
    /* Output capped at 100 KiB. */
    snprintf(cmd, sizeof(cmd), "seq -f 'line %%g' 1 50000 > %s/many.txt", h.work);
    assert_int_equal(system(cmd), 0);
    hh_call(&h, "grep", "{\"pattern\":\"line\",\"path\":\"many.txt\"}", &r);
    assert_false(r.is_error);
    assert_true(r.len <= 100 * 1024 + 64);
    assert_non_null(strstr(r.text, "[output truncated at 102400 bytes]"));
    hres_free(&r);
    hh_stop(&h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        HH_TEST(bash_state_persists),
        HH_TEST(bash_status_and_errors),
        HH_TEST(bash_restart),
        HH_TEST(bash_output_truncated),
        HH_TEST(bash_long_command),
        HH_TEST(bash_timeout_kills_everything),
        HH_TEST(bash_100mb_bounded_memory),
        HH_TEST(read_tool),
        HH_TEST(confinement),
        HH_TEST(write_and_edit),
        HH_TEST(glob_tool),
        HH_TEST(grep_tool),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

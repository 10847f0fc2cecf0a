/* test_dashboard.c - what an operator watches: the Prometheus rules and
 * scrape config (promtool), the Grafana dashboard's queries (every metric
 * they name is one a live /metrics exports), and /dashboard, the
 * scheduler's own page, rendered by headless Chromium: a screenshot in the
 * test's output dir and the figures on the page checked against /metrics.
 * A real Redis, a node with hands sandboxes, a scheduler with a metrics
 * token and the brain on, the local model server. */
#include <fcntl.h>
#include <jansson.h>
#include <regex.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lib/model_testlib.h"
#include "lib/sched_testlib.h"
#include "lib/snaplib.h"
#include "lib/testlib.h"
#include "modelserver/msrv_spawn.h"
#include "base/err.h"
#include "base/fs.h"

#define KEY "sk-acme"
#define TOKEN "tok-dash-1234"
#define POOL "dashpool"

static struct th_redis R;
static struct th_sched S;
static struct msrv_proc M;
static char *DIR_;
static pid_t NODE;
static char OUT[1024]; /* the test's output dir (kept): build/tests/output/test_dashboard */

static const char script[] =
    "{\"seed\":1,\"ttft_ms\":30,\"tokens_per_s\":100,\"chunk_tokens\":2,\"conversations\":["
    " {\"turns\":[{\"content\":[{\"type\":\"tool_use\",\"name\":\"bash\",\"input\":{\"command\":\"echo hi\"}}]},"
    "   {\"text\":\"done\"},{\"content\":[{\"type\":\"tool_use\",\"name\":\"bash\",\"input\":{\"command\":\"echo again\"}}]},"
    "   {\"text\":\"done again\"}]}]}";

static json_t *call(const char *method, const char *path, const char *body, int want)
{
    return th_api(S.port, KEY, method, path, body, want);
}

/* GET /metrics with the token (owned text). */
static char *scrape(void)
{
    int fd = th_connect(S.port);
    assert_true(fd >= 0);
    const char *req = "GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " TOKEN
                      "\r\nConnection: close\r\n\r\n";
    assert_int_equal(th_send_all(fd, req, strlen(req)), 0);
    char *buf = calloc(1, 1 << 21);
    int n = th_read_all(fd, buf, (1 << 21) - 1, 10000);
    close(fd);
    assert_true(n > 0 && strstr(buf, " 200 "));
    char *body = strstr(buf, "\r\n\r\n");
    assert_non_null(body);
    memmove(buf, body + 4, strlen(body + 4) + 1);
    return buf;
}

static int group_setup(void **state)
{
    char tmpl[1024], env[1200], url[128], log[1100], st[1100];
    struct wp_err err;
    (void)state;

    snprintf(OUT, sizeof(OUT), "%s/tests/output/test_dashboard", th_build_dir());
    if (wp_mkdir_p(OUT, 0755, &err) < 0)
        return -1;
    if (th_redis_start(&R, 0) < 0)
        return -1;
    DIR_ = th_tmpdir("dash");
    if (th_model_spawn_script(&M, DIR_, script, NULL, url, sizeof(url)) < 0)
        return -1;
    if (th_sched_start(&S, R.port, "--model-url", url, "--metrics-token", TOKEN, NULL) < 0)
        return -1;
    if (th_hands_template(DIR_, POOL, "box", tmpl, sizeof(tmpl)) < 0)
        return -1;
    snprintf(env, sizeof(env), "%s:1:1", tmpl);
    snprintf(log, sizeof(log), "%s/node.log", DIR_);
    snprintf(st, sizeof(st), "%s/state", DIR_);
    if ((NODE = th_node_start("dashnode", R.port, st, log, "--env", env, "--no-api-envs", NULL)) < 0)
        return -1;
    if (!th_wait_hot(R.port, POOL, 1, 120))
        return -1;
    /* Two turns, each a bash call in a sandbox: TTFT, claims, attach,
     * tools and model requests all have samples. */
    json_t *ag = call("POST", "/v1/agents",
                      "{\"name\":\"d\",\"model\":\"claude-test\",\"tools\":[{\"type\":\"agent_toolset_20260401\"}]}", 200);
    json_t *en = call("POST", "/v1/environments",
                      "{\"name\":\"dash-env\",\"config\":{\"type\":\"cloud\"},\"metadata\":{\"warmpool.pool\":\"" POOL "\"}}",
                      200);
    char body[512], path[160];
    snprintf(body, sizeof(body), "{\"agent\":\"%s\",\"environment_id\":\"%s\"}",
             json_string_value(json_object_get(ag, "id")), json_string_value(json_object_get(en, "id")));
    json_t *se = call("POST", "/v1/sessions", body, 200);
    snprintf(path, sizeof(path), "/v1/sessions/%s/events", json_string_value(json_object_get(se, "id")));
    for (int turn = 1; turn <= 2; turn++) {
        json_decref(call("POST", path,
                         "{\"events\":[{\"type\":\"user.message\",\"content\":[{\"type\":\"text\",\"text\":\"go\"}]}]}",
                         200));
        int idle = 0;
        for (int i = 0; i < 300 && idle < turn; i++, th_msleep(100)) {
            char hp[200];
            snprintf(hp, sizeof(hp), "%s?limit=1000", path);
            json_t *h = call("GET", hp, NULL, 200), *d = json_object_get(h, "data");
            idle = 0;
            for (size_t k = 0; k < json_array_size(d); k++)
                idle += !strcmp(json_string_value(json_object_get(json_array_get(d, k), "type")),
                                "session.status_idle");
            json_decref(h);
        }
        if (idle < turn)
            return -1;
    }
    json_decref(ag);
    json_decref(en);
    json_decref(se);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    th_sched_stop(&S);
    if (NODE > 0) {
        kill(NODE, SIGTERM);
        waitpid(NODE, NULL, 0);
    }
    msrv_stop(&M);
    th_redis_stop(&R);
    th_rmtree(DIR_);
    free(DIR_);
    return 0;
}

/* Metric names a scrape exports: every "# TYPE" line, and a histogram's
 * _bucket, _sum and _count series. A JSON object used as a set. */
static json_t *exported_names(const char *text)
{
    json_t *set = json_object();
    for (const char *p = text; (p = strstr(p, "# TYPE ")); p++) {
        char name[128], kind[32];
        if (sscanf(p, "# TYPE %127s %31s", name, kind) != 2)
            continue;
        json_object_set_new(set, name, json_true());
        if (!strcmp(kind, "histogram"))
            for (int i = 0; i < 3; i++) {
                static const char *const sfx[] = { "_bucket", "_sum", "_count" };
                char full[160];
                snprintf(full, sizeof(full), "%s%s", name, sfx[i]);
                json_object_set_new(set, full, json_true());
            }
    }
    return set;
}

/* Every warmpool_* identifier in text must be exported; returns how many
 * were checked. */
static int check_names(const char *what, const char *text, json_t *names)
{
    regex_t re;
    regmatch_t m;
    int n = 0;
    assert_int_equal(regcomp(&re, "warmpool_[a-z0-9_]+", REG_EXTENDED), 0);
    for (const char *p = text; regexec(&re, p, 1, &m, 0) == 0; p += m.rm_eo) {
        char name[128];
        snprintf(name, sizeof(name), "%.*s", (int)(m.rm_eo - m.rm_so), p + m.rm_so);
        if (!json_object_get(names, name))
            fail_msg("%s uses %s, which /metrics does not export", what, name);
        n++;
    }
    regfree(&re);
    return n;
}

static void queries_name_exported_metrics(void **state)
{
    (void)state;
    char *text = scrape();
    json_t *names = exported_names(text);
    json_error_t jerr;
    json_t *dash = json_load_file("deploy/grafana/warmpool.json", JSON_REJECT_DUPLICATES, &jerr);
    if (!dash)
        fail_msg("deploy/grafana/warmpool.json: %s", jerr.text);
    size_t i, k;
    json_t *panel, *target;
    int exprs = 0, used = 0;
    json_array_foreach(json_object_get(dash, "panels"), i, panel)
        json_array_foreach(json_object_get(panel, "targets"), k, target) {
            const char *expr = json_string_value(json_object_get(target, "expr"));
            assert_non_null(expr);
            exprs++;
            used += check_names(json_string_value(json_object_get(panel, "title")), expr, names);
        }
    print_message("# grafana: %d queries naming %d metrics, all exported\n", exprs, used);
    assert_true(exprs >= 18);
    char *rules = NULL;
    struct wp_err err;
    assert_int_equal(wp_read_file("deploy/prometheus/warmpool-rules.yml", 1 << 20, &rules, NULL, &err), 0);
    used = check_names("warmpool-rules.yml", rules, names);
    print_message("# alert rules: %d metric names, all exported\n", used);
    assert_true(used >= 8);
    free(rules);
    json_decref(dash);
    json_decref(names);
    free(text);
}

static void promtool_accepts_rules_and_config(void **state)
{
    char out[4096];
    (void)state;
    if (th_sh(out, sizeof(out), "command -v promtool") != 0) {
        skip(); /* deploy/install-deps.sh installs Debian's prometheus */
        return;
    }
    if (th_sh(out, sizeof(out), "promtool check rules deploy/prometheus/warmpool-rules.yml 2>&1") != 0)
        fail_msg("promtool check rules: %s", out);
    /* check config reads rule_files relative to the config and needs the
     * token file: a copy of both in the temp dir. */
    if (th_sh(out, sizeof(out),
              "cp deploy/prometheus/*.yml %s/ && echo x > %s/token && "
              "sed -i 's|/etc/warmpool/metrics-token|%s/token|' %s/prometheus.yml && "
              "promtool check config %s/prometheus.yml 2>&1", DIR_, DIR_, DIR_, DIR_, DIR_) != 0)
        fail_msg("promtool check config: %s", out);
}

/* "at most" quantile bound of a histogram's series with label lab=val
 * (the page's algorithm), as the page prints it. */
static void quantile_text(const char *text, const char *name, const char *lab, const char *val,
                          double q, char *out, size_t cap)
{
    char les[32][32];
    double cum[32] = { 0 };
    int n = 0;
    char prefix[256];
    /* Every series of name whose labels start with lab="val", (a second
     * label, if any, summed over, as `sum by (lab)` does) */
    snprintf(prefix, sizeof(prefix), "%s_bucket{%s=\"%s\",", name, lab, val);
    for (const char *p = text; (p = strstr(p, prefix)); p++) {
        const char *le = strstr(p, "le=\"");
        assert_non_null(le);
        le += 4;
        size_t l = strcspn(le, "\"");
        int i = 0;
        while (i < n && (strlen(les[i]) != l || strncmp(les[i], le, l)))
            i++;
        if (i == n) {
            assert_true(n < 32);
            snprintf(les[n++], sizeof(les[0]), "%.*s", (int)l, le);
        }
        cum[i] += atof(strchr(le, '}') + 1);
    }
    double total = cum[n - 1];
    snprintf(out, cap, "-");
    for (int i = 0; i < n && total > 0; i++)
        if (cum[i] >= q * total) {
            double v = atof(les[i]);
            if (!strcmp(les[i], "+Inf"))
                snprintf(out, cap, "+Inf");
            else if (v < 1)
                snprintf(out, cap, "%.3g ms", v * 1000);
            else
                snprintf(out, cap, "%g s", v);
            break;
        }
}

/* The text of the cell data-k="key" in the page's DOM. */
static void cell(const char *dom, const char *key, char *out, size_t cap)
{
    char needle[200];
    snprintf(needle, sizeof(needle), "data-k=\"%s\">", key);
    const char *p = strstr(dom, needle);
    if (!p)
        fail_msg("no cell %s on the page", key);
    p += strlen(needle);
    snprintf(out, cap, "%.*s", (int)strcspn(p, "<"), p);
}

static void dashboard_page_shows_metrics(void **state)
{
    char out[4096], url[256], shot[1200], dompath[1200], got[64], want[64];
    (void)state;

    /* The page holds no figures; /metrics still wants the token. */
    struct th_resp r;
    assert_int_equal(th_http(S.port, "GET", "/dashboard", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.head, "text/html"));
    assert_null(strstr(r.body, "http://")); /* nothing from elsewhere */
    assert_null(strstr(r.body, "https://"));
    th_resp_free(&r);
    assert_int_equal(th_http(S.port, "GET", "/metrics", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 401);
    th_resp_free(&r);

    if (th_sh(out, sizeof(out), "command -v chromium") != 0) {
        skip(); /* Debian's chromium: apt-get install chromium */
        return;
    }
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/dashboard#token=" TOKEN, S.port);
    snprintf(shot, sizeof(shot), "%s/dashboard.png", OUT);
    snprintf(dompath, sizeof(dompath), "%s/dashboard.html", OUT);
    unlink(shot);
    const char *flags = "--headless=new --no-sandbox --disable-gpu --no-first-run "
                        "--disable-dev-shm-usage --hide-scrollbars --virtual-time-budget=6000";
    int rc = th_sh(out, sizeof(out), "HOME=%s timeout 120 chromium %s --window-size=1400,1100 "
                                     "--screenshot=%s '%s' >/dev/null 2>&1",
                   DIR_, flags, shot, url);
    assert_int_equal(rc, 0);
    struct stat sb;
    assert_int_equal(stat(shot, &sb), 0);
    assert_true(sb.st_size > 10000);
    rc = th_sh(out, sizeof(out), "HOME=%s timeout 120 chromium %s --dump-dom '%s' > %s 2>/dev/null",
               DIR_, flags, url, dompath);
    assert_int_equal(rc, 0);
    char *dom = NULL;
    struct wp_err err;
    assert_int_equal(wp_read_file(dompath, 1 << 22, &dom, NULL, &err), 0);
    if (!strstr(dom, "data-ready=\"1\""))
        fail_msg("the page never read /metrics: %.2000s", dom);
    /* Nothing changes between the page's read and ours (no load now). */
    char *text = scrape();
    quantile_text(text, "warmpool_ttft_seconds", "env", POOL, 0.5, want, sizeof(want));
    cell(dom, POOL "/all:p50", got, sizeof(got));
    assert_string_equal(got, want);
    quantile_text(text, "warmpool_ttft_seconds", "env", POOL, 0.95, want, sizeof(want));
    cell(dom, POOL "/all:p95", got, sizeof(got));
    assert_string_equal(got, want);
    print_message("# page: TTFT p95 of %s <= %s, as /metrics says\n", POOL, got);
    cell(dom, POOL "/all:turns", got, sizeof(got));
    assert_string_equal(got, "2");
    /* Per tier: each of the session's tiers at its first tokens (hot, or
     * pending when the model answered before the claim) has its row, the
     * figures those of /metrics, the turns adding up to 2. */
    int turns = 0;
    static const char *const tiers[] = { "hot", "warm", "cold", "pending", "none", "failed" };
    for (int i = 0; i < 6; i++) {
        char sel[64], key[96], cnt[128];
        snprintf(sel, sizeof(sel), "%s\",tier=\"%s", POOL, tiers[i]);
        snprintf(cnt, sizeof(cnt), "warmpool_ttft_seconds_count{env=\"%s\"} ", sel);
        const char *c = strstr(text, cnt);
        if (!c)
            continue;
        snprintf(key, sizeof(key), POOL "/%s:turns", tiers[i]);
        cell(dom, key, got, sizeof(got));
        assert_int_equal(atoi(got), atoi(c + strlen(cnt)));
        turns += atoi(got);
        quantile_text(text, "warmpool_ttft_seconds", "env", sel, 0.95, want, sizeof(want));
        snprintf(key, sizeof(key), POOL "/%s:p95", tiers[i]);
        cell(dom, key, got, sizeof(got));
        assert_string_equal(got, want);
        print_message("# page: TTFT of %s, tier %s: p95 <= %s\n", POOL, tiers[i], got);
    }
    assert_int_equal(turns, 2);
    quantile_text(text, "warmpool_claim_seconds", "tier", "hot", 0.95, want, sizeof(want));
    cell(dom, "hot:claim p95", got, sizeof(got));
    assert_string_equal(got, want);
    quantile_text(text, "warmpool_sandbox_attached_seconds", "tier", "hot", 0.5, want, sizeof(want));
    cell(dom, "hot:attach p50", got, sizeof(got));
    assert_string_equal(got, want);
    /* Pool gauges: hot now and the policy's bounds. */
    char line[128];
    snprintf(line, sizeof(line), "warmpool_pool_hot{env=\"%s\"} ", POOL);
    const char *hp = strstr(text, line);
    assert_non_null(hp);
    snprintf(want, sizeof(want), "%g", atof(hp + strlen(line)));
    cell(dom, POOL ":hot now", got, sizeof(got));
    assert_string_equal(got, want);
    cell(dom, POOL ":max_hot", got, sizeof(got));
    assert_string_equal(got, "1");
    cell(dom, "dashnode:up", got, sizeof(got));
    assert_string_equal(got, "yes");
    print_message("# screenshot: %s\n", shot);
    free(text);
    free(dom);
}

/* A real Prometheus (Debian's) with the shipped rules scrapes the
 * scheduler (token and all) and answers TTFT p95 by environment; within
 * the bucket /metrics puts it in. */
static void prometheus_scrapes_and_answers_ttft(void **state)
{
    char out[8192], cfg[1200], data[1200], log[1200], want[64];
    (void)state;
    if (th_sh(out, sizeof(out), "command -v prometheus") != 0) {
        skip();
        return;
    }
    int port = th_free_port();
    snprintf(cfg, sizeof(cfg), "%s/prom.yml", DIR_);
    snprintf(data, sizeof(data), "%s/promdata", DIR_);
    snprintf(log, sizeof(log), "%s/prometheus.log", OUT);
    char yml[1024];
    int n = snprintf(yml, sizeof(yml),
                     "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
                     "rule_files: [%s/warmpool-rules.yml]\n"
                     "scrape_configs:\n"
                     "  - job_name: warmpool\n"
                     "    authorization: {type: Bearer, credentials: " TOKEN "}\n"
                     "    static_configs: [{targets: ['127.0.0.1:%d']}]\n",
                     DIR_, S.port);
    struct wp_err err;
    assert_int_equal(wp_write_file(cfg, yml, (size_t)n, 0644, &err), 0);
    assert_int_equal(th_sh(out, sizeof(out), "cp deploy/prometheus/warmpool-rules.yml %s/", DIR_), 0);
    pid_t pid = fork();
    if (pid == 0) {
        char a1[1300], a2[1300], a3[64];
        snprintf(a1, sizeof(a1), "--config.file=%s", cfg);
        snprintf(a2, sizeof(a2), "--storage.tsdb.path=%s", data);
        snprintf(a3, sizeof(a3), "--web.listen-address=127.0.0.1:%d", port);
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(fd, 1);
        dup2(fd, 2);
        execlp("prometheus", "prometheus", a1, a2, a3, "--log.level=warn", (char *)NULL);
        _exit(127);
    }
    assert_true(pid > 0);
    /* TTFT p95 since the scheduler started, by environment. */
    const char *q = "histogram_quantile(0.95,sum+by(env,le)(warmpool_ttft_seconds_bucket))";
    double v = -1;
    for (int i = 0; i < 60 && v < 0; i++, th_msleep(500)) {
        if (th_sh(out, sizeof(out), "curl -s 'http://127.0.0.1:%d/api/v1/query?query=%s'", port, q) != 0)
            continue;
        json_t *o = json_loads(out, 0, NULL);
        json_t *res = json_object_get(json_object_get(o, "data"), "result");
        for (size_t k = 0; k < json_array_size(res); k++) {
            json_t *r1 = json_array_get(res, k);
            const char *env = json_string_value(json_object_get(json_object_get(r1, "metric"), "env"));
            if (env && !strcmp(env, POOL))
                v = atof(json_string_value(json_array_get(json_object_get(r1, "value"), 1)) ?: "-1");
        }
        json_decref(o);
    }
    /* ...and by environment and tier, as the dashboard's first panel asks. */
    const char *qt = "histogram_quantile(0.95,sum+by(env,tier,le)(warmpool_ttft_seconds_bucket))";
    char tier[32] = "";
    for (int i = 0; i < 20 && !tier[0]; i++, th_msleep(500)) {
        if (th_sh(out, sizeof(out), "curl -s 'http://127.0.0.1:%d/api/v1/query?query=%s'", port, qt) != 0)
            continue;
        json_t *o = json_loads(out, 0, NULL);
        json_t *res = json_object_get(json_object_get(o, "data"), "result");
        for (size_t k = 0; k < json_array_size(res); k++) {
            json_t *lab = json_object_get(json_array_get(res, k), "metric");
            const char *env = json_string_value(json_object_get(lab, "env"));
            const char *t = json_string_value(json_object_get(lab, "tier"));
            if (env && t && !strcmp(env, POOL))
                snprintf(tier, sizeof(tier), "%s", t);
        }
        json_decref(o);
    }
    /* The alert rules loaded and evaluate (none fires on a healthy pool). */
    th_sh(out, sizeof(out), "curl -s 'http://127.0.0.1:%d/api/v1/rules'", port);
    bool rules_ok = strstr(out, "WarmpoolTTFTHigh") && strstr(out, "WarmpoolNodeLost");
    kill(pid, SIGTERM);
    waitpid(pid, NULL, 0);
    char *text = scrape();
    quantile_text(text, "warmpool_ttft_seconds", "env", POOL, 0.95, want, sizeof(want));
    free(text);
    print_message("# prometheus: TTFT p95 of %s = %.4f s (/metrics: <= %s)\n", POOL, v, want);
    assert_true(rules_ok);
    assert_true(v > 0);
    print_message("# prometheus: TTFT of %s by tier: a series for tier %s\n", POOL, tier);
    assert_true(!strcmp(tier, "hot") || !strcmp(tier, "pending"));
    double bound = atof(want) / (strstr(want, "ms") ? 1000.0 : 1.0);
    assert_true(v <= bound + 1e-9);
}

int main(void)
{
    if (geteuid() != 0) {
        printf("1..0 # SKIP needs root (sandboxes)\n");
        return 0;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(queries_name_exported_metrics),
        cmocka_unit_test(promtool_accepts_rules_and_config),
        cmocka_unit_test(dashboard_page_shows_metrics),
        cmocka_unit_test(prometheus_scrapes_and_answers_ttft),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}

/* dashboard.c - GET /dashboard: one self-contained HTML page (no CDN, no
 * internet) showing /metrics live, for a single-machine install with no
 * Grafana. The page holds no figures: it fetches /metrics with the metrics
 * token (from its URL fragment, which browsers never send, or typed in), so
 * everything it shows stays behind that token. Its text is
 * scheduler/dashboard.html, turned into a C string at build time. */
#define WP_LOG_COMPONENT "metrics"
#include <string.h>

#include "scheduler/sched_int.h"

static const char page[] =
#include "dashboard_html.h"
    ;

void sched__h_dashboard(struct sched_req *req)
{
    sched__respond_body(req, 200, "text/html; charset=utf-8", page, sizeof(page) - 1);
}
